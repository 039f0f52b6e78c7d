"""The bytes of SMTP DATA from a message's content, slice by slice: a pure function core.

`DataEncoder.encode(piece)` takes the content in slices of any size (as they are read from
the content file) and returns what goes on the wire for each; `finish()` returns the end:
a CRLF if the content did not end with one, then the final `.` line. What is sent is the
content byte for byte except for RFC 5321's two rules:

- transparency (4.5.2): a line that starts with `.` gets one more `.` in front, also when
  the line starts right at the beginning of a slice (the encoder remembers whether the
  last slice ended a line);
- line ends (2.3.8): a bare CR or a bare LF becomes CRLF. relay-intake never stores one
  (its DATA reader keeps only CRLF-ended lines); a content file dropped in by hand may
  hold them, and a smarthost must not be sent them. A CRLF split between two slices is one
  line end: a slice that ends with CR keeps it back until the next slice shows what
  follows.

A slice with neither a bare line end nor a line starting with `.` (nearly every slice) is
returned as it is: no copy. Otherwise only that slice is copied, never the whole message.
`data_size(slices)` is what SIZE= announces for that content (RFC 1870: the message as
sent, CRLFs included, the dots of transparency and the final dot line not): its length,
one more byte per bare line end, and 2 for a CRLF ending an unfinished last line.
No I/O: reads and writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CRLF = b"\r\n"
END_OF_DATA = b".\r\n"
_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class DataEncoder:
    """One message's content in, DATA out. `normalised` counts the bare line ends rewritten."""

    def __init__(self) -> None:
        self._line_start = True  # the next byte starts a line
        self._held_cr = False  # the last slice ended with a CR, not yet sent
        self.normalised = 0

    def encode(self, piece: bytes) -> list[bytes]:
        """What to send for the next *piece* of the content (possibly nothing yet)."""
        data = piece
        if self._held_cr:
            data = b"\r" + piece
            self._held_cr = False
        if data.endswith(b"\r"):
            self._held_cr = True
            data = data[:-1]
        if not data:
            return []
        crlf = data.count(CRLF)
        if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
            data, rewritten = _BARE_LINE_END.subn(CRLF, data)
            self.normalised += rewritten
        out: list[bytes] = []
        if self._line_start and data.startswith(b"."):
            out.append(b".")
        if b"\r\n." in data:
            data = data.replace(b"\r\n.", b"\r\n..")
        out.append(data)
        self._line_start = data.endswith(CRLF)
        return out

    def finish(self) -> list[bytes]:
        """The end of DATA: a held-back (bare) CR as CRLF, a CRLF to end an unfinished last
        line, and the final dot line."""
        out: list[bytes] = []
        if self._held_cr:
            self._held_cr = False
            self.normalised += 1
            out.append(CRLF)
            self._line_start = True
        if not self._line_start:
            out.append(CRLF)
        out.append(END_OF_DATA)
        return out


def data_size(slices: Iterable[bytes]) -> int:
    """The size of the message DataEncoder sends for this content, without the dots it adds
    (counts only: no slice is copied)."""
    size = 0
    last = b""  # the previous slice's last byte
    for piece in slices:
        if not piece:
            continue
        crlf = piece.count(CRLF)
        if last == b"\r" and piece.startswith(b"\n"):
            crlf += 1  # a CRLF split between two slices: neither half is bare
        # each bare CR and each bare LF is sent as two bytes
        size += len(piece) + piece.count(b"\r") + piece.count(b"\n") - 2 * crlf
        last = piece[-1:]
    if last and last not in (b"\r", b"\n"):
        size += len(CRLF)  # finish() ends the last line
    return size


__all__ = ["END_OF_DATA", "DataEncoder", "data_size"]
