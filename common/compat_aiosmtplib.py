"""Every use relay makes of aiosmtplib's private internals, in one place.

aiosmtplib's `SMTP.data()` takes the whole message as one `bytes`, rewrites its line ends
with a regular expression, dot-stuffs it with another and appends the final dot: for a
50 MB message three more whole copies (~234 MB allocated) and over a second in which the
event loop, and every other connection on it, stands still. relay-deliver sends the
stored bytes instead, slice by slice as `deliver.dotstuff` prepares them, through
`send_data` below, which drives the client's connection as `data()` itself does:

- `SMTP.protocol`, the `SMTPProtocol` of the connection (None when it is closed);
- `SMTPProtocol._command_lock`, held for the whole DATA exchange as aiosmtplib holds it
  for every command, so nothing else is written in between;
- `SMTPProtocol._response_pending`, set before each write that expects a reply (the
  protocol drops replies that arrive while it is not set);
- `SMTPProtocol.write(bytes)` and `SMTPProtocol.read_response(timeout)`;
- `SMTPProtocol._paused` and `SMTPProtocol._drain_helper()`, the protocol's flow
  control (the transport pauses it when its buffer is over the high-water mark; the helper
  waits for the resume), so that the content waits in the file, not in memory;
- `SMTP.close()` after a lost connection or a timeout, as `data()` does.

`GreetingSMTP` is aiosmtplib's client with E-MailRelay's separate greeting timeout
(`--prompt-timeout`): aiosmtplib waits for the connection and the 220 greeting with one
timeout and gives up without a greeting, where E-MailRelay's client waits for the
greeting this long and then goes on with EHLO. It replaces `SMTP._create_connection(timeout)`
(what `connect()` calls to open the connection and read the greeting, the TLS handshake
of implicit TLS included), building the connection as aiosmtplib does: an
`SMTPProtocol(loop=, connection_lost_callback=SMTP._on_connection_lost)`,
`loop.create_connection`, `SMTP._get_tls_context()` for implicit TLS, `SMTP.protocol` and
`SMTP.transport` set, then `SMTPProtocol.read_response(timeout)` for the greeting. A
greeting that comes late, as the reply to EHLO, closes the connection (the replies would
be one behind from there on).

`send_pipelined` writes MAIL FROM and every RCPT TO at once (RFC 2920 PIPELINING, as
E-MailRelay's `+pipelining`) and reads their replies in order. aiosmtplib's protocol
parses one reply per read into `SMTPProtocol._response_waiter` and drops whatever it
reads while that waiter holds a reply nobody has taken yet, so a reply that comes in a
read of its own before the waiting task runs again would be lost (a busy client, a
server that writes each reply separately). While the replies are due, the waiter is
one of send_pipelined's own (`_Replies`) that keeps each reply and stays pending until it
has them all: every read is parsed, and the replies that came in the same read are taken
out of `SMTPProtocol._buffer` with `SMTPProtocol._read_response_from_buffer()` (a reply
still incomplete there is finished by the next read). Afterwards the protocol gets a
fresh waiter, as `read_response` leaves it. The commands are the bytes `SMTP.mail()` and
`SMTP.rcpt()` write, checked against `aiosmtplib.protocol.COMMAND_INJECTION_REGEX` as
`SMTPProtocol.execute_command` checks them.

`send_bdat` sends the content of a BINARYMIME message in one `BDAT <size> LAST` chunk (RFC
3030), the bytes as they are stored, with the same internals as `send_data`.

And `wire_address`: what `SMTP.mail()` and `SMTP.rcpt()` put between `<` and `>` for an
address is `aiosmtplib.email.quote_address` of it, which parses the address with
`email.utils.parseaddr` and so may send another address than the one given
(`a"b@x` goes out as `<a>`), and raises ValueError for one it refuses (`<>` as a
recipient, a space); relay-deliver refuses both kinds for good before sending anything.

`tests/test_compat_aiosmtplib.py` checks each of these and fails loudly, naming the
internal, when an aiosmtplib release changes one. Everything else relay does with
aiosmtplib is its public API, and errors are told apart by their class and `.code`, never
by their text. Reads and writes only the connection it is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, SMTPProtocol
from aiosmtplib.response import SMTPResponse

# The internals named above, by the object they belong to (the test checks each one).
PROTOCOL_INTERNALS = ("_command_lock", "_response_pending", "_paused", "_drain_helper",
                      "write", "read_response", "_buffer", "_read_response_from_buffer",
                      "_response_waiter", "transport")
# The internals GreetingSMTP uses, on aiosmtplib.SMTP (the test checks each one).
SMTP_INTERNALS = ("_create_connection", "_on_connection_lost", "_get_tls_context")
READY = 220
# Bytes written without waiting before send_data lets the other tasks run.
YIELD_EVERY = 256 * 1024
START_INPUT = 354
COMPLETED = 250


async def send_data(smtp: aiosmtplib.SMTP, pieces: Iterable[bytes], *, timeout: float,
                    final_timeout: float) -> SMTPResponse:
    """DATA, then *pieces* as they come (already in DATA form: CRLF line ends, dot-stuffed,
    ending with the final dot line), then the reply after the dot.

    *timeout* bounds the 354 and each wait for the smarthost to take more of the content;
    *final_timeout* the reply after the dot. Raises as `SMTP.data()` does:
    `SMTPDataError` (with `.code`) for a reply other than 354 / 250,
    `SMTPServerDisconnected` when the connection is lost, `SMTPTimeoutError` on a timeout;
    the connection is closed after the last two.
    """
    async with _exclusive(smtp) as protocol:
        protocol._response_pending = True
        protocol.write(b"DATA\r\n")
        start = await protocol.read_response(timeout=timeout)
        if start.code != START_INPUT:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol._response_pending = True
        await _write_all(protocol, pieces, timeout)
        return await _completed(protocol, final_timeout)


async def send_bdat(smtp: aiosmtplib.SMTP, pieces: Iterable[bytes], size: int, *,
                    timeout: float, final_timeout: float) -> SMTPResponse:
    """`BDAT <size> LAST`, then *pieces* (the content as stored, *size* bytes in all), then
    the reply; *timeout* bounds each wait for the smarthost to take more, *final_timeout*
    the reply. Raises as `send_data` does (`SMTPDataError` for a reply other than 250)."""
    async with _exclusive(smtp) as protocol:
        protocol._response_pending = True
        protocol.write(f"BDAT {size} LAST\r\n".encode("ascii"))
        await _write_all(protocol, pieces, timeout)
        return await _completed(protocol, final_timeout)


def mail_command(sender: str, options: Iterable[str], encoding: str) -> bytes:
    """The MAIL FROM line `SMTP.mail()` writes (ValueError as it raises)."""
    return _command(b"MAIL", b"FROM:" + wire_address(sender, encoding),
                    *(option.encode("ascii") for option in options))


def rcpt_command(recipient: str, encoding: str) -> bytes:
    """The RCPT TO line `SMTP.rcpt()` writes (ValueError as it raises)."""
    return _command(b"RCPT", b"TO:" + wire_address(recipient, encoding))


def _command(*args: bytes) -> bytes:
    for arg in args:
        if COMMAND_INJECTION_REGEX.search(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


class _Replies(asyncio.Future[SMTPResponse]):
    """The protocol's response waiter while *count* pipelined replies are due: each reply
    the protocol parses is kept in `replies`, with those that came in the same read, and
    the future stays pending (so that the protocol parses the next read too) until all
    are there. *on_reply* is called for each one."""

    def __init__(self, protocol: Any, count: int, on_reply: Callable[[], None]) -> None:
        super().__init__()
        self.protocol, self.count, self.on_reply = protocol, count, on_reply
        self.replies: list[SMTPResponse] = []

    def set_result(self, result: SMTPResponse) -> None:
        """From the protocol's data_received: a reply; and the others already read."""
        self.replies.append(result)
        try:
            while len(self.replies) < self.count:
                more = self.protocol._read_response_from_buffer()
                if more is None:
                    break
                self.replies.append(more)
        except Exception as error:  # a malformed reply: as data_received reports one
            self.set_exception(error)
            return
        self.on_reply()
        if len(self.replies) >= self.count:
            super().set_result(result)


