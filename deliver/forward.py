"""One reusable SMTP connection to the smarthost, driven with aiosmtplib.

`SmarthostConnection.transact(route, envelope, content)` sends one message (the stored
bytes, unchanged) and reports an `outcome.Attempt`; it never raises for anything the
smarthost does. The connection is kept for the next message to the same route and dropped
after any error. Reads the client secrets file (through `common.secrets.SecretsFile`) and
the CA file; never touches the spool, never logs a password.

The transaction is aiosmtplib's `sendmail()` spelled out (EHLO, MAIL, RCPT..., DATA with
the bytes as they are): the same commands and bytes, but each step gets its own timeout
(RFC 5321 asks for 10 minutes after the final dot, far longer than a reply to RCPT should
take) and each recipient its own reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiosmtplib
import structlog
from aiosmtplib.response import SMTPResponse

from common.secrets import SecretsError, SecretsFile
from deliver.clientauth import NoMechanism, authenticate
from deliver.outcome import Attempt, Reply, Stage
from spool import Envelope

log = structlog.get_logger("relay-deliver")

# A reused connection idle for longer than this is probed with RSET before the next
# message, so that a smarthost's idle disconnect costs a reconnect, not a deferral.
IDLE_PROBE_SECONDS = 5.0
# Bytes asked for per read of the smarthost's replies. asyncio's plain socket transport
# asks for 256 KiB, which the C library maps and unmaps for every read (three system
# calls and a page fault per reply, four replies per message); replies are a few lines.
REPLY_READ_SIZE = 16 * 1024


@dataclass(frozen=True)
class Route:
    """Where one message goes: host, port, and the client account selector for AUTH."""

    host: str
    port: int
    account_selector: str = ""


@dataclass(frozen=True)
class ForwardSettings:
    """How to talk to the smarthost (from the command line)."""

    local_hostname: str
    connect_timeout: float = 40.0
    response_timeout: float = 60.0
    data_timeout: float = 600.0
    starttls: bool = False
    implicit_tls: bool = False
    tls_required: bool = False
    tls_verify: str | None = None  # a CA file, "system", or None for no verification
    client_auth: SecretsFile | None = None
    log_dialogue: bool = False  # --verbose: every command and reply, AUTH exchanges hidden

    def tls_context(self) -> ssl.SSLContext:
        """The client TLS context: verified against *tls_verify*, or (as E-MailRelay) not."""
        if self.tls_verify:
            cafile = None if self.tls_verify == "system" else self.tls_verify
            return ssl.create_default_context(cafile=cafile)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context


class DialogueLoggingSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, logging each command and reply (aiosmtplib itself logs none).

    The arguments of AUTH and the lines that answer its 334 challenges are never shown.
    The message content is not a command and is not logged.
    """

    _in_auth = False

    async def execute_command(self, *args: bytes, **kwargs: Any) -> SMTPResponse:
        if args and args[0].upper() == b"AUTH":
            self._in_auth = True
            shown = b" ".join(args[:2]).decode("ascii", "replace") + (" ***" if args[2:] else "")
        elif self._in_auth:
            shown = "***"
        else:
            shown = b" ".join(args).decode("utf-8", "replace")
        log.debug("smtp_command", command=shown, server=self.hostname)
        response: SMTPResponse = await super().execute_command(*args, **kwargs)
        if response.code != 334:
            self._in_auth = False
        log.debug("smtp_reply", code=response.code,
                  text="***" if self._in_auth else response.message, server=self.hostname)
        return response


