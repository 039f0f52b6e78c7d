"""Not a benchmark: what a new connection costs at the floor, `python -m bench.floor`.

Runs relay-intake (`--processes 1`) and three servers that store nothing, each under
Postfix's smtp-source (4 KiB, 20 at once), one connection per message and then 20 sessions
reused, and prints each one's CPU per message (its processes' user + system time from
/proc) and the difference, the CPU a new connection costs:

- `aiosmtpd`: aiosmtpd's `SMTP` as it comes, DATA answered 250 (bench's bare server);
- `engine`: aiosmtpd's commands on relay-intake's engine (`intake.engine.Engine`: relay's
  constructor, no stream or task per connection), DATA read by aiosmtpd line by line;
- `protocol`: a bare `asyncio.Protocol` that answers every line and reads DATA up to the
  dot: the event loop's own cost of a connection, without streams, tasks or coroutines.

All on uvloop when it is installed (`--no-uvloop`: asyncio's loop). Rounds interleave the
servers (the order rotates), medians are printed at the end; docs/performance.md quotes a
run. `python -m bench.floor --serve MODE --port P` is one server. Writes only into a
scratch directory under --work-dir.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from bench import smtp_source
from bench.common import HOST, Context, Process, Sizes, free_port, median, wait_for_port
from bench.peers import RelayIntake, tree_cpu_seconds

MODES = ("aiosmtpd", "engine", "protocol")


class LineProtocol(asyncio.Protocol):
    """SMTP at its least: a reply to every line, DATA read up to the dot; keeps nothing."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's: a Transport
        self.transport.write(b"220 floor ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer, self.in_data = self.buffer[end + 5:], False
                self.transport.write(b"250 OK\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end].upper(), self.buffer[end + 2:]
            if line.startswith(b"DATA"):
                self.in_data, self.buffer = True, b"\r\n" + self.buffer
                self.transport.write(b"354 go ahead\r\n")
            elif line.startswith(b"QUIT"):
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            else:
                self.transport.write(b"250 OK\r\n")


class NullHandler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


async def serve(mode: str, port: int) -> None:
    from aiosmtpd.smtp import SMTP  # noqa: PLC0415 - only in the server process

    from intake.engine import Engine  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    handler = NullHandler()
    factory: Callable[[], asyncio.BaseProtocol]
    if mode == "protocol":
        factory = LineProtocol
    elif mode == "aiosmtpd":
        def factory() -> asyncio.BaseProtocol:
            return SMTP(handler, hostname="floor.bench", ident="floor", decode_data=False)
    else:
        def factory() -> asyncio.BaseProtocol:
            return Engine(handler, stream_limit=32 * 1024, command_size_limit=512,
                          hostname="floor.bench", ident="floor", decode_data=False, loop=loop)
    await loop.create_server(factory, HOST, port, backlog=4096)
    await asyncio.Event().wait()


class FloorServer:
    """One of MODES as a subprocess of its own."""

    def __init__(self, ctx: Context, mode: str) -> None:
        self.name = mode
        self.port = free_port()
        argv = [sys.executable, "-m", "bench.floor", "--serve", mode, "--port", str(self.port)]
        if ctx.uvloop:
            argv.append("--uvloop")
        self.process = Process(argv, ctx.scratch(f"floor-{mode}") / "server.log")
        try:
            wait_for_port(self.port, self.process)
        except BaseException:
            self.process.stop()  # a server that does not come up is not left running
            raise

    def stop(self) -> None:
        self.process.stop()


def cpu_per_message(start: Callable[[], Any], count: int, reuse: bool) -> float:
    """Milliseconds of the server's CPU per message for *count* messages."""
    server = start()
    try:
        time.sleep(0.3)  # past its start-up
        before = tree_cpu_seconds(server.process.pid)
        smtp_source.run(server.port, count, sessions=20, reuse=reuse)
        after = tree_cpu_seconds(server.process.pid)
    finally:
        server.stop()
    return 1000 * (after - before) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--messages", type=int, default=4000, help="per run (default 4000)")
    parser.add_argument("--work-dir", default="/var/tmp")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve:
        if arguments.uvloop:
            from bench.servers import use_uvloop  # noqa: PLC0415
            use_uvloop()
        asyncio.run(serve(arguments.serve, arguments.port))
        return 0
    if smtp_source.program() is None:
        print("smtp-source is not installed (apt-get install postfix)", file=sys.stderr)
        return 1
    ctx = Context(Sizes(), Path(arguments.work_dir), uvloop=not arguments.no_uvloop)
    starters: dict[str, Callable[[], Any]] = {
        "relay-intake": lambda: RelayIntake(ctx, "--processes", "1")}
    for mode in MODES:
        starters[mode] = functools.partial(FloorServer, ctx, mode)
    names = list(starters)
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    try:
        for round_number in range(arguments.runs):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                fresh = cpu_per_message(starters[name], arguments.messages, reuse=False)
                reused = cpu_per_message(starters[name], arguments.messages, reuse=True)
                found[name].append((fresh, reused))
                print(f"round {round_number + 1} {name}: {fresh:.3f} ms CPU per message one"
                      f" connection each, {reused:.3f} reused, {fresh - reused:.3f} per"
                      " connection", flush=True)
    finally:
        ctx.close()
    print("server: CPU ms per message, one connection each / reused / per connection"
          " (medians)")
    for name, runs in found.items():
        print(f"  {name}: {median([f for f, _ in runs]):.3f} / {median([r for _, r in runs]):.3f}"
              f" / {median([f - r for f, r in runs]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
