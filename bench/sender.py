"""The drain baseline, run as its own process: `python -m bench.sender --port P --count N ...`.

What relay-deliver's forwarding costs with no spool at all: aiosmtplib `sendmail()` of the
same messages (the same bytes a spooled message carries) over --concurrency connections,
each opened once and reused for every message. Messages are built in memory.

Prints one JSON object to stdout: sent, start/end (time.monotonic), elapsed, CPU seconds
and the peak RSS (VmHWM) of this process. Touches no file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time

import aiosmtplib

from bench.common import HOST, RECIPIENT, SENDER, memory_kib, message_bytes


async def connection(port: int, messages: list[bytes], prefix: str, size: int,
                     numbers: asyncio.Queue[int]) -> int:
    client = aiosmtplib.SMTP(hostname=HOST, port=port, local_hostname="bench.sender",
                             timeout=60, start_tls=False)
    await client.connect()
    sent = 0
    try:
        while True:
            try:
                number = numbers.get_nowait()
            except asyncio.QueueEmpty:
                break
            content = messages[number] if messages else message_bytes(f"{prefix}.{number}", size)
            await client.sendmail(SENDER, [RECIPIENT], content)
            sent += 1
    finally:
        await client.quit()
    return sent


async def run(arguments: argparse.Namespace) -> dict[str, object]:
    # Small messages are built beforehand (a spooled message is bytes on disk already);
    # a big one is built when sent, so that only one copy is alive at a time.
    prebuilt = arguments.size <= 1 << 20
    messages = (
        [message_bytes(f"{arguments.prefix}.{n}", arguments.size) for n in range(arguments.count)]
        if prebuilt else []
    )
    numbers: asyncio.Queue[int] = asyncio.Queue()
    for number in range(arguments.count):
        numbers.put_nowait(number)
    start = time.monotonic()
    counts = await asyncio.gather(*(
        connection(arguments.port, messages, arguments.prefix, arguments.size, numbers)
        for _ in range(min(arguments.concurrency, arguments.count))
    ))
    end = time.monotonic()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "sent": sum(counts),
        "start": start,
        "end": end,
        "elapsed": end - start,
        "cpu": usage.ru_utime + usage.ru_stime,
        "user": usage.ru_utime,
        "system": usage.ru_stime,
        "hwm_kib": memory_kib(os.getpid())["VmHWM"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sender", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--prefix", default="b")
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if importable")
    arguments = parser.parse_args(argv)
    if arguments.uvloop:
        from bench.servers import use_uvloop  # noqa: PLC0415

        use_uvloop()
    result = asyncio.run(run(arguments))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["sent"] == arguments.count else 1


if __name__ == "__main__":
    sys.exit(main())