class SmarthostConnection:
    """One connection, reused for message after message to the same route."""

    def __init__(self, settings: ForwardSettings, tls_context: ssl.SSLContext | None) -> None:
        self.settings = settings
        self._tls_context = tls_context
        self._smtp: aiosmtplib.SMTP | None = None
        self._route: Route | None = None
        self._clean = False  # the last transaction ended with a 250 after the dot
        self._last_used = 0.0
        self.connections_opened = 0

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def transact(self, route: Route, envelope: Envelope, content: bytes) -> Attempt:
        """Send *content* to *envelope*'s To-Remote recipients; report what happened."""
        stage = Stage.CONNECT
        accepted: list[str] = []
        refused: list[tuple[str, Reply]] = []
        try:
            smtp = await self._ready(route)
            options = self._mail_options(smtp, envelope, len(content))
            if isinstance(options, Attempt):
                return options
            encoding = "utf-8" if envelope.utf8_mailbox_names else "ascii"
            stage = Stage.MAIL
            self._clean = False
            timeout = self.settings.response_timeout
            await smtp.mail(envelope.sender, options=options, encoding=encoding, timeout=timeout)
            stage = Stage.RCPT
            for recipient in envelope.to_remote:
                try:
                    await smtp.rcpt(recipient, encoding=encoding, timeout=timeout)
                except aiosmtplib.SMTPRecipientRefused as refusal:
                    refused.append((recipient, Reply(refusal.code, refusal.message)))
                else:
                    accepted.append(recipient)
            if not accepted:
                await self._reset()
                return Attempt(Stage.RCPT, refused[0][1], (), tuple(refused))
            stage = Stage.DATA
            if not content.endswith(b"\r\n"):
                content += b"\r\n"  # the final dot must start a line of its own
            response = await smtp.data(content, timeout=self.settings.data_timeout)
            self._clean = True
            self._last_used = time.monotonic()
            return Attempt(
                Stage.DONE, Reply(response.code, response.message), tuple(accepted),
                tuple(refused),
            )
        except _AuthProblem as error:
            self._drop()
            return Attempt(Stage.AUTH, Reply(error.code, str(error)))
        except aiosmtplib.SMTPResponseException as error:
            self._drop()
            return Attempt(stage, Reply(error.code, error.message), tuple(accepted),
                           tuple(refused))
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as error:
            self._drop()
            return Attempt(stage, Reply(None, _describe(error)), tuple(accepted), tuple(refused))
        except BaseException:
            self._drop()  # cancelled (shutdown): the connection's state is unknown
            raise

    def _mail_options(self, smtp: aiosmtplib.SMTP, envelope: Envelope,
                      size: int) -> list[str] | Attempt:
        options: list[str] = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={size}")
        if envelope.body_type == "8bit" and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if envelope.utf8_mailbox_names:
            if not smtp.supports_extension("smtputf8"):
                # The addresses cannot be expressed to this smarthost: a permanent failure,
                # reported with 553 (mailbox name not allowed) like a refusing server would.
                return Attempt(Stage.MAIL, Reply(553, "smarthost does not support SMTPUTF8"))
            options.append("SMTPUTF8")
        return options

    async def _ready(self, route: Route) -> aiosmtplib.SMTP:
        """A connected, greeted (and authenticated) client for *route*."""
        if self._smtp is not None and self._route == route and self._smtp.is_connected:
            if not self._clean or time.monotonic() - self._last_used > IDLE_PROBE_SECONDS:
                try:
                    await self._smtp.rset(timeout=self.settings.response_timeout)
                    self._clean = True
                    return self._smtp
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    self._drop()  # stale: reconnect below
            else:
                return self._smtp
        await self.close()
        return await self._connect(route)

    async def _connect(self, route: Route) -> aiosmtplib.SMTP:
        settings = self.settings
        use_tls = settings.implicit_tls
        start_tls: bool | None
        if use_tls:
            start_tls = False
        elif settings.starttls or settings.tls_required:
            start_tls = True if settings.tls_required else None
        else:
            start_tls = False
        client_class = DialogueLoggingSMTP if settings.log_dialogue else aiosmtplib.SMTP
        smtp = client_class(
            hostname=route.host,
            port=route.port,
            local_hostname=settings.local_hostname,
            timeout=settings.response_timeout,
            use_tls=use_tls,
            start_tls=start_tls,
            tls_context=self._tls_context if start_tls is not False or use_tls else None,
        )
        try:
            await smtp.connect(timeout=settings.connect_timeout)
            if smtp.is_ehlo_or_helo_needed:
                # The extensions (8BITMIME, SMTPUTF8, SIZE) must be known before MAIL.
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
            if settings.tls_required and not smtp.get_transport_info("sslcontext"):
                raise aiosmtplib.SMTPException("TLS is required but the smarthost offers none")
        except BaseException:
            smtp.close()
            raise
        self.connections_opened += 1
        _smaller_reads(smtp)
        self._smtp, self._route, self._clean = smtp, route, True
        self._last_used = time.monotonic()
        if settings.client_auth is not None:
            await self._login(smtp, route)
        return smtp

    async def _login(self, smtp: aiosmtplib.SMTP, route: Route) -> None:
        assert self.settings.client_auth is not None
        try:
            secrets = self.settings.client_auth.get()
        except SecretsError as error:
            raise _AuthProblem(str(error)) from None
        account = secrets.client_account(route.account_selector)  # never another account
        if account is None:
            raise _AuthProblem(f"no client account for selector {route.account_selector!r}")
        try:
            await authenticate(smtp, account)
        except aiosmtplib.SMTPAuthenticationError as error:
            raise _AuthProblem(error.message, error.code) from None  # Reply adds the code
        except aiosmtplib.SMTPException as error:
            if isinstance(error, aiosmtplib.SMTPResponseException):
                raise _AuthProblem(error.message, error.code) from None
            if isinstance(error, NoMechanism) or "not supported" in str(error).lower():
                raise _AuthProblem(f"the smarthost offers no usable AUTH: {error}") from None
            raise

    async def _reset(self) -> None:
        """RSET after a transaction that did not end with the dot (keeps the connection)."""
        if self._smtp is None:
            return
        try:
            await self._smtp.rset(timeout=self.settings.response_timeout)
            self._clean = True
            self._last_used = time.monotonic()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._drop()

    def _drop(self) -> None:
        """Forget the connection after an error: the next message gets a fresh one."""
        if self._smtp is not None:
            self._smtp.close()
        self._smtp, self._route, self._clean = None, None, False

    async def close(self) -> None:
        """QUIT politely (briefly), then close."""
        smtp, self._smtp, self._route = self._smtp, None, None
        if smtp is not None and smtp.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(smtp.quit(), timeout=2.0)
            smtp.close()


class _AuthProblem(aiosmtplib.SMTPException):
    """Authentication to the smarthost failed (reported at the AUTH stage)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _smaller_reads(smtp: aiosmtplib.SMTP) -> None:
    """Read replies in REPLY_READ_SIZE pieces (a plain socket transport only: TLS reads
    into a buffer of its own). Only the size of each read changes, nothing else."""
    transport: Any = smtp.transport
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = REPLY_READ_SIZE


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, TimeoutError) and "time" not in text.lower():
        text = f"timed out: {text}"
    return " ".join(text.split())
