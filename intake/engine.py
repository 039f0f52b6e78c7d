"""relay-intake's SMTP engine: reads a connection, splits its command lines, runs each command.

aiosmtpd serves a connection with a Task that reads an asyncio StreamReader line by line
and answers through a StreamWriter: per connection a reader, a writer, a task and its
coroutine; per command line a future, a wake-up of the task and a pass through the event
loop, with the stream's own Python code around each. For a client that sends one message
per connection that machinery was most of relay-intake's CPU (docs/performance.md).
`Engine` is a plain asyncio protocol instead. `data_received` adds to one buffer and
answers the complete command lines in it in order; each command (aiosmtpd's `smtp_*`
coroutine, or relay's own) runs at once, inside that call (common.compat_asyncio.Driven).
Only a command that waits (a message being stored, a filter, the verifier, DATA or an AUTH
answer still on its way, a socket whose send buffer is full) is resumed later, by what it
waits for; the lines that arrive meanwhile stay in the buffer, and above twice
`stream_limit` bytes the socket is not read until they are taken.

What a command line must pass before its command runs is aiosmtpd's (through
common.compat_aiosmtpd: `line_refusal`, `command_method`), with aiosmtpd's replies: an
empty or undecodable line, one too long (also one longer than the buffer's limit, whose
rest is read and dropped), TLS refused or required first, an unknown command (the fifth
closes the connection). A command that fails with an exception is answered with
`handle_exception`'s reply, as aiosmtpd does; the end of input, a lost connection and
QUIT stop the engine and cancel a command that waits.

The rest of a command (DATA, an AUTH answer, a PROXY header) is read with `readuntil`,
`readexactly`, `read` and `readline`, which behave as asyncio.StreamReader's do on the
same buffer (LimitOverrunError beyond the limit, IncompleteReadError at the end of input),
so intake.data and intake.proxy_protocol read a session as they would read a stream.
Writes go straight to the transport; `drain` waits only while the transport says its
buffer is full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from common.compat_aiosmtpd import BOGUS_LIMIT, SMTPBase, log_line_read
from common.compat_asyncio import Driven

_TOO_LONG = "500 Command line too long"


class InputStream(Protocol):
    """What intake.data and intake.proxy_protocol read from: an Engine, or a StreamReader."""

    async def readuntil(self, separator: bytes = b"\n") -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...

    async def read(self, n: int = -1) -> bytes: ...


class Engine(SMTPBase):
    """One connection's input, output and command runs (the module docstring has the rules)."""

    def __init__(self, handler: Any, **options: Any) -> None:
        super().__init__(handler, **options)
        self._buffer = bytearray()
        self._command_running: Driven | None = None
        self._waiter: asyncio.Future[None] | None = None  # a read waiting for more input
        self._eof = False
        self._stopped = False  # no more commands are read: QUIT, refused, closing, gone
        self._answering = False  # inside _answer_lines (a command done there returns to it)
        self._discarding = False  # dropping the rest of a line longer than the buffer's limit
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._bogus_budget = BOGUS_LIMIT

    # -- the protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.is_new_connection(transport):
            # STARTTLS's handshake is done. RFC 3207 4.2: nothing the client sent in the
            # clear after the command counts.
            self._buffer.clear()
            self.tls_started(transport)
            return
        self.start_session(transport)
        # On the loop's next pass, as a Task would start: what the client sends at once
        # (an early talker) has then been read (intake.admission looks one pass later).
        self._stopped = True  # until the greeting: no command is answered
        self.loop.call_soon(self._run, self._begin())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif self._command_running is None:
            self._answer_lines()
        if (not self._reading_paused and len(self._buffer) > 2 * self.line_length_limit
                and self.transport is not None):
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        self._eof = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.cancel_handler()
        return False  # the transport closes itself (also under TLS)

    def connection_lost(self, error: Exception | None) -> None:
        self._stopped = True
        self._eof = True
        self.end_session()
        running = self._command_running
        if running is not None:
            running.cancel()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("Connection lost"))
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- commands ----------------------------------------------------------------------

    async def before_greeting(self) -> bool:
        """Runs first; False ends the session (the session said why)."""
        return True

    async def _begin(self) -> None:
        if self.transport is None:  # gone before the first pass
            return
        if await self.before_greeting():
            await self.push(self.greeting_line)
            self._stopped = self.transport is None or self.transport.is_closing()

    def cancel_handler(self) -> None:
        self._stopped = True
        running = self._command_running
        if running is not None:
            running.cancel()

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        driven = Driven(coroutine, self._command_done, self.loop)
        self._command_running = driven
        driven.start()

    def _command_done(self, error: BaseException | None) -> None:
        self._command_running = None
        if error is not None and not self._answer_failure(error):
            return
        if not self._answering:
            self._answer_lines()

    def _answer_failure(self, error: BaseException) -> bool:
        """A command ended with *error*: True when the session goes on (it was answered)."""
        if isinstance(error, (asyncio.CancelledError, ConnectionResetError)):
            self._stopped = True
            if self.transport is not None:
                self.transport.close()
            return False
        if self.is_tls_setup_error(error):
            self._stopped = True
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(error if isinstance(error, Exception) else None)
            return False
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: not ours
            raise error
        self._run(self._answer_exception(error))
        return self._command_running is None

    async def _answer_exception(self, error: Exception) -> None:
        try:
            status = await self.handle_exception(error)
        except Exception as inner:
            status = f"500 Error: ({inner.__class__.__name__}) {inner}"
        await self.push(status)

    def _answer_lines(self) -> None:
        """Answer the complete lines buffered, in order, while no command waits."""
        buffer = self._buffer
        self._answering = True
        try:
            while self._command_running is None and not self._stopped:
                end = buffer.find(b"\n")
                if end < 0:
                    if len(buffer) > self.line_length_limit:  # too long: drop, wait for its end
                        buffer.clear()
                        self._discarding = True
                    break
                line = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                if self._discarding:
                    self._discarding = False
                    self._run(self.push(_TOO_LONG))
                else:
                    self._run(self._line_command(line))
        finally:
            self._answering = False
        self._resume_reading()

    def _line_command(self, raw: bytes) -> Coroutine[Any, Any, None]:
        """What answers one command line: its command, or the reply refusing it."""
        assert self.session is not None
        log_line_read(self.session.peer, raw)
        if len(raw) > self.line_length_limit:
            return self.push(_TOO_LONG)
        line = raw.rstrip(b"\r\n")
        if not line:
            return self.push("500 Error: bad syntax")
        command_bytes, _, arg_bytes = line.partition(b" ")
        try:
            command = command_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            return self.push("500 Error: bad syntax")
        arg: str | None = None
        if arg_bytes:
            arg_bytes = arg_bytes.strip()
            if self.enable_SMTPUTF8:
                arg = str(arg_bytes, encoding="utf-8", errors="surrogateescape")
            else:
                try:
                    arg = str(arg_bytes, encoding="ascii", errors="strict")
                except UnicodeDecodeError:
                    return self.push("500 Error: strict ASCII mode")
        refusal = self.line_refusal(command, len(line))
        if refusal is not None:
            return self.push(refusal)
        method = self.command_method(command)
        if method is None:
            self._bogus_budget -= 1
            if self._bogus_budget < 1:
                return self._goodbye("502 5.5.1 Too many unrecognized commands, goodbye.")
            return self.push(f'500 Error: command "{command}" not recognized')
        self.command_read()
        return method(arg)  # type: ignore[return-value]

    async def _goodbye(self, reply: str) -> None:
        await self.push(reply)
        self._stopped = True
        if self.transport is not None:
            self.transport.close()

    # -- output ------------------------------------------------------------------------

    async def send_reply(self, status: str | bytes) -> None:
        """Write one reply and wait while the socket is full (relay's session adds its
        pipelining hold and meters)."""
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        self.write(status + b"\r\n")
        await self.drain()

    def write(self, data: bytes) -> None:
        """Send *data* (nothing once the connection is closing)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)  # type: ignore[attr-defined]

    async def drain(self) -> None:
        """Wait while the transport's send buffer is full; ConnectionResetError once lost."""
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if self._write_paused:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    # -- input beyond command lines ------------------------------------------------------

    @property
    def buffered(self) -> bytes | bytearray:
        """What the client sent that nothing has read yet (not a copy: do not keep it)."""
        return self._buffer

    def has_line(self) -> bool:
        """A whole line is already here: reading it will not wait for the client."""
        return b"\n" in self._buffer

    @property
    def reader(self) -> Engine:
        """The session as a stream to read the rest of a command from."""
        return self

    async def _more(self) -> None:
        """Wait until the client sends more, or its input ends."""
        self._resume_reading()
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def _take(self, size: int) -> bytes:
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._resume_reading()
        return chunk

    def _resume_reading(self) -> None:
        if self._reading_paused and len(self._buffer) <= self.line_length_limit \
                and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[attr-defined]

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """asyncio.StreamReader.readuntil on the session's input."""
        buffer = self._buffer
        offset = 0
        while True:
            index = buffer.find(separator, offset)
            if index >= 0:
                if index > self.line_length_limit:
                    raise asyncio.LimitOverrunError(
                        "Separator is found, but chunk is longer than limit", index)
                return self._take(index + len(separator))
            offset = max(len(buffer) + 1 - len(separator), 0)
            if offset > self.line_length_limit:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", offset)
            if self._eof:
                raise asyncio.IncompleteReadError(self._take(len(buffer)), None)
            await self._more()

    async def readexactly(self, n: int) -> bytes:
        """asyncio.StreamReader.readexactly on the session's input."""
        while len(self._buffer) < n:
            if self._eof:
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), n)
            await self._more()
        return self._take(n)

    async def read(self, n: int = -1) -> bytes:
        """asyncio.StreamReader.read for n > 0: what is there, up to *n* bytes, waiting
        for some; b"" at the end of input."""
        while not self._buffer and not self._eof:
            await self._more()
        return self._take(len(self._buffer) if n < 0 else n)

    async def readline(self) -> bytes:
        """asyncio.StreamReader.readline: a line, or what is left at the end of input."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:
            return error.partial
        except asyncio.LimitOverrunError as error:
            if self._buffer.startswith(b"\n", error.consumed):
                del self._buffer[: error.consumed + 1]
            else:
                self._buffer.clear()
            self._resume_reading()
            raise ValueError(error.args[0]) from None
