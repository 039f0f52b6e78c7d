"""The one place relay reads asyncio's private state: what a StreamReader holds unread.

`asyncio.StreamReader` has no public way to ask whether bytes are already buffered without
reading them. relay-intake needs that twice: the early-talker check (did the client send
before the greeting?) and the PIPELINING reply hold (is the client's next command already
here?). Both read `StreamReader._buffer`, a bytearray in CPython 3.8-3.13 (uvloop uses
asyncio's own streams). `buffered` reads it without a default: should a Python release
rename it, intake fails loudly (AttributeError, and tests/test_compat_asyncio.py) instead of
silently switching the early-talker check off. Reads; never changes the stream.

And one setting relay-deliver changes: asyncio's plain socket transport reads with
`recv(transport.max_size)`, a class attribute of 256 KiB, which the C library maps and
unmaps for every read (three system calls and a page fault per read). deliver reads a
smarthost's replies, a few lines each, in smaller pieces: `set_read_size` sets it on its
connections' transports. uvloop's transports and TLS transports have no such attribute and
are left as they are (tests/test_compat_asyncio.py checks that asyncio still reads it).
"""

from __future__ import annotations

import asyncio
from typing import Any


def buffered(reader: asyncio.StreamReader) -> bytes | bytearray:
    """The bytes *reader* holds that nobody has read yet (not a copy: do not keep it)."""
    data: bytes | bytearray = reader._buffer  # type: ignore[attr-defined]
    return data


def has_line(reader: asyncio.StreamReader) -> bool:
    """True when a whole line is already buffered: reading it will not wait for the peer."""
    return b"\n" in buffered(reader)


def set_read_size(transport: Any, size: int) -> bool:
    """Make *transport* read at most *size* bytes at a time; False when it has no such
    setting (a uvloop or TLS transport: nothing changes)."""
    if not isinstance(getattr(transport, "max_size", None), int):
        return False
    transport.max_size = size
    return True
