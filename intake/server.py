"""The SMTP adapter: aiosmtpd's `SMTP`, subclassed where its hooks are not enough.

`IntakeServer` holds what all connections share (configuration, the group committer,
connection counts, the free-space check) and listens. `IntakeSMTP` is one connection:
access and limits at connect, the early-talker check, an idle timeout that counts any
bytes, AUTH bookkeeping (CRAM-MD5, three strikes), closing after the current transaction
when the server stops, and three things done cheaper than aiosmtpd does them: DATA read in
chunks (`intake.data`), the replies to a pipelined group sent in one write, and everyday
paths parsed without aiosmtpd's general address parser. `IntakeHandler` implements
aiosmtpd's handle_* hooks by asking `intake.policy`, `intake.filters` and `intake.auth`
and storing through `intake.commit`. Message files are written only through `spool` (via
the committer); this module reads no files except through filters it runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, syntax
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from common.xtext import XtextError, xtext_decode
from intake.commit import GroupCommitter, abandoned_commit
from intake.data import DataCollector, DataProblem, read_data
from intake.filters import FilterAction, VerifierOutcome, client_display, run_filters
from intake.filters import VerifierVerdict as Verdict
from intake.limits import AuthFailures, ConnectionLimits, in_networks
from intake.pace import Pace
from intake.policy import (
    MAX_AUTH_FAILURES,
    SpaceCheck,
    address_problem,
    client_ip,
    client_port,
    helo_problem,
    is_loopback,
    path_problem,
    storage_error_reply,
)
from intake.received import protocol_name, received_line
from intake.settings import IntakeConfig
from spool import Envelope, Spool
from spool.envelope import EnvelopeError
from spool.testhooks import checkpoint

COMMAND_SIZE_LIMIT = 512
# The most a connection's stream buffers before it stops reading the socket (twice this).
# aiosmtpd uses its `line_length_limit` (1,001) here, which pauses and resumes a socket
# several times per 4 KiB message; relay checks DATA line lengths itself (intake.data).
STREAM_LIMIT = 32 * 1024
_BODY_TYPES = {"7BIT": "7bit", "8BITMIME": "8bit", "BINARYMIME": "binarymime"}
# A reverse-path or forward-path of the everyday kind: <dot-atom@domain>, then parameters.
# Such paths skip aiosmtpd's general parser (email._header_value_parser, which also builds a
# typing.Protocol class per call); `_getaddr` gives the same answer for them, and every
# other path still goes through aiosmtpd's parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?: +([^ \t(][^\t(]*))?"
)
AUTH_BLOCKED_REPLY = ("454 4.7.0 Temporary authentication failure: too many failed attempts "
                      "from your address, try again later")
_mail_log = logging.getLogger("mail.log")  # aiosmtpd's logger: the dialogue with --verbose


class IntakeServer:
    """The listening sockets and the state every connection shares."""

    def __init__(self, config: IntakeConfig, spool: Spool, log: Any) -> None:
        self.config = config
        self.spool = spool
        self.log = log
        self.committer = GroupCommitter(spool, sync=config.sync)
        self.limits = ConnectionLimits(config.max_connections, config.reserved_connections,
                                       config.max_connections_per_client,
                                       config.max_connections_per_network)
        self.auth_failures = AuthFailures(config.auth_failure_limit, config.auth_failure_window)
        self.space = SpaceCheck(spool, config.min_free_space)
        self.sessions: set[IntakeSMTP] = set()
        self.stopping = False
        self._servers: list[asyncio.Server] = []

    def new_connection(self) -> IntakeSMTP:
        """The protocol factory for asyncio."""
        return IntakeSMTP(self)

    async def start(self) -> None:
        """Start the committer and listen on every interface; OSError if one cannot bind."""
        await self.committer.start()
        loop = asyncio.get_running_loop()
        for interface in self.config.interfaces:
            try:
                server = await loop.create_server(
                    self.new_connection, host=interface, port=self.config.port
                )
            except OSError as error:
                await self.close_listeners()
                raise OSError(
                    error.errno, f"cannot listen on {interface} port {self.config.port}: "
                    f"{error.strerror or error}"
                ) from None
            self._servers.append(server)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the server listens (host, port), after start()."""
        found = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                found.append((str(name[0]), int(name[1])))
        return found

    async def close_listeners(self) -> None:
        """Stop accepting new connections."""
        # No Server.wait_closed(): on Python 3.12+ it waits for every connection; stop()
        # drains the sessions with its own bound instead.
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def stop(self) -> None:
        """Stop accepting; let open transactions finish (bounded); then drain the committer."""
        self.stopping = True
        await self.close_listeners()
        for session in list(self.sessions):
            if not session.in_transaction:
                session.close_with("421 4.3.2 Service shutting down")
        deadline = time.monotonic() + self.config.stop_timeout
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            self.log.warning("session_aborted", client=session.client_ip,
                             reason="still in a transaction at the stop timeout")
            session.close_with("421 4.3.2 Service shutting down")
        await asyncio.sleep(0)
        await self.committer.stop()


