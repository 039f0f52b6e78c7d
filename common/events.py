"""Events for the admin interface's `notify`: relay-intake and relay-deliver tell `relay`.

`relay --admin` hands each program the write end of one pipe (`--event-fd N`); a program
calls `emit("client", "sent", msg_id)` where something happens (a connection in or out, a
message sent, a forwarding pass started or ended: E-MailRelay 2.6.1's events) and `relay`
reads the pipe and passes each event to the admin clients that asked for them.

Events are hints for a person watching, never the record: the pipe is non-blocking and an
event that does not fit (the reader is slow or gone) is dropped and counted, so a program
never waits for `relay` or an admin client. Each event is one JSON array of strings on
one line, written with one write(2) of at most PIPE_BUF bytes (atomic, so the lines of
the programs and of deliver's worker processes never interleave). Without `--event-fd`,
`emit` does nothing. Reads and writes only that descriptor.
"""

from __future__ import annotations

import contextlib
import json
import os
import select

from common.config import Option

EVENT_FD_OPTION = Option(
    "event-fd", "file descriptor of a pipe to write admin events on (given by `relay --admin`)",
    None, "int", metavar="FD")

MAX_PARTS = 4  # E-MailRelay's events have at most four words
MAX_PART = 900  # characters of one word kept (a reason can be long): 4 words fit PIPE_BUF
MAX_LINE = select.PIPE_BUF


class EventPipe:
    """The writing end: `emit` never blocks and never raises."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self.dropped = 0
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)

    def emit(self, *parts: str) -> None:
        fd = self.fd
        if fd is None:
            return
        words = [part[:MAX_PART] for part in parts[:MAX_PARTS]]
        line = json.dumps(words, ensure_ascii=True).encode("ascii") + b"\n"
        if len(line) > MAX_LINE:  # only with many escapes: keep the event, cut its words
            line = json.dumps([word[:100] for word in words]).encode("ascii") + b"\n"
        try:
            os.write(fd, line)
        except BlockingIOError:
            self.dropped += 1  # the reader is behind: this event is lost, the work goes on
        except OSError:
            self.fd = None  # the reader has gone (EPIPE): no more events


_pipe: EventPipe | None = None


def configure(fd: int | None) -> None:
    """Write this process's events to *fd* (None: no events)."""
    global _pipe  # noqa: PLW0603 (one channel per process, like the logging setup)
    _pipe = None if fd is None else EventPipe(fd)


def emit(*parts: str) -> None:
    """One event, e.g. `emit("network", "out", "start")`; nothing without `--event-fd`."""
    if _pipe is not None:
        _pipe.emit(*parts)


def dropped() -> int:
    """How many events this process could not write (the reader was behind)."""
    return 0 if _pipe is None else _pipe.dropped


class EventReader:
    """The reading end's framing: bytes in, events out; a bad or overlong line is skipped."""

    def __init__(self) -> None:
        self._buffer = b""
        self._skipping = False  # inside a line that was too long

    def feed(self, chunk: bytes) -> list[tuple[str, ...]]:
        self._buffer += chunk
        events: list[tuple[str, ...]] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    self._buffer, self._skipping = b"", True
                return events
            line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            if self._skipping:
                self._skipping = False
                continue
            event = parse(line)
            if event is not None:
                events.append(event)


def parse(line: bytes) -> tuple[str, ...] | None:
    """One line's event, or None when it is not one (1 to 4 strings in a JSON array)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if (not isinstance(value, list) or not 0 < len(value) <= MAX_PARTS
            or not all(isinstance(word, str) for word in value)):
        return None
    return tuple(value)


def address_text(host: str, port: int | str) -> str:
    """An address as E-MailRelay shows one: 127.0.0.1:25, and ::1.25 for IPv6."""
    return f"{host}.{port}" if ":" in host else f"{host}:{port}"
