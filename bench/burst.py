"""Many clients connecting at once: `python -m bench.burst --port P --connections 1000`.

Opens --connections TCP connections to 127.0.0.1:P as fast as it can (non-blocking
connects, one process, one selector) and notes, for each, when its 220 greeting arrived,
counted from the moment the first connect was issued. Every connection is held open until
all are greeted or --timeout passes (so the server must serve them all at the same time,
not one after another), then each says QUIT. Raises its own open-file limit to fit.
Prints one JSON object: connections, how many were greeted and how many refused, reset
or answered otherwise, the greeting times' p50, p99 and max, and every greeting time
(seconds, sorted). Touches no file.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import resource
import selectors
import socket
import sys
import time

from bench.common import HOST, percentile


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def burst(port: int, connections: int, timeout: float) -> dict[str, object]:
    raise_file_limit(connections + 64)
    selector = selectors.DefaultSelector()
    greeted: dict[int, float] = {}
    buffers: dict[int, bytes] = {}
    sockets: list[socket.socket] = []
    failed = 0
    started = time.monotonic()
    for number in range(connections):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex((HOST, port))
        if code not in (0, errno.EINPROGRESS):
            failed += 1
            sock.close()
            continue
        sockets.append(sock)
        selector.register(sock, selectors.EVENT_READ, number)
        buffers[number] = b""
    deadline = started + timeout
    while len(greeted) + failed < connections and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            client, number = key.fileobj, key.data
            assert isinstance(client, socket.socket)
            try:
                data = client.recv(4096)
            except OSError:
                data = b""
            if not data:
                failed += 1
                selector.unregister(client)
                continue
            buffers[number] += data
            if b"\n" in buffers[number]:
                if buffers[number].startswith(b"220"):
                    greeted[number] = time.monotonic() - started
                else:
                    failed += 1
                selector.unregister(client)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.setblocking(True)
            sock.settimeout(0.2)
            sock.sendall(b"QUIT\r\n")
        sock.close()
    times = sorted(greeted.values())
    return {
        "connections": connections,
        "greeted": len(times),
        "failed": failed,
        "p50": percentile(times, 0.5) if times else None,
        "p99": percentile(times, 0.99) if times else None,
        "max": times[-1] if times else None,
        "times": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=30.0)
    arguments = parser.parse_args(argv)
    result = burst(arguments.port, arguments.connections, arguments.timeout)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
