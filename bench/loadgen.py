"""A lean SMTP load generator, run as its own process: `python -m bench.loadgen --port P ...`.

Raw asyncio streams: each of --sessions connections says EHLO once, then sends
MAIL/RCPT/DATA per message (pipelined in one write when the server offers PIPELINING),
then QUIT. Closed loop by default (each session sends its next message as soon as the
last one is answered); with --rate, message i is not sent before start + i/rate.

Prints one JSON object to stdout: sent, refused, start/end (time.monotonic, which is
system-wide on Linux, so it compares with the sink's clock), elapsed, rate, whether it
pipelined, how far behind the schedule it fell, and its own CPU seconds. With --record it
writes [token, time of the 250] pairs to that file. Touches no other file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, field

from bench.common import HOST, RECIPIENT, SENDER, message_bytes


class SmtpFailure(Exception):
    """The server answered something the load generator did not expect."""


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    """One (possibly multi-line) SMTP reply: its code and its lines."""
    lines: list[bytes] = []
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpFailure("connection closed by the server")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), lines


@dataclass
class Totals:
    sent: int = 0
    refused: int = 0
    first_refusal: str = ""
    pipelined: bool = False
    lag_max: float = 0.0
    records: list[tuple[str, float]] = field(default_factory=list)


class Plan:
    """Hands out message numbers to the sessions, and says when each may be sent."""

    def __init__(self, count: int, rate: float, start: float) -> None:
        self.count = count
        self.rate = rate
        self.start = start
        self._next = 0

    def take(self) -> int | None:
        if self._next >= self.count:
            return None
        number = self._next
        self._next += 1
        return number

    def due(self, number: int) -> float:
        return self.start + number / self.rate if self.rate > 0 else self.start


async def session(
    port: int, plan: Plan, template: tuple[bytes, bytes], prefix: str, totals: Totals,
    record: bool,
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    try:
        code, _ = await read_reply(reader)
        if code != 220:
            raise SmtpFailure(f"greeting {code}")
        writer.write(b"EHLO bench.client\r\n")
        code, lines = await read_reply(reader)
        if code != 250:
            raise SmtpFailure(f"EHLO answered {code}")
        pipelining = any(line[4:].strip().upper() == b"PIPELINING" for line in lines)
        totals.pipelined = pipelining
        commands = (f"MAIL FROM:<{SENDER}>\r\n".encode(), f"RCPT TO:<{RECIPIENT}>\r\n".encode(),
                    b"DATA\r\n")
        before, after = template
        while (number := plan.take()) is not None:
            due = plan.due(number)
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            elif plan.rate > 0:
                totals.lag_max = max(totals.lag_max, now - due)
            token = f"{prefix}.{number}"
            if pipelining:
                writer.write(b"".join(commands))
                codes = [(await read_reply(reader))[0] for _ in commands]
            else:
                codes = []
                for command in commands:
                    writer.write(command)
                    codes.append((await read_reply(reader))[0])
                    if codes[-1] >= 400:
                        break
            if codes[:2] != [250, 250] or codes[2:] != [354]:
                totals.refused += 1
                totals.first_refusal = totals.first_refusal or f"{token}: {codes}"
                writer.write(b"RSET\r\n")
                await read_reply(reader)
                continue
            writer.write(before + token.encode() + after)
            code, lines = await read_reply(reader)
            if code != 250:
                totals.refused += 1
                totals.first_refusal = totals.first_refusal or (
                    f"{token}: {b''.join(lines).decode(errors='replace').strip()}")
                continue
            totals.sent += 1
            if record:
                totals.records.append((token, time.monotonic()))
        writer.write(b"QUIT\r\n")
        await writer.drain()
        await asyncio.wait_for(read_reply(reader), 10)
    finally:
        writer.close()


def split_template(size: int) -> tuple[bytes, bytes]:
    """The message (with the DATA terminator) cut around its token, so each send is a concat."""
    marker = "TOKEN0MARKER"
    whole = message_bytes(marker, size) + b".\r\n"
    before, _, after = whole.partition(marker.encode())
    return before, after


async def run(arguments: argparse.Namespace) -> dict[str, object]:
    template = split_template(arguments.size)
    totals = Totals()
    start = time.monotonic()
    plan = Plan(arguments.count, arguments.rate, start)
    tasks = [
        asyncio.create_task(
            session(arguments.port, plan, template, arguments.prefix, totals,
                    bool(arguments.record))
        )
        for _ in range(min(arguments.sessions, max(arguments.count, 1)))
    ]
    done, pending = await asyncio.wait(tasks, timeout=arguments.timeout)
    for task in pending:
        task.cancel()
    errors = [repr(task.exception()) for task in done if task.exception() is not None]
    end = time.monotonic()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if arguments.record:
        with open(arguments.record, "w") as output:
            json.dump(totals.records, output)
    return {
        "sent": totals.sent,
        "refused": totals.refused,
        "first_refusal": totals.first_refusal,
        "errors": errors[:3] + (["timed out"] if pending else []),
        "start": start,
        "end": end,
        "elapsed": end - start,
        "rate": totals.sent / (end - start) if end > start else 0.0,
        "pipelined": totals.pipelined,
        "lag_max": totals.lag_max,
        "cpu": usage.ru_utime + usage.ru_stime,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--count", type=int, required=True, help="messages in all")
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--rate", type=float, default=0.0, help="msg/s offered; 0: closed loop")
    parser.add_argument("--prefix", default="m", help="token prefix (unique per run)")
    parser.add_argument("--record", help="write [token, time of 250] pairs here")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if importable")
    arguments = parser.parse_args(argv)
    if arguments.uvloop:
        from bench.servers import use_uvloop  # noqa: PLC0415

        use_uvloop()
    result = asyncio.run(run(arguments))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if not result["errors"] and not result["refused"] else 1


if __name__ == "__main__":
    sys.exit(main())