class IntakeEnvelope(SMTPEnvelope):
    """aiosmtpd's envelope of one transaction, with the message as relay read it."""

    def __init__(self) -> None:
        super().__init__()
        self.relay_content: list[bytes] = []  # the DATA, unstuffed, in the pieces it came in


class IntakeSMTP(SMTP):
    """One SMTP connection."""

    line_length_limit = STREAM_LIMIT  # aiosmtpd's name for its StreamReader limit

    def __init__(self, server: IntakeServer) -> None:
        config = server.config
        super().__init__(
            IntakeHandler(server),
            data_size_limit=config.size or None,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.domain,  # without it every connection does a blocking lookup
            ident="ESMTP relay",
            tls_context=config.tls_context,
            require_starttls=config.tls_required,
            timeout=config.idle_timeout,
            auth_required=config.authenticator is not None,
            auth_require_tls=not config.auth_insecure,
            authenticator=self._check_credentials,
            loop=asyncio.get_running_loop(),
        )
        # aiosmtpd keeps this dict on the class and grows it on every EHLO: keep our own.
        self.command_size_limits: collections.defaultdict[str, int] = collections.defaultdict(
            lambda: COMMAND_SIZE_LIMIT
        )
        self.server = server
        self.client_ip = ""
        self.client_port = 0
        self.refusal: str | None = None
        self.counted = False
        self.exempt = False  # from the per-address and per-network limits (limits.py)
        self.trusted_keyword: str | None = None
        self.auth_mechanism = ""
        self.auth_name = ""
        self.auth_failures = 0
        self._auth_checked = False  # the last AUTH had its credentials checked
        self._auth_blocked = False  # the last AUTH was refused unchecked (address blocked)
        self._busy = False
        self.close_after_reply = False
        self.pace = Pace(config.idle_timeout, config.min_data_rate, self.loop.time())
        self._session_timer: asyncio.TimerHandle | None = None
        self._mail_arg = ""
        self._may_hold_reply = False  # a MAIL, RCPT or RSET reply may wait for the next
        self._held_replies: list[bytes] = []

    def _create_envelope(self) -> IntakeEnvelope:
        return IntakeEnvelope()

    # -- connection life -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self.transport is None:  # not STARTTLS
            peer = transport.get_extra_info("peername")
            self.client_ip, self.client_port = client_ip(peer), client_port(peer)
            self.admit()
            self.server.sessions.add(self)
            if self.server.config.session_timeout > 0:
                self._session_timer = self.loop.call_later(self.server.config.session_timeout,
                                                           self._session_expired)
        super().connection_made(transport)

    def admit(self) -> None:
        """Classify the client (trusted, exempt) and count it against the limits."""
        config = self.server.config
        if self.counted:
            self.server.limits.release(self.client_ip, exempt=self.exempt)
        if config.authenticator is not None:
            self.trusted_keyword = config.authenticator.trusted_keyword(self.client_ip)
        self.exempt = (self.trusted_keyword is not None
                       or in_networks(self.client_ip, config.exempt_networks))
        self.refusal = self.server.limits.admit(self.client_ip, exempt=self.exempt)
        self.counted = self.refusal is None

    def connection_lost(self, error: Exception | None) -> None:
        if self.counted:
            self.server.limits.release(self.client_ip, exempt=self.exempt)
            self.counted = False
        if self._session_timer is not None:
            self._session_timer.cancel()
        self.server.sessions.discard(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self.pace.received(len(data), self.loop.time())
        super().data_received(data)

    @property
    def busy(self) -> bool:
        """True while relay itself works for this client (storing, a filter, the verifier)."""
        return self._busy

    @busy.setter
    def busy(self, value: bool) -> None:
        self._busy = value
        self.pace.hold(self.loop.time(), value)

    def _timeout_cb(self) -> None:
        # aiosmtpd restarts its timer on commands only; relay's counts any bytes, with a
        # minimum rate (intake.pace), and never runs while the server itself works.
        now = self.loop.time()
        remaining = self.pace.remaining(now)
        if self.transport is not None and remaining > 0:
            delay = min(max(remaining, 0.05), self._timeout_duration)
            self._timeout_handle = self.loop.call_later(delay, self._timeout_cb)
            return
        if self.pace.silent_for(now) >= self.pace.allowance:
            self.server.log.info("client_dropped", client=self.client_ip, reason="idle timeout")
            self.close_with("421 4.4.2 Idle timeout, closing connection")
        else:
            self.server.log.info("client_dropped", client=self.client_ip,
                                 reason="slower than --min-data-rate")
            self.close_with("421 4.4.2 Too slow: data rate under the minimum, closing connection")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _session_expired(self) -> None:
        if self.transport is None:
            return
        if self.busy:  # never while relay stores or filters: the reply to that comes first
            self._session_timer = self.loop.call_later(0.1, self._session_expired)
            return
        self.server.log.info("client_dropped", client=self.client_ip,
                             reason="session time limit")
        self.close_with("421 4.4.2 Session time limit reached, closing connection")

    @property
    def in_transaction(self) -> bool:
        """True between MAIL FROM and the reply to the end of DATA (or RSET)."""
        return self.busy or bool(self.envelope is not None and self.envelope.mail_from)

    def close_with(self, reply: str) -> None:
        """Send *reply* (after any held replies, if the connection is still open); close now."""
        # Not isinstance(..., asyncio.WriteTransport): uvloop's transports do not derive from
        # asyncio's classes, and this reply would silently not be sent.
        transport = cast("asyncio.Transport | None", self.transport)
        if transport is not None and not transport.is_closing():
            self._held_replies.append(reply.encode("ascii") + b"\r\n")
            transport.write(b"".join(self._held_replies))
            transport.close()
        self._held_replies.clear()

    def _close_now(self) -> None:
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        if self.transport is not None:
            self.transport.close()

    async def push(self, status: AnyStr) -> None:
        """Send a reply; with PIPELINING, hold MAIL/RCPT/RSET replies while commands wait.

        RFC 2920 lets a server answer a group of pipelined commands together: when the
        client's next command is already buffered, the reply waits for the next one, so a
        pipelined MAIL, RCPT, DATA costs one send instead of three. Only replies after
        which the server goes on to read that buffered command are held.
        """
        response = status.encode("utf-8") if isinstance(status, str) else status
        _mail_log.debug("%r << %r", self.client_ip, response)
        closing = self.close_after_reply or (self.server.stopping and not self.in_transaction)
        if self._may_hold_reply and not closing and self._command_waiting():
            self._held_replies.append(response + b"\r\n")
            return
        if self._held_replies:
            self._held_replies.append(response + b"\r\n")
            self._writer.write(b"".join(self._held_replies))
            self._held_replies.clear()
        else:
            self._writer.write(response + b"\r\n")
        self.pace.new_request(self.loop.time())
        await self._writer.drain()
        if closing:
            self.close_after_reply = False
            self._close_now()

    def _command_waiting(self) -> bool:
        # A whole line already in the stream's buffer: reading it will not wait for the
        # client, so a held reply is never what the client waits for.
        return b"\n" in getattr(self._reader, "_buffer", b"")

    async def _handle_client(self) -> None:
        refusal = self.refusal
        if refusal is None and not (self.server.config.remote_clients
                                    or is_loopback(self.client_ip)):
            refusal = "554 5.7.1 Access denied: this server accepts local clients only"
        if refusal is None and await self._talks_first():
            refusal = "554 5.5.1 Protocol error: client sent data before the greeting"
        if refusal is not None:
            self.server.log.warning("client_refused", client=self.client_ip, reason=refusal[4:])
            self.close_with(refusal)
            return
        await super()._handle_client()

    async def _talks_first(self) -> bool:
        """An early talker sends commands before the greeting (spam bots, smuggling tests)."""
        delay = self.server.config.greeting_delay
        if delay > 0:
            try:
                data = await asyncio.wait_for(self._reader.read(1), delay)
            except TimeoutError:
                return False
            return bool(data)
        await asyncio.sleep(0)
        return bool(getattr(self._reader, "_buffer", b""))

    # -- commands aiosmtpd's hooks cannot express -------------------------------------

    async def check_auth_needed(self, caller_method: str) -> bool:
        if self.trusted_keyword is not None:  # a `server none` line trusts this client
            return False
        return bool(await super().check_auth_needed(caller_method))

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._mail_arg = arg or ""
        self._may_hold_reply = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._may_hold_reply = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_PATH.fullmatch(arg) if arg else None
        if match is None:
            if arg == "<>":
                return "<>", ""
            address: str | None
            rest: str | None
            try:
                address, rest = super()._getaddr(arg)
            except (IndexError, AttributeError):  # the parser's own bugs ("<", "+@[", ...):
                return None, None  # a malformed address (553), not a local error (451)
            return address, rest
        address = match[1]
        if self.local_part_limit and address.rindex("@") > self.local_part_limit:
            return None, None
        return address, match[2] or ""

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        result: dict[str, str | bool] | None = super()._getparams(params)
        if result is not None and self._mail_arg:
            result.pop("AUTH", None)  # RFC 4954 MAIL FROM AUTH=, read by handle_MAIL
        return result

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._mail_arg = ""
        self._may_hold_reply = True
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._may_hold_reply = False

    async def smtp_RSET(self, arg: str) -> None:
        self._may_hold_reply = True
        try:
            await super().smtp_RSET(arg)
        finally:
            self._may_hold_reply = False

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, with the data read in chunks (intake.data) rather than by line."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        collector = DataCollector(self.data_size_limit)
        try:
            await read_data(self._reader, collector)
        except asyncio.CancelledError:  # the connection went away during DATA
            self._writer.close()
            raise
        if collector.problem is not DataProblem.NONE:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)"
                            if collector.problem is DataProblem.LINE_TOO_LONG
                            else "552 Error: Too much mail data")
            return
        # The pieces as they came: a 50 MB message is never joined into one more copy.
        assert isinstance(self.envelope, IntakeEnvelope)
        self.envelope.relay_content = collector.content_pieces()
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def smtp_AUTH(self, arg: str) -> None:
        if self.server.config.authenticator is None:
            await self.push("502 5.5.1 AUTH not available")
            return
        assert self.session is not None
        already = bool(self.session.authenticated)
        self._auth_checked = self._auth_blocked = False
        if not already and self.server.auth_failures.blocked(self.client_ip, self.loop.time()):
            self._auth_blocked = True
            await self.push(AUTH_BLOCKED_REPLY)
        else:
            await super().smtp_AUTH(arg)
        if already:
            return
        if self.session.authenticated:
            self.auth_mechanism = (arg or "").split()[0].upper()
            login = self.session.login_data
            self.auth_name = login.decode("utf-8", "replace") if isinstance(login, bytes) else ""
            self.server.log.info("client_authenticated", client=self.client_ip,
                                 mechanism=self.auth_mechanism, user=self.auth_name)
            return
        self.auth_failures += 1  # every refused AUTH is a strike on this connection
        if not self._auth_blocked:
            self.server.log.warning("auth_failed", client=self.client_ip,
                                    failures=self.auth_failures)
        if self._auth_checked and self.server.auth_failures.failed(self.client_ip,
                                                                   self.loop.time()):
            config = self.server.config
            self.server.log.warning(
                "auth_blocked", client=self.client_ip, failures=config.auth_failure_limit,
                window=config.auth_failure_window,
                reason="too many failed AUTH attempts from this address")
            self.close_after_reply = True
            await self.push("421 4.7.0 Too many failed authentication attempts from your "
                            "address, closing connection")
        elif self.auth_failures >= MAX_AUTH_FAILURES:
            self.close_after_reply = True
            await self.push("421 4.7.0 Too many failed authentication attempts")

    async def auth_CRAM__MD5(self, _: Any, args: list[str]) -> AuthResult:
        """CRAM-MD5 (RFC 2195): a challenge, answered with 'user HMAC-MD5(password)'."""
        authenticator = self.server.config.authenticator
        if authenticator is None or len(args) > 1:
            await self.push("501 5.5.4 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = f"<{secrets.token_hex(8)}.{int(time.time())}@{self.hostname}>".encode()
        response = await self.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        if self.server.auth_failures.blocked(self.client_ip, self.loop.time()):
            self._auth_blocked = True
            return AuthResult(success=False, handled=False, message=AUTH_BLOCKED_REPLY)
        self._auth_checked = True
        user = authenticator.check_cram_md5(challenge, response)
        if user is None:  # handled=False: aiosmtpd answers 535 (the default sends nothing)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode("utf-8"), b""))


    def _check_credentials(self, *args: Any) -> AuthResult:
        """aiosmtpd's authenticator for PLAIN and LOGIN: never checks for a blocked address."""
        authenticator = self.server.config.authenticator
        if authenticator is None:
            return AuthResult(success=False, handled=False)
        if self.server.auth_failures.blocked(self.client_ip, self.loop.time()):
            self._auth_blocked = True  # another connection reached the limit meanwhile
            return AuthResult(success=False, handled=False, message=AUTH_BLOCKED_REPLY)
        self._auth_checked = True
        result: AuthResult = authenticator(*args)
        return result


class IntakeHandler:
    """aiosmtpd's hooks: policy checks, then the durable store; returns reply strings."""

    def __init__(self, server: IntakeServer) -> None:
        self.server = server
        self.config = server.config
        self.log = server.log

    async def handle_HELO(self, smtp: IntakeSMTP, session: Any, envelope: Any,
                          hostname: str) -> str:
        problem = helo_problem(hostname)
        if problem:
            return problem
        session.host_name = hostname
        return f"250 {self.config.domain}"

    async def handle_EHLO(self, smtp: IntakeSMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        problem = helo_problem(hostname)
        if problem:
            return [problem]
        session.host_name = hostname
        lines = [line for line in responses[:-1]
                 if self.config.authenticator is not None or not line.startswith("250-AUTH")]
        return [*lines, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]

    async def handle_MAIL(self, smtp: IntakeSMTP, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        problem = (address_problem(address, smtputf8=bool(envelope.smtp_utf8))
                   or path_problem(address, null_allowed=True))
        if problem:
            return problem
        declared = 0
        auth_param = ""
        for option in smtp._mail_arg.split()[1:]:
            key, _, value = option.partition("=")
            if key.upper() == "SIZE" and value.isdigit():
                declared = int(value)
            elif key.upper() == "AUTH":
                auth_param = value
        refusal = self.server.space.refusal(declared)
        if refusal:
            self.log.warning("message_refused", client=smtp.client_ip, reason="spool disk full")
            return refusal
        try:
            auth_in = auth_param if auth_param in ("", "<>") else xtext_decode(auth_param)
        except XtextError:
            auth_in = "\x00"
        if address_problem(auth_in, smtputf8=False):
            return "501 5.5.4 Malformed AUTH= parameter"
        envelope.relay_auth_in = auth_in
        body = "7BIT"
        for option in mail_options:
            if option.startswith("BODY="):
                body = option[5:]
        envelope.relay_body = _BODY_TYPES.get(body, "7bit")
        envelope.relay_to_local = []
        envelope.relay_to_remote = []
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, smtp: IntakeSMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        problem = (address_problem(address, smtputf8=bool(envelope.smtp_utf8))
                   or path_problem(address, null_allowed=False))
        if problem:
            self.log.info("recipient_refused", client=smtp.client_ip, reason=problem[10:])
            return problem
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        stored = address
        local = False
        if self.config.address_verifier:
            outcome = await self._verify(smtp, envelope, address)
            if outcome.verdict is Verdict.DROP:
                self.log.warning("client_dropped", client=smtp.client_ip, to=address,
                                 reason="address verifier asked to drop the connection")
                smtp.close_after_reply = True
                return outcome.reply
            if outcome.verdict is Verdict.REJECT:
                self.log.info("recipient_refused", client=smtp.client_ip, to=address,
                              reason=outcome.reply)
                return outcome.reply
            stored, local = outcome.address, outcome.verdict is Verdict.LOCAL
            problem = None if local else path_problem(stored, null_allowed=False)
            if problem:
                self.log.warning("recipient_refused", client=smtp.client_ip, to=stored,
                                 reason="the address verifier returned an address that "
                                 "cannot be forwarded")
                return "553 5.1.3 Address from the address verifier cannot be forwarded"
        (envelope.relay_to_local if local else envelope.relay_to_remote).append(stored)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def _verify(self, smtp: IntakeSMTP, envelope: Any, address: str) -> VerifierOutcome:
        assert self.config.address_verifier is not None
        smtp.busy = True
        try:
            return await self.config.address_verifier.verify(
                address,
                sender=_sender(envelope.mail_from),
                client=client_display(smtp.client_ip, smtp.client_port),
                mechanism=smtp.auth_mechanism,
                auth_name=smtp.auth_name or smtp.trusted_keyword or "",
            )
        finally:
            smtp.busy = False

    async def handle_DATA(self, smtp: IntakeSMTP, session: Any, envelope: Any) -> str:
        checkpoint("data_received")
        tls = smtp._tls_protocol is not None
        protocol = protocol_name(extended=bool(session.extended_smtp), tls=tls,
                                 authenticated=bool(smtp.auth_name))
        trace = received_line(helo=session.host_name or "", client_ip=smtp.client_ip,
                              domain=self.config.domain, protocol=protocol)
        content: list[bytes] = envelope.relay_content
        model = Envelope(
            sender=_sender(envelope.mail_from),
            to_local=tuple(envelope.relay_to_local),
            to_remote=tuple(envelope.relay_to_remote),
            body_type=envelope.relay_body,
            authentication=smtp.auth_name,
            client=smtp.client_ip,
            mail_from_auth_in=envelope.relay_auth_in,
            utf8_mailbox_names=bool(envelope.smtp_utf8),
        )
        smtp.busy = True
        try:
            reply = await self._store(smtp, (trace, *content), model)
        finally:
            smtp.busy = False
        checkpoint("before_reply")
        return reply

    async def _store(self, smtp: IntakeSMTP, content: tuple[bytes, ...],
                     model: Envelope) -> str:
        committer = self.server.committer
        trigger = False
        try:
            if not self.config.filters:
                pending = await committer.store(content, model)
            else:
                pending = await committer.prepare(content, model)
                try:
                    verdict = await run_filters(
                        self.config.filters, str(pending.content_path), str(pending.new_path),
                        self.config.filter_timeout, self.config.filter_runner)
                except BaseException:
                    pending.discard()
                    raise
                trigger = verdict.trigger_scan
                if verdict.action is FilterAction.REJECT:
                    pending.discard()
                    self._trigger(trigger)  # exit 104: refused, and a rescan asked for
                    self.log.info("message_refused", client=smtp.client_ip,
                                  reason=verdict.reason, reply=verdict.reply)
                    return verdict.reply
                if verdict.action is FilterAction.ABANDON:
                    # As E-MailRelay: the message is committed if the filter left its
                    # files (a token effort), and the client is told 250 either way.
                    kept = await abandoned_commit(committer, pending)
                    self._trigger(trigger)
                    self.log.info("message_abandoned", msg_id=pending.message_id,
                                  client=smtp.client_ip, committed=kept,
                                  reason="filter exit 100/102")
                    return "250 2.0.0 OK"
                pending = await committer.commit(pending)
        except OSError as error:
            self.log.error("store_failed", client=smtp.client_ip, reason=str(error))
            return storage_error_reply(error)
        except (EnvelopeError, ValueError) as error:
            self.log.error("store_failed", client=smtp.client_ip, reason=str(error))
            return "451 4.3.0 Local error in processing: message not stored"
        self._trigger(trigger)
        self.log.info("message_stored", msg_id=pending.message_id, client=smtp.client_ip,
                      **{"from": model.sender, "to": ",".join(model.recipients)},
                      size=sum(map(len, content[1:])))
        return f"250 2.0.0 OK queued as {pending.message_id}"

    def _trigger(self, wanted: bool) -> None:
        if wanted:
            try:
                self.server.spool.trigger_scan()
            except OSError as error:
                self.log.warning("trigger_failed", reason=str(error))

    async def handle_exception(self, error: Exception) -> str:
        # Never aiosmtpd's "500 Error: (OSError) ...": a local fault is temporary.
        self.log.error("session_error", reason=f"{type(error).__name__}: {error}")
        return "451 4.3.0 Local error in processing"


def _sender(mail_from: str) -> str:
    return "" if mail_from in ("<>", None) else mail_from

