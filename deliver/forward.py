"""One reusable SMTP connection to the smarthost, driven with aiosmtplib.

`SmarthostConnection.transact(route, envelope, content)` sends one message and reports an
`outcome.Attempt`; it never raises for anything the smarthost does. The connection is kept
for the next message to the same route and dropped after any error. Reads the client
secrets file (through `common.secrets.SecretsFile`) and the CA file; never touches the
spool, never logs a password.

The transaction is aiosmtplib's `sendmail()` spelled out (EHLO, MAIL, RCPT..., DATA), with
a timeout per step (RFC 5321 asks for 10 minutes after the final dot, far longer than a
reply to RCPT should take) and each recipient its own reply. The content goes out as it
is stored, slice by slice, with only DATA's own rules applied on the way
(`deliver.dotstuff`: dot-stuffing, bare CR or LF as CRLF, a CRLF before the final dot),
through `common.compat_aiosmtplib.send_data`: never a whole-message copy, never a long
stall of the event loop. An address aiosmtplib refuses to put on a command line (`<>` as
a recipient, a space, a non-ASCII name without SMTPUTF8) or would send as another address
(its quoting parses comments, lists and routes) is refused here for good, with code 553,
before anything about it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import aiosmtplib
import structlog
from aiosmtplib.response import SMTPResponse

from common import compat_aiosmtplib as compat
from common import events
from common.compat_asyncio import set_read_size
from common.logs import Logger
from common.secrets import SecretsError, SecretsFile
from deliver.addresses import address_problem, ehlo_name, unsendable
from deliver.clientauth import AuthConfig, NoMechanism, authenticate
from deliver.dialogue import DialogueLoggingSMTP
from deliver.dotstuff import DataEncoder, data_size
from deliver.extensions import MailPlan, Strict, mail_plan
from deliver.outcome import Attempt, Reply, Stage
from spool import Envelope

log: Logger = structlog.get_logger("relay-deliver")

# A reused connection idle for longer than this is probed with RSET before the next
# message, so that a smarthost's idle disconnect costs a reconnect, not a deferral.
IDLE_PROBE_SECONDS = 5.0
# Bytes asked for per read of the smarthost's replies. asyncio's plain socket transport
# asks for 256 KiB, which the C library maps and unmaps for every read (three system
# calls and a page fault per reply, four replies per message); replies are a few lines.
REPLY_READ_SIZE = 16 * 1024
# The content is read (deliver.message) or cut (when given as one `bytes`) in slices of
# this size; pieces of DATA smaller than COALESCE are joined into one write (a small
# message is one write).
SLICE_SIZE = 256 * 1024
COALESCE = 64 * 1024
# EHLO refused with these (RFC 5321: syntax error, not implemented): try HELO, as
# E-MailRelay does; any other reply to EHLO ends the attempt.
EHLO_UNKNOWN = (500, 501, 502)
MAIL_OK = 250
RCPT_OK = (250, 251)  # as SMTP.rcpt()


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
    client_interface: str | None = None  # --client-interface: the local address to bind
    all_recipients: bool = False  # --forward-to-all: one refused recipient stops the message
    prompt_timeout: float = 20.0  # --prompt-timeout: then EHLO without a greeting; 0: never
    strict: Strict = field(default_factory=Strict)  # --eightbit-strict and the other two
    auth_config: AuthConfig = field(default_factory=AuthConfig)  # --client-auth-config
    pipelining: bool = False  # --pipelining: MAIL and RCPTs in one write, if offered
    linger: bool = True  # --no-linger: close with a reset (SO_LINGER 0), E-MailRelay's -linger

    def tls_context(self) -> ssl.SSLContext:
        """The client TLS context: verified against *tls_verify*, or (as E-MailRelay) not."""
        if self.tls_verify:
            cafile = None if self.tls_verify == "system" else self.tls_verify
            return ssl.create_default_context(cafile=cafile)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context


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

    async def transact(self, route: Route, envelope: Envelope,
                       content: bytes | Iterable[bytes], size: int | None = None, *,
                       stored_size: int | None = None) -> Attempt:
        """Send *content* to *envelope*'s To-Remote recipients; report what happened.

        *content* is the stored content: one `bytes`, or its slices in order (read as the
        transaction needs them) together with its *size* as DATA sends it and its
        *stored_size* (the file's, what BDAT sends).
        """
        stage = Stage.CONNECT
        accepted: list[str] = []
        refused: list[tuple[str, Reply]] = []
        if isinstance(content, bytes):
            size, stored_size = data_size((content,)), len(content)
            content = _slices(content)
        elif stored_size is None:
            stored_size = size  # one size given: the file's
        encoding = "utf-8" if envelope.utf8_mailbox_names else "ascii"
        # Addresses aiosmtplib cannot send as they are fail for good, before connecting.
        problem = address_problem("sender", envelope.sender, encoding)
        if problem is not None:
            return Attempt(Stage.MAIL, problem)
        sendable: list[str] = []
        for recipient in envelope.to_remote:
            problem = address_problem("recipient", recipient, encoding)
            if problem is None:
                sendable.append(recipient)
            else:
                refused.append((recipient, problem))
        if not sendable:
            return Attempt(Stage.RCPT, refused[0][1], (), tuple(refused))
        try:
            smtp = await self._ready(route)
            plan = mail_plan(envelope.body_type, envelope.utf8_mailbox_names,
                             smtp.esmtp_extensions, size or 0, self.settings.strict,
                             stored_size=stored_size)
            if isinstance(plan, str):  # needs an extension the smarthost lacks: for good
                return Attempt(Stage.UNSENDABLE, Reply(None, plan))
            stage = Stage.MAIL
            self._clean = False
            timeout = self.settings.response_timeout
            pipelined = self.settings.pipelining and smtp.supports_extension("pipelining")
            if pipelined:
                unsent = await self._pipelined(smtp, envelope.sender, sendable,
                                               parameters=plan.parameters, encoding=encoding,
                                               accepted=accepted, refused=refused)
                if unsent is not None:
                    return unsent
            else:
                try:
                    await smtp.mail(envelope.sender, options=plan.parameters,
                                    encoding=encoding, timeout=timeout)
                except ValueError as error:  # refused by aiosmtplib itself: nothing was sent
                    return Attempt(Stage.MAIL, unsendable("sender", envelope.sender,
                                                           str(error)))
            stage = Stage.RCPT
            for recipient in [] if pipelined else sendable:  # pipelined: already done
                try:
                    await smtp.rcpt(recipient, encoding=encoding, timeout=timeout)
                except aiosmtplib.SMTPRecipientRefused as refusal:
                    refused.append((recipient, Reply(refusal.code, refusal.message)))
                except ValueError as error:  # as above: this RCPT was never sent
                    refused.append((recipient, unsendable("recipient", recipient,
                                                           str(error))))
                else:
                    accepted.append(recipient)
            if refused and self.settings.all_recipients:
                await self._reset()
                return Attempt(Stage.RCPT, *_all_refused(envelope.to_remote, refused))
            if not accepted:
                await self._reset()
                return Attempt(Stage.RCPT, refused[0][1], (), tuple(refused))
            stage = Stage.DATA
            if self.settings.log_dialogue:
                log.debug("smtp_command", server=route.host,
                          command=f"{'BDAT' if plan.bdat else 'DATA'} ({plan.size} bytes)")
            encoder = DataEncoder()
            response = await self._send_content(smtp, plan, content, plan.size, encoder)
            if self.settings.log_dialogue:
                log.debug("smtp_reply", code=response.code, text=response.message,
                          server=route.host)
            self._clean = True
            self._last_used = time.monotonic()
            return Attempt(
                Stage.DONE, Reply(response.code, response.message), tuple(accepted),
                tuple(refused), encoder.normalised, tuple(plan.without),
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

    async def _pipelined(self, smtp: aiosmtplib.SMTP, sender: str, recipients: list[str], *,
                         parameters: list[str], encoding: str, accepted: list[str],
                         refused: list[tuple[str, Reply]]) -> Attempt | None:
        """--pipelining: MAIL FROM and the RCPT TOs in one write, then their replies; fills
        *accepted* and *refused*. Raises SMTPSenderRefused as `SMTP.mail()` does."""
        try:
            commands = [compat.mail_command(sender, parameters, encoding)]
        except ValueError as error:  # nothing was sent
            return Attempt(Stage.MAIL, unsendable("sender", sender, str(error)))
        sent: list[str] = []
        for recipient in recipients:
            try:
                commands.append(compat.rcpt_command(recipient, encoding))
                sent.append(recipient)
            except ValueError as error:
                refused.append((recipient, unsendable("recipient", recipient, str(error))))
        if self.settings.log_dialogue:
            for command in commands:
                log.debug("smtp_command", command=command.decode("utf-8", "replace").strip(),
                          server=smtp.hostname, pipelined=True)
        replies = await compat.send_pipelined(smtp, commands,
                                              timeout=self.settings.response_timeout)
        if self.settings.log_dialogue:
            for reply in replies:
                log.debug("smtp_reply", code=reply.code, text=reply.message,
                          server=smtp.hostname)
        if replies[0].code != MAIL_OK:
            raise aiosmtplib.SMTPSenderRefused(replies[0].code, replies[0].message, sender)
        for recipient, reply in zip(sent, replies[1:], strict=True):
            if reply.code in RCPT_OK:
                accepted.append(recipient)
            else:
                refused.append((recipient, Reply(reply.code, reply.message)))
        return None

    async def _send_content(self, smtp: aiosmtplib.SMTP, plan: MailPlan,
                            content: Iterable[bytes], size: int,
                            encoder: DataEncoder) -> SMTPResponse:
        """DATA (dot-stuffed), or for BODY=BINARYMIME one BDAT with the bytes as stored."""
        timeout, final = self.settings.response_timeout, self.settings.data_timeout
        if plan.bdat:
            return await compat.send_bdat(smtp, content, size, timeout=timeout, final_timeout=final)
        return await compat.send_data(smtp, _data_pieces(content, encoder), timeout=timeout,
                                      final_timeout=final)

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
        client_class = DialogueLoggingSMTP if settings.log_dialogue else compat.GreetingSMTP
        source = (settings.client_interface, 0) if settings.client_interface else None
        smtp = client_class(
            hostname=route.host,
            port=route.port,
            local_hostname=ehlo_name(settings.local_hostname, route.host, route.port,
                                     settings.client_interface),
            source_address=source,
            timeout=settings.response_timeout,
            use_tls=use_tls,
            start_tls=start_tls,
            tls_context=self._tls_context if start_tls is not False or use_tls else None,
            # --prompt-timeout 0: no going on without a greeting (wait --response-timeout)
            greeting_timeout=settings.prompt_timeout or settings.response_timeout,
            go_on=settings.prompt_timeout > 0,
        )
        events.emit("network", "out", "start")  # E-MailRelay's events for `notify`
        events.emit("client", "connecting", events.address_text(route.host, route.port))
        try:
            await smtp.connect(timeout=settings.connect_timeout)
            if smtp.is_ehlo_or_helo_needed:
                # The extensions (8BITMIME, SMTPUTF8, SIZE) must be known before MAIL.
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError as error:
                    if error.code not in EHLO_UNKNOWN:
                        raise
                    await smtp.helo()
            if settings.tls_required and not smtp.get_transport_info("sslcontext"):
                raise aiosmtplib.SMTPException("TLS is required but the smarthost offers none")
        except BaseException:
            smtp.close()
            events.emit("network", "out", "stop")
            raise
        self.connections_opened += 1
        peer = smtp.get_transport_info("peername")
        events.emit("client", "connected", events.address_text(str(peer[0]), peer[1])
                    if isinstance(peer, tuple) else events.address_text(route.host, route.port))
        set_read_size(smtp.transport, REPLY_READ_SIZE)  # replies are a few lines
        if not settings.linger:
            smtp.get_transport_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
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
            await authenticate(smtp, account, self.settings.auth_config)
        except NoMechanism as error:
            raise _AuthProblem(str(error)) from None
        except aiosmtplib.SMTPResponseException as error:  # SMTPAuthenticationError too
            raise _AuthProblem(error.message, error.code) from None  # Reply adds the code

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
            events.emit("network", "out", "stop")
        self._smtp, self._route, self._clean = None, None, False

    async def close(self) -> None:
        """QUIT politely (briefly), then close."""
        smtp, self._smtp, self._route = self._smtp, None, None
        if smtp is None:
            return
        if smtp.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(smtp.quit(), timeout=2.0)
            smtp.close()
        events.emit("network", "out", "stop")


class _AuthProblem(aiosmtplib.SMTPException):
    """Authentication to the smarthost failed (reported at the AUTH stage)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _slices(content: bytes) -> Iterator[bytes]:
    """*content* in SLICE_SIZE slices (each a copy of its slice only)."""
    if len(content) <= SLICE_SIZE:
        yield content
        return
    for start in range(0, len(content), SLICE_SIZE):
        yield content[start:start + SLICE_SIZE]


def _data_pieces(content: Iterable[bytes], encoder: DataEncoder) -> Iterator[bytes]:
    """The content's DATA form (*encoder*), small pieces joined up to COALESCE bytes."""
    held: list[bytes] = []
    held_size = 0

    def parts() -> Iterator[bytes]:
        for piece in content:
            yield from encoder.encode(piece)
        yield from encoder.finish()

    for part in parts():
        held.append(part)
        held_size += len(part)
        if held_size >= COALESCE:
            yield held[0] if len(held) == 1 else b"".join(held)
            held, held_size = [], 0
    if held:
        yield held[0] if len(held) == 1 else b"".join(held)


def _all_refused(recipients: tuple[str, ...] | list[str], refused: list[tuple[str, Reply]]
                 ) -> tuple[Reply, tuple[()], tuple[tuple[str, Reply], ...]]:
    """--forward-to-all: the message is not sent; every recipient shares one refusal, the
    first permanent one if there is one (the message fails, as in E-MailRelay), else the
    first temporary one (relay retries it)."""
    decisive = next((reply for _address, reply in refused if reply.permanent), refused[0][1])
    return decisive, (), tuple((address, decisive) for address in recipients)


def _describe(error: BaseException) -> str:
    text = " ".join((str(error) or type(error).__name__).split())
    if isinstance(error, TimeoutError) and not isinstance(error, aiosmtplib.SMTPTimeoutError):
        text = f"timed out: {text}"  # aiosmtplib's own say so already
    return text
