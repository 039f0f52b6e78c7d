"""common/compat_asyncio.py: asyncio's StreamReader still keeps its unread bytes where relay
reads them, and the early-talker check that depends on it works with no greeting delay
(the path that would silently turn off if that internal went away); and the socket
transport still reads at most its `max_size`, which relay-deliver sets.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from support.intake import IntakeThread

from common import compat_asyncio


def test_buffered_shows_unread_bytes_without_taking_them() -> None:
    """buffered() and has_line() see what was fed and not yet read, and read nothing."""

    async def check() -> None:
        reader = asyncio.StreamReader()
        assert compat_asyncio.buffered(reader) == b"" and not compat_asyncio.has_line(reader)
        reader.feed_data(b"EHLO x\r\nMAIL")
        assert compat_asyncio.buffered(reader) == b"EHLO x\r\nMAIL"
        assert compat_asyncio.has_line(reader)
        assert await reader.readline() == b"EHLO x\r\n"
        assert compat_asyncio.buffered(reader) == b"MAIL"
        assert not compat_asyncio.has_line(reader)

    asyncio.run(check())


def test_stream_reader_still_has_its_buffer() -> None:
    """The internal itself: StreamReader._buffer, a bytearray (a rename fails here first)."""

    async def check() -> None:
        reader = asyncio.StreamReader()
        assert isinstance(reader._buffer, bytearray)

    asyncio.run(check())


def test_early_talker_is_refused_with_no_greeting_delay(spool_dir: Path) -> None:
    """With --greeting-delay 0 a client whose command is already there when the session
    starts gets 554 5.5.1. The server's loop is held for 0.5 s so that the bytes arrive
    before it accepts the connection."""
    with IntakeThread(spool_dir) as intake:
        assert intake.server is not None and intake.server.loop is not None
        intake.server.loop.call_soon_threadsafe(time.sleep, 0.5)
        time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as sock:
            sock.sendall(b"EHLO early.test\r\n")
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"554 5.5.1"), reply
        with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as polite:
            assert polite.recv(1024).startswith(b"220")  # one that waits is greeted


def test_the_socket_transport_reads_at_most_the_size_set() -> None:
    """With the read size set to 7, 100 bytes sent at once arrive in pieces of 7 or less."""
    received: list[bytes] = []

    class Collect(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.append(data)

    async def run() -> bool:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        transport, _protocol = await loop.create_connection(Collect, sock=ours)
        assert isinstance(getattr(transport, "max_size", None), int), \
            "asyncio's socket transport has no max_size any more"
        changed = compat_asyncio.set_read_size(transport, 7)
        theirs.sendall(b"x" * 100)
        for _ in range(200):
            if sum(map(len, received)) >= 100:
                break
            await asyncio.sleep(0.01)
        transport.close()
        theirs.close()
        return changed

    assert asyncio.run(run()) is True
    assert sum(map(len, received)) == 100
    assert max(map(len, received)) <= 7, "the transport no longer reads max_size at a time"


def test_a_transport_without_the_setting_is_left_alone() -> None:
    """An object without max_size (uvloop's transports, TLS) is not changed."""

    class Other:
        pass

    other = Other()
    assert compat_asyncio.set_read_size(other, 7) is False
    assert not hasattr(other, "max_size")
