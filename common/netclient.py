"""The client side of E-MailRelay's `net:` filter and verifier protocol.

One request is one line sent (terminated by a newline), one line received. Connections go
to `HOST:PORT` or to a unix socket (`/path`), and are kept open from one request to the
next, as E-MailRelay keeps its own; each request takes an idle connection or opens a new
one, so that sessions running at once never share a half-finished exchange. A connection
that fails in any way is closed and the request raises (OSError, TimeoutError or
ValueError). Reads and writes the socket only.
"""

from __future__ import annotations

import asyncio
import contextlib

_MAX_LINE = 64 * 1024
_MAX_IDLE = 8


def parse_address(text: str) -> tuple[str, int] | str:
    """`HOST:PORT` (IPv6 in brackets or as the text before the last colon) or `/unix/path`."""
    if text.startswith("/"):
        return text
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT or /unix/socket, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class LineClient:
    """Line requests to one address, over connections that are kept for reuse."""

    def __init__(self, address: str, connect_timeout: float = 10.0) -> None:
        self.address = parse_address(address)
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []

    async def _open(self) -> _Connection:
        if isinstance(self.address, str):
            opening = asyncio.open_unix_connection(self.address, limit=_MAX_LINE)
        else:
            opening = asyncio.open_connection(*self.address, limit=_MAX_LINE)
        reader, writer = await asyncio.wait_for(opening, self.connect_timeout)
        return _Connection(reader, writer)

    async def request(self, line: str, timeout: float) -> str:
        """Send *line*, return the answer line (without its line ending)."""
        if "\n" in line or "\r" in line:
            raise ValueError("a request line cannot hold a line break")
        reused = bool(self._idle)
        connection = self._idle.pop() if reused else await self._open()
        try:
            return await self._exchange(connection, line, timeout)
        except TimeoutError:
            raise
        except (OSError, ValueError):
            connection.close()
            if not reused:
                raise
        # A kept connection the server closed meanwhile: once more on a fresh one.
        connection = await self._open()
        return await self._exchange(connection, line, timeout)

    async def _exchange(self, connection: _Connection, line: str, timeout: float) -> str:
        try:
            connection.writer.write(line.encode("utf-8", "surrogateescape") + b"\n")
            await connection.writer.drain()
            answer = await asyncio.wait_for(connection.reader.readuntil(b"\n"), timeout)
        except asyncio.IncompleteReadError:
            connection.close()
            raise ConnectionResetError("the server closed the connection") from None
        except asyncio.LimitOverrunError:
            connection.close()
            raise ValueError("the server's answer is too long") from None
        except BaseException:
            connection.close()
            raise
        if len(self._idle) < _MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.close()
        return answer.decode("utf-8", "replace").rstrip("\n").rstrip("\r")

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
