"""A slowloris of 1,000 connections against relay-intake, and what a local client sees meanwhile.

    .venv/bin/python -m bench.slowloris [--connections 1000] [--seconds 60] [--interval 5]

Starts the real `relay-intake` (its console script) on 127.0.0.1 with the default limits and
`--exempt-networks 127.0.0.1` (so that the attacking 127.x addresses count as the untrusted
internet while 127.0.0.1 stays local), a scratch spool, and then:

- the attack: `--connections` connections from 50 loopback addresses spread over 25 /24
  networks (so the per-address and per-network limits alone do not stop it), opened 50 at
  a time, each sending one byte of an EHLO line every `--interval` seconds;
- the probe: every 2 s a client on 127.0.0.1 connects, notes how long the greeting took,
  sends one message and notes the reply; and a fresh untrusted client (127.250.0.1) is
  tried at the same moments.

Prints one line per probe and a summary, checks that every probed message is in the spool,
and stops relay-intake. Bounded in time and count; loopback only. Not part of `make test`
(docs/reliability.md quotes a run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import free_port

MESSAGE = b"Subject: probe\r\n\r\nsent during the slowloris\r\n.\r\n"


async def reply(reader: asyncio.StreamReader) -> bytes:
    """One whole SMTP reply (its last line)."""
    while True:
        line = await reader.readline()
        if not line or line[3:4] != b"-":
            return line


async def attacker(port: int, source: str, stop: asyncio.Event, interval: float,
                   counts: dict[str, int]) -> None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 30)
        greeting = await asyncio.wait_for(reply(reader), 30)
    except (OSError, TimeoutError):
        counts["failed"] += 1
        return
    if not greeting.startswith(b"220"):
        counts["refused"] += 1
        writer.close()
        return
    counts["held"] += 1
    line = b"EHLO slowloris.example\r\n"
    position = 0
    try:
        while not stop.is_set():
            writer.write(line[position % len(line):][:1])
            position += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if reader.at_eof():
                counts["cut"] += 1
                return
    except OSError:
        counts["cut"] += 1
    finally:
        writer.close()


async def probe(port: int, source: str) -> tuple[float, str]:
    """Connect, time the greeting, send one message; (seconds to greeting, last reply)."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10)
        greeting = await asyncio.wait_for(reply(reader), 10)
    except (OSError, TimeoutError) as error:
        return time.monotonic() - started, f"no greeting: {error!r}"
    greeted = time.monotonic() - started
    result = greeting
    if greeting.startswith(b"220"):
        for command in (b"EHLO probe.test", b"MAIL FROM:<probe@example.org>",
                        b"RCPT TO:<someone@example.com>", b"DATA"):
            writer.write(command + b"\r\n")
            result = await asyncio.wait_for(reply(reader), 10)
        writer.write(MESSAGE)
        result = await asyncio.wait_for(reply(reader), 10)
        writer.write(b"QUIT\r\n")
    writer.close()
    return greeted, result.decode(errors="replace").strip()


async def attack(port: int, connections: int, seconds: float, interval: float) -> int:
    sources = [f"127.{1 + n % 25}.{n // 25}.{1 + n % 7}" for n in range(50)]
    counts = {"held": 0, "refused": 0, "failed": 0, "cut": 0}
    stop = asyncio.Event()
    tasks = []
    for batch in range(0, connections, 50):
        tasks += [asyncio.create_task(attacker(port, sources[n % len(sources)], stop,
                                               interval, counts))
                  for n in range(batch, min(batch + 50, connections))]
        await asyncio.sleep(0.1)
    print(f"attack: {connections} connections opened from {len(sources)} addresses in 25 /24s")
    stored = 0
    greetings = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        greeted, result = await probe(port, "127.0.0.1")
        _, outsider = await probe(port, "127.250.0.1")
        greetings.append(greeted)
        stored += result.startswith("250")
        print(f"t={time.monotonic() - started:5.1f}s held={counts['held']} "
              f"refused={counts['refused']} probe 127.0.0.1: greeting {greeted * 1000:.1f} ms, "
              f"{result!r}; untrusted newcomer: {outsider[:40]!r}")
        await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*tasks)
    print(f"summary: {counts}; probes {len(greetings)}, stored {stored}; greeting ms "
          f"median {statistics.median(greetings) * 1000:.1f}, max {max(greetings) * 1000:.1f}")
    return stored if stored == len(greetings) else -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slowloris-"))
    spool = work / "spool"
    spool.mkdir(mode=0o700)
    port = free_port()
    intake_bin = shutil.which("relay-intake", path=os.path.dirname(sys.executable))
    assert intake_bin, "relay-intake is not installed next to this Python"
    log = (work / "intake.log").open("w")
    server = subprocess.Popen([intake_bin, "--spool-dir", str(spool), "--port", str(port),
                               "--domain", "intake.test", "--exempt-networks", "127.0.0.1"],
                              stderr=log)
    try:
        time.sleep(1.5)
        stored = asyncio.run(attack(port, args.connections, args.seconds, args.interval))
        on_disk = len(list(spool.glob("*.envelope")))
        print(f"spool: {on_disk} messages stored (probes answered 250: {stored})")
        return 0 if stored >= 0 and on_disk == stored else 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
