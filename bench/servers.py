"""Bench's own SMTP servers, each run as a subprocess: `python -m bench.servers --port P ...`.

A bare aiosmtpd server (decode_data=False, hostname given) whose DATA handler answers 250
without storing anything. It is both the baseline of the durable-intake benchmark and the
sink that relay-deliver and the aiosmtplib baseline send to. Optionally it:

- prints progress lines `<count> <monotonic time>` to stdout (the 1st message, every
  --progress messages, and the --expect'th), which is how the harness times a drain;
- records each message's receipt time by its token (the Message-ID local part) and writes
  them as JSON to --record on SIGTERM (end-to-end latency).

Reads and writes nothing else; stores no message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from aiosmtpd.smtp import SMTP

from bench.common import HOST, token_of


class NullHandler:
    """Answers 250 to DATA and forgets the message (optionally noting when it came)."""

    def __init__(self, *, progress: int, expect: int, record: bool) -> None:
        self.count = 0
        self.progress = progress
        self.expect = expect
        self.record = record
        self.received: list[tuple[str | None, float]] = []

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        self.count += 1
        if self.record:
            self.received.append((token_of(envelope.content), now))
        count = self.count
        if self.progress and (count == 1 or count % self.progress == 0 or count == self.expect):
            sys.stdout.write(f"{count} {now:.6f}\n")
            sys.stdout.flush()
        return "250 OK"


async def serve(arguments: argparse.Namespace) -> NullHandler:
    handler = NullHandler(
        progress=arguments.progress, expect=arguments.expect, record=bool(arguments.record)
    )
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname="bench.sink",
            ident="bench sink",
            decode_data=False,
            data_size_limit=arguments.max_size,
        )

    server = await loop.create_server(factory, HOST, arguments.port, backlog=512)
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    server.close()
    return handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--progress", type=int, default=0, help="print every N messages")
    parser.add_argument("--expect", type=int, default=0, help="also print at this count")
    parser.add_argument("--record", help="write {token: receipt time} here on SIGTERM")
    parser.add_argument("--max-size", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if importable")
    arguments = parser.parse_args(argv)
    if arguments.uvloop:
        use_uvloop()
    handler = asyncio.run(serve(arguments))
    if arguments.record:
        with open(arguments.record, "w") as output:
            json.dump({"count": handler.count, "received": handler.received}, output)
    return 0


def use_uvloop() -> bool:
    """Install uvloop's event loop policy when uvloop is importable (the optional `fast` extra)."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


if __name__ == "__main__":
    sys.exit(main())