async def send_pipelined(smtp: aiosmtplib.SMTP, commands: list[bytes], *,
                         timeout: float) -> list[SMTPResponse]:
    """Write *commands* (whole lines, from `mail_command` / `rcpt_command`) at once; their
    replies, in order. *timeout* bounds each wait; a lost connection or a timeout closes
    it (`SMTPServerDisconnected`, `SMTPTimeoutError`), as `send_data` does."""
    async with _exclusive(smtp, aiosmtplib.SMTPResponseException) as protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout) as limit:

                def extend() -> None:  # each reply gives the next one *timeout* seconds
                    if not limit.expired():  # one read in the same round as the timeout
                        limit.reschedule(loop.time() + timeout)

                replies = _Replies(protocol, len(commands), extend)
                protocol._response_waiter = replies
                protocol._response_pending = True
                protocol.write(b"".join(commands))
                await replies
        except TimeoutError as error:
            raise aiosmtplib.SMTPReadTimeoutError(
                "Timed out waiting for server response") from error
        finally:  # as read_response leaves the protocol
            protocol._response_pending = False
            protocol._response_waiter = (None if protocol.transport is None
                                         else loop.create_future())
    return replies.replies


class GreetingSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client that waits *greeting_timeout* seconds for the 220 greeting
    after connecting (the `timeout` of `connect()` bounds the connection and an implicit
    TLS handshake only), then, with *go_on*, goes on without it (E-MailRelay's
    `--prompt-timeout`); without *go_on* a missing greeting is a timeout, as in aiosmtplib."""

    def __init__(self, *args: Any, greeting_timeout: float = 20.0, go_on: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.greeting_timeout = greeting_timeout
        self.go_on = go_on
        self.greeting_missed = False  # True until the first reply after a missed greeting

    async def _create_connection(self, timeout: float | None) -> SMTPResponse:
        if self.sock is not None or self.socket_path is not None:  # not relay's: aiosmtplib's
            return await super()._create_connection(timeout)
        loop = self.loop or asyncio.get_running_loop()
        protocol = SMTPProtocol(loop=loop, connection_lost_callback=self._on_connection_lost)
        tls_context = await self._get_tls_context() if self.use_tls else None
        hostname, port = self.hostname or "localhost", self.port or 25  # relay gives both
        try:
            transport, _ = await asyncio.wait_for(loop.create_connection(
                lambda: protocol, host=hostname, port=port, ssl=tls_context,
                ssl_handshake_timeout=timeout if tls_context else None,
                local_addr=self.source_address), timeout=timeout)
        except TimeoutError as error:
            raise aiosmtplib.SMTPConnectTimeoutError(
                f"Timed out connecting to {hostname} on port {port}") from error
        except OSError as error:
            raise aiosmtplib.SMTPConnectError(
                f"Error connecting to {hostname} on port {port}: {error}") from error
        self.protocol, self.transport = protocol, transport
        self.greeting_missed = False
        try:
            response: SMTPResponse = await protocol.read_response(
                timeout=self.greeting_timeout)
        except aiosmtplib.SMTPServerDisconnected as error:
            raise aiosmtplib.SMTPConnectError(
                f"Error connecting to {hostname} on port {port}: {error}") from error
        except aiosmtplib.SMTPTimeoutError as error:
            if not self.go_on:
                raise aiosmtplib.SMTPConnectTimeoutError(
                    f"no greeting within {self.greeting_timeout:g} s") from error
            self.greeting_missed = True
            return SMTPResponse(READY, "")
        if response.code != READY:
            raise aiosmtplib.SMTPConnectResponseError(response.code, response.message)
        return response

    async def execute_command(self, *args: bytes, **kwargs: Any) -> SMTPResponse:
        response: SMTPResponse = await super().execute_command(*args, **kwargs)
        if self.greeting_missed:
            self.greeting_missed = False  # only the first reply can be the late greeting
            if response.code == READY:
                self.close()
                raise aiosmtplib.SMTPConnectResponseError(
                    response.code, f"the greeting came after --prompt-timeout "
                    f"({self.greeting_timeout:g} s), as the reply to "
                    f"{args[0].decode('ascii', 'replace')}: {response.message}")
        return response


def wire_address(address: str, encoding: str) -> bytes:
    """The path aiosmtplib sends for *address* in MAIL FROM / RCPT TO, `<` and `>`
    included; ValueError (UnicodeEncodeError among them) when it would refuse it."""
    return quote_address(address).encode(encoding)


@asynccontextmanager
async def _exclusive(smtp: aiosmtplib.SMTP,
                     *also_closing: type[Exception]) -> AsyncIterator[Any]:
    """The connection's protocol with its command lock held, as aiosmtplib holds it for a
    command; a lost connection or a timeout (or one of *also_closing*) closes the
    connection and is raised on. `SMTPServerDisconnected` when it is not connected."""
    protocol: Any = smtp.protocol
    if protocol is None or protocol._command_lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    closing: tuple[type[Exception], ...] = (aiosmtplib.SMTPServerDisconnected,
                                            aiosmtplib.SMTPTimeoutError, ConnectionError,
                                            *also_closing)
    try:
        async with protocol._command_lock:
            yield protocol
    except closing:
        smtp.close()
        raise


async def _completed(protocol: Any, timeout: float) -> SMTPResponse:
    """The reply after the content: `SMTPDataError` unless it is 250."""
    response: SMTPResponse = await protocol.read_response(timeout=timeout)
    if response.code != COMPLETED:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


async def _write_all(protocol: Any, pieces: Iterable[bytes], timeout: float) -> None:
    """Write *pieces*, waiting in flow control (at most *timeout* each time)."""
    unyielded = 0
    for piece in pieces:
        protocol.write(piece)
        unyielded += len(piece)
        if protocol._paused:
            await _drained(protocol, timeout)
            unyielded = 0
        elif unyielded >= YIELD_EVERY:
            # The socket took it all: yield anyway, so that a fast link does not
            # keep the event loop from the other connections for a whole message.
            await asyncio.sleep(0)
            unyielded = 0


async def _drained(protocol: Any, timeout: float) -> None:
    """Wait while the transport's buffer is over its high-water mark."""
    try:
        await asyncio.wait_for(protocol._drain_helper(), timeout)
    except TimeoutError:
        raise aiosmtplib.SMTPTimeoutError(
            f"the smarthost took no more of the message for {timeout:g} s") from None


__all__ = ["PROTOCOL_INTERNALS", "SMTP_INTERNALS", "GreetingSMTP", "mail_command",
           "rcpt_command", "send_bdat", "send_data", "send_pipelined", "wire_address"]
