"""The DATA phase, read in chunks instead of line by line.

aiosmtpd reads DATA one line at a time (a coroutine call, a log call and a list append per
line, with a stream limit of 1,001 bytes that pauses and resumes the socket several times
per message); on a 4 KiB message that was a quarter of intake's event loop. `read_data`
takes whatever the stream holds up to the next `.CRLF`, and `DataCollector` checks what
RFC 5321 asks as the bytes arrive:

- the end of data is only CRLF . CRLF: a bare LF or CR never ends it (no smuggling);
- a line longer than `LINE_LIMIT` octets on the wire (CRLF and a stuffed dot included, as
  aiosmtpd counts) or more bytes than the size limit is refused once the client has sent
  everything, and nothing is kept after that, so memory stays bounded;
- `content()` removes the dot-stuffing (RFC 5321 4.5.2).

When a message has both problems, the one whose byte came first decides the reply.
Reads only from the stream it is given; writes nothing.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from intake.engine import InputStream

LINE_LIMIT = 1001  # octets on the wire, CRLF included: 1000 (RFC 5321 4.5.3.1.6) + a stuffed dot
_TEXT_LIMIT = LINE_LIMIT - 2
_END = b".\r\n"
_CRLF = b"\r\n"


class DataProblem(enum.Enum):
    """Why the data of a transaction is refused (after all of it has arrived)."""

    NONE = "none"
    LINE_TOO_LONG = "line too long"
    TOO_MUCH = "too much"


class DataCollector:
    """The bytes of one DATA phase before its end line, checked as they arrive."""

    def __init__(self, size_limit: int | None) -> None:
        self.size_limit = size_limit or None
        self.problem = DataProblem.NONE
        self._chunks: list[bytes] = []
        self._total = 0  # bytes taken so far (stream offset of the next byte)
        self._line_start = 0  # stream offset where the current line began
        self._carried_cr = False  # the data so far ends with CR: maybe half of a CRLF

    @property
    def at_line_start(self) -> bool:
        """True when the next byte begins a line (no data yet, or the data ends with CRLF)."""
        return self._line_start == self._total and not self._carried_cr

    def add(self, chunk: bytes) -> None:
        """Take the next bytes of the data (never the end line itself)."""
        if not chunk:
            return
        start = self._total
        self._total += len(chunk)
        long_at = self._scan_lines(chunk, start)
        if self.problem is DataProblem.NONE:
            limit = self.size_limit
            much_at = limit if limit is not None and self._total > limit else None
            if long_at is not None and (much_at is None or long_at < much_at):
                self._refuse(DataProblem.LINE_TOO_LONG)
            elif much_at is not None:
                self._refuse(DataProblem.TOO_MUCH)
            else:
                self._chunks.append(chunk)

    def content(self) -> bytes:
        """The message as the client meant it: the data with the dot-stuffing removed."""
        return b"".join(self.content_pieces())

    def content_pieces(self) -> list[bytes]:
        """The same, in the pieces it arrived in (a big message is never joined in memory).

        Takes the data: the collector is empty afterwards.
        """
        pieces: list[bytes] = []
        at_line_start, after_cr = True, False
        for chunk in self._chunks:
            piece = chunk
            if at_line_start and piece.startswith(b"."):
                piece = piece[1:]
            elif after_cr and piece.startswith(b"\n."):  # CR | LF . across two pieces
                piece = b"\n" + piece[2:]
            pieces.append(piece.replace(b"\r\n.", _CRLF))
            at_line_start, after_cr = chunk.endswith(_CRLF), chunk.endswith(b"\r")
        self._chunks.clear()
        return pieces

    def _refuse(self, problem: DataProblem) -> None:
        self.problem = problem
        self._chunks.clear()

    def _scan_lines(self, chunk: bytes, start: int) -> int | None:
        """Move the line state over *chunk*; the offset of the first byte over the limit, if any."""
        offset = start
        if self._carried_cr and chunk[:1] == b"\n":  # a CRLF split between two chunks
            long_at = self._check_line(self._line_start, start - 1)
            self._line_start = offset = start + 1
            chunk = chunk[1:]
        else:
            long_at = None
        pieces = chunk.split(_CRLF)
        last = pieces[-1]
        self._carried_cr = last.endswith(b"\r")
        end = offset + len(chunk)
        last_start = end - len(last) if len(pieces) > 1 else self._line_start
        longest = max(
            offset + len(pieces[0]) - self._line_start,
            max(map(len, pieces[1:-1]), default=0),
            end - (1 if self._carried_cr else 0) - last_start,
        )
        if long_at is None and longest > _TEXT_LIMIT:
            long_at = self._first_long_line(pieces, offset)
        self._line_start = last_start
        return long_at

    def _first_long_line(self, pieces: list[bytes], offset: int) -> int | None:
        """The rare path: walk the pieces to find where the first long line passed the limit."""
        line_start = self._line_start
        for index, piece in enumerate(pieces):
            text_end = offset + len(piece)
            if index == len(pieces) - 1 and piece.endswith(b"\r"):
                text_end -= 1
            long_at = self._check_line(line_start, text_end)
            if long_at is not None:
                return long_at
            offset = line_start = text_end + len(_CRLF)
        return None

    @staticmethod
    def _check_line(line_start: int, text_end: int) -> int | None:
        if text_end - line_start > _TEXT_LIMIT:
            return line_start + _TEXT_LIMIT
        return None


async def read_data(reader: InputStream, collector: DataCollector) -> None:
    """Read up to and including the end line (CRLF . CRLF), feeding *collector*.

    Each `readuntil` takes everything up to the next `.CRLF`; only when that dot begins a
    line is it the end. Data longer than the stream's limit is taken in pieces.
    """
    while True:
        try:
            chunk = await reader.readuntil(_END)
        except asyncio.LimitOverrunError as error:
            collector.add(await reader.read(error.consumed))
            continue
        collector.add(chunk[: -len(_END)])
        if collector.at_line_start:
            return
        collector.add(_END)
