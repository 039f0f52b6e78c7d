"""One SMTP connection to relay-intake: its protocol, its clocks and its state.

`Session` is aiosmtpd's SMTP protocol (through `common.compat_aiosmtpd.SMTPBase`) where
aiosmtpd's hooks are not enough: what happens before the greeting (the PROXY header, access,
limits, the early-talker check: intake.admission), the idle clock with a minimum data rate
(intake.pace) and the session time limit, closing after the current transaction when the
server stops, DATA read in chunks (intake.data), the replies to a pipelined group sent in
one write, everyday paths parsed without the general parser, and AUTH (intake.sasl).
What relay decides about HELO, MAIL, RCPT and the message is asked of
`intake.handler.Handler`.

The session's state is explicit and moves only along `MOVES`:

| state | means | next |
|---|---|---|
| CONNECTED | accepted, before the greeting | COMMANDS (greeted), CLOSED (refused) |
| COMMANDS | between transactions | TRANSACTION (MAIL accepted), CLOSED |
| TRANSACTION | MAIL FROM accepted, RCPTs follow | DATA (354), COMMANDS (RSET, EHLO), CLOSED |
| DATA | reading the message, then storing it | COMMANDS (the reply after DATA), CLOSED |
| CLOSED | the connection is gone | |

Writes nothing but replies on its socket; files are written through the handler only.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from common import events
from common.compat_aiosmtpd import MISSING, Envelope, syntax
from intake import admission
from intake.data import DataCollector, DataProblem, read_data
from intake.limits import in_networks
from intake.pace import Pace
from intake.policy import client_ip, client_port
from intake.sasl import AuthSession
from intake.transaction import MailParameters, Transaction, parse_mail_parameters, simple_path

if TYPE_CHECKING:
    from intake.listener import IntakeServer

COMMAND_SIZE_LIMIT = 512
# The most a connection's stream buffers before it stops reading the socket (twice this).
# aiosmtpd uses its `line_length_limit` (1,001) here, which pauses and resumes a socket
# several times per 4 KiB message; relay checks DATA line lengths itself (intake.data).
STREAM_LIMIT = 32 * 1024
_HOLDABLE = frozenset({"MAIL", "RCPT", "RSET"})  # replies that may wait for the next one
_NO_MAIL_PARAMETERS = MailParameters()  # frozen: one for every session before its MAIL
_mail_log = logging.getLogger("mail.log")  # aiosmtpd's logger: the dialogue with --verbose


# Commands whose refusals relay_intake_messages_refused_total counts under their own name.
_METERED_COMMANDS = frozenset({"HELO", "EHLO", "MAIL", "RCPT", "DATA", "AUTH", "STARTTLS",
                               "RSET", "VRFY", "NOOP", "QUIT"})


class State(enum.Enum):
    """Where a session is (the module docstring has the table)."""

    # Enum's own __hash__ is a Python call (hash of the name); every move looks two up.
    __hash__ = object.__hash__

    CONNECTED = "connected"
    COMMANDS = "commands"
    TRANSACTION = "transaction"
    DATA = "data"
    CLOSED = "closed"


MOVES: dict[State, frozenset[State]] = {
    State.CONNECTED: frozenset({State.COMMANDS, State.CLOSED}),
    State.COMMANDS: frozenset({State.COMMANDS, State.TRANSACTION, State.CLOSED}),
    State.TRANSACTION: frozenset({State.COMMANDS, State.DATA, State.CLOSED}),
    State.DATA: frozenset({State.COMMANDS, State.CLOSED}),
    State.CLOSED: frozenset({State.CLOSED}),
}


class Session(AuthSession):
    """One SMTP connection."""

    idle_timer_rechecks = True  # on_idle_timer re-arms from the idle clock (intake.pace)

    def __init__(self, server: IntakeServer) -> None:
        config = server.config
        super().__init__(server.handler, authenticator=self.check_credentials,
                         loop=asyncio.get_running_loop(), **server.session_options)
        self.server = server
        self.init_auth()
        self.state = State.CONNECTED
        self.transaction: Transaction | None = None
        self.mail_parameters = _NO_MAIL_PARAMETERS  # of the MAIL FROM being answered
        self.client_ip = ""
        self.client_port = 0
        self.refusal: str | None = None
        self.counted = False
        self.exempt = False  # from the per-address and per-network limits (limits.py)
        self.trusted_keyword: str | None = None
        self.proxied = False  # from a --proxy-address: the client comes in a PROXY header
        self._busy = False
        self.close_after_reply = False
        self.pace = Pace(config.idle_timeout, config.min_data_rate, self.loop.time())
        # --session-timeout from the connect, checked by the idle timer (one timer, not two)
        self._session_deadline = float("inf")
        self._command = ""  # the command being answered
        self._held_replies: list[bytes] = []
        self._metered = False  # counted in relay_intake_sessions_active
        self._announced = False  # "network: in: start" sent (common.events)

    def move(self, state: State) -> None:
        """Go to *state*: only along MOVES (once CLOSED, a session stays so)."""
        if self.state is State.CLOSED:
            return
        assert state in MOVES[self.state], f"session cannot go from {self.state} to {state}"
        self.state = state

    def new_envelope(self) -> Envelope:
        # At connect, RSET, HELO/EHLO and after DATA: the transaction, if any, is over.
        self.transaction = None
        if self.state in (State.TRANSACTION, State.DATA):
            self.move(State.COMMANDS)
        return super().new_envelope()

    def begin(self, transaction: Transaction) -> None:
        """MAIL FROM was accepted."""
        self.transaction = transaction
        self.move(State.TRANSACTION)

    # -- connection life -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.is_new_connection(transport):
            peer = transport.get_extra_info("peername")
            self.client_ip, self.client_port = client_ip(peer), client_port(peer)
            proxies = self.server.config.proxy_networks
            self.proxied = bool(proxies) and in_networks(self.client_ip, proxies)
            if not self.proxied:  # else: once the PROXY header has named the client
                admission.admit(self)
            self.server.sessions.add(self)
            if self.server.config.session_timeout > 0:
                self._session_deadline = self.loop.time() + self.server.config.session_timeout
            metrics = self.server.metrics
            if metrics is not None:
                metrics.sessions.inc()
                metrics.sessions_active.inc()
                self._metered = True
            self._announced = True
            events.emit("network", "in", "start")  # for `relay --admin`'s notify
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.state = State.CLOSED
        if self._metered and self.server.metrics is not None:
            self._metered = False
            self.server.metrics.sessions_active.dec()
        if self.counted:
            self.server.limits.release(self.client_ip, exempt=self.exempt)
            self.counted = False
        self.server.sessions.discard(self)
        if self._announced:
            self._announced = False
            events.emit("network", "in", "stop")
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

    @property
    def in_transaction(self) -> bool:
        """True between MAIL FROM and the reply to the end of DATA (or RSET)."""
        return self.busy or self.state in (State.TRANSACTION, State.DATA)

    # -- clocks ------------------------------------------------------------------------

    def first_idle_delay(self) -> float:
        return max(min(self.idle_timeout, self._session_deadline - self.loop.time()), 0.0)

    def on_idle_timer(self) -> None:
        # aiosmtpd restarts its timer on commands only; relay's counts any bytes, with a
        # minimum rate (intake.pace), and never runs while the server itself works. The
        # same timer ends the session at --session-timeout.
        now = self.loop.time()
        if self.transport is not None and now >= self._session_deadline:
            self._session_expired()
            return
        remaining = self.pace.remaining(now)
        if self.transport is not None and remaining > 0:
            self.restart_idle_timer(min(max(remaining, 0.05), self.idle_timeout,
                                        self._session_deadline - now))
            return
        if self.pace.silent_for(now) >= self.pace.allowance:
            self.server.log.info("client_dropped", client=self.client_ip, reason="idle timeout")
            self.close_with("421 4.4.2 Idle timeout, closing connection")
        else:
            self.server.log.info("client_dropped", client=self.client_ip,
                                 reason="slower than --min-data-rate")
            self.close_with("421 4.4.2 Too slow: data rate under the minimum, closing connection")
        self.drop_idle()

    def _session_expired(self) -> None:
        if self.busy:  # never while relay stores or filters: the reply to that comes first
            self.restart_idle_timer(0.1)
            return
        self.server.log.info("client_dropped", client=self.client_ip,
                             reason="session time limit")
        self.close_with("421 4.4.2 Session time limit reached, closing connection")

    # -- replies -----------------------------------------------------------------------

    def close_with(self, reply: str) -> None:
        """Send *reply* (after any held replies, if the connection is still open); close now."""
        # Not isinstance(..., asyncio.WriteTransport): uvloop's transports do not derive from
        # asyncio's classes, and this reply would silently not be sent.
        transport = cast("asyncio.Transport | None", self.transport)
        if transport is not None and not transport.is_closing():
            if self.server.metrics is not None:
                self._meter_reply(reply.encode("ascii"))
            self._held_replies.append(reply.encode("ascii") + b"\r\n")
            transport.write(b"".join(self._held_replies))
            transport.close()
        self._held_replies.clear()

    def _close_now(self) -> None:
        self.cancel_handler()
        if self.transport is not None:
            self.transport.close()

    async def send_reply(self, status: str | bytes) -> None:
        """Send a reply; with PIPELINING, hold MAIL/RCPT/RSET replies while commands wait.

        RFC 2920 lets a server answer a group of pipelined commands together: when the
        client's next command is already buffered, the reply waits for the next one, so a
        pipelined MAIL, RCPT, DATA costs one send instead of three. Only replies after
        which the server goes on to read that buffered command are held. The lines of a
        multi-line reply (aiosmtpd pushes EHLO's one by one) go out together with its last
        line: one send, not one per extension.
        """
        response = status.encode("utf-8") if isinstance(status, str) else status
        _mail_log.debug("%r << %r", self.client_ip, response)
        if self.server.metrics is not None:
            self._meter_reply(response)
        if response[3:4] == b"-":  # a line of a multi-line reply (EHLO's): out with its last
            self._held_replies.append(response + b"\r\n")
            return
        closing = self.close_after_reply or (self.server.stopping and not self.in_transaction)
        if (self._command in _HOLDABLE and not closing and self.server.config.pipelining
                and self.has_line()):
            self._held_replies.append(response + b"\r\n")
            return
        if self._held_replies:
            self._held_replies.append(response + b"\r\n")
            self.write(b"".join(self._held_replies))
            self._held_replies.clear()
        else:
            self.write(response + b"\r\n")
        self.pace.new_request(self.loop.time())
        await self.drain()
        if closing:
            self.close_after_reply = False
            self._close_now()

    def _meter_reply(self, response: bytes) -> None:
        """--metrics: a 250 to DATA is a message accepted; a 4xx or 5xx is a refusal, by
        the command it answers and its code (`rcpt_550`, `data_452`, `connect_554` before the
        greeting, `session_421` for a time limit). Only known command names become labels."""
        metrics = self.server.metrics
        assert metrics is not None
        code = response[:3]
        command = self._command.upper()
        if code == b"250" and command == "DATA":
            metrics.accepted.inc()
        elif code[:1] in (b"4", b"5") and code.isdigit():
            if command in _METERED_COMMANDS:
                name = command.lower()
            elif command:
                name = "other"
            else:  # not tied to a command: at connect, or a timeout or limit of the session
                name = "connect" if self.state is State.CONNECTED else "session"
            metrics.refused.labels(f"{name}_{code.decode()}").inc()

    # -- before the greeting -----------------------------------------------------------

    async def before_greeting(self) -> bool:
        if not await admission.greet_or_refuse(self):
            return False
        self.move(State.COMMANDS)
        return True

    # -- commands aiosmtpd's hooks cannot express -------------------------------------

    async def check_auth_needed(self, caller_method: str) -> bool:
        if self.trusted_keyword is not None:  # a `server none` line trusts this client
            return False
        return bool(await super().check_auth_needed(caller_method))

    # Each names the command being answered (parse_path, send_reply and --metrics read it).

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._command = "MAIL"
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._command = ""

    async def smtp_AUTH(self, arg: str) -> None:
        self._command = "AUTH"
        try:
            await super().smtp_AUTH(arg)
        finally:
            self._command = ""

    async def smtp_EHLO(self, arg: str) -> None:
        self._command = "EHLO"
        try:
            await super().smtp_EHLO(arg)
        finally:
            self._command = ""

    async def smtp_HELO(self, arg: str) -> None:
        self._command = "HELO"
        try:
            await super().smtp_HELO(arg)
        finally:
            self._command = ""

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._command = "RCPT"
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._command = ""

    async def smtp_RSET(self, arg: str) -> None:
        self._command = "RSET"
        try:
            await super().smtp_RSET(arg)
        finally:
            self._command = ""

    def parse_path(self, arg: str) -> tuple[str | None, str | None]:
        if (self.server.config.angle_brackets and self._command in ("MAIL", "RCPT")
                and not arg.startswith("<")):
            return None, None  # --require-angle-brackets: a malformed address (553)
        path = simple_path(arg, self.local_part_limit)
        address, rest = self.general_path(arg) if path is None else path
        if self._command == "MAIL" and address is not None:
            self.mail_parameters = parse_mail_parameters(rest or "")
        return address, rest

    def parse_params(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        result = super().parse_params(params)
        if result is not None and self._command == "MAIL":
            result.pop("AUTH", None)  # RFC 4954 MAIL FROM AUTH=: intake.transaction reads it
        return result

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, with the data read in chunks (intake.data) rather than by line."""
        self._command = "DATA"  # its replies are the DATA command's (--metrics counts them)
        try:
            await self._data(arg)
        finally:
            self._command = ""

    async def _data(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if self.transaction is None or not self.transaction.recipients:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.move(State.DATA)
        collector = DataCollector(self.data_size_limit)
        try:
            await read_data(self.reader, collector)
        except asyncio.CancelledError:  # the connection went away during DATA
            if self.transport is not None:
                self.transport.close()
            raise
        if collector.problem is not DataProblem.NONE:
            self.end_data()
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)"
                            if collector.problem is DataProblem.LINE_TOO_LONG
                            else "552 Error: Too much mail data")
            return
        # The pieces as they came: a 50 MB message is never joined into one more copy.
        self.transaction.content = collector.content_pieces()
        status = await self.call_hook("DATA")
        self.end_data()
        await self.push("250 OK" if status is MISSING else status)
