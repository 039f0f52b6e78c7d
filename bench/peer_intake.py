"""Benchmark 7, intake against the peers: relay-intake, E-MailRelay 2.6.1, Postfix, one client.

Every system gets the same load from Postfix's smtp-source (`bench.smtp_source`, 4 KiB
payload, no pipelining), in three shapes: one connection per message with 20 at once (what
cron jobs, applications and printers do), 20 sessions reused message after message, and a
single client sending one message after another on one connection. Each run starts the
system afresh on a fresh queue (`bench.peers`: relay-intake; E-MailRelay `--as-server`
when EMAILRELAY_BIN names its binary; a throwaway Postfix whose messages are held, when
Postfix is installed), counts what it stored afterwards (it must be every message), and
takes the CPU of its processes; with `--processes`, relay-intake is also run with
`--processes 1` beside its default. Rounds interleave the systems (the order rotates).
Also measured: the CPU a new connection costs each server (per message, one connection per
message minus reused), and the latency of one fsync of a new 4 KiB file on the spools' disk,
which bounds a single sequential client of a durable server. Writes only into scratch
directories.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import smtp_source
from bench.common import BenchError, Context, Row, median, script
from bench.peers import (
    EmailRelay,
    Postfix,
    RelayIntake,
    System,
    emailrelay_program,
    postfix_program,
)

NAME = "peers"
# relay-intake as deployed: loopback clients are exempt from the per-client limits, and 20
# sessions stay well under --max-connections (200).
RELAY_LIMITS: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shape:
    """One load shape: how many sessions, whether they are reused, how many messages."""

    key: str
    label: str
    sessions: int
    reuse: bool
    sequential: bool = False


SHAPES = (
    Shape("fresh", "one connection per message, 20 at once", 20, reuse=False),
    Shape("reused", "20 sessions reused", 20, reuse=True),
    Shape("single", "a single sequential client", 1, reuse=True, sequential=True),
)


def relay_has_processes() -> bool:
    done = subprocess.run([script("relay-intake"), "--help"], capture_output=True, text=True,
                          timeout=30, check=False)
    return "--processes" in done.stdout


def systems(ctx: Context) -> dict[str, Callable[[], System]]:
    """The systems this machine can run, by name, each a function that starts one."""
    found: dict[str, Callable[[], System]] = {
        "relay": lambda: RelayIntake(ctx, *RELAY_LIMITS)}
    if relay_has_processes():
        found["relay-1"] = lambda: RelayIntake(ctx, *RELAY_LIMITS, "--processes", "1",
                                               name="relay --processes 1")
    program = emailrelay_program()
    if program is not None:
        found["E-MailRelay"] = lambda: EmailRelay(ctx, program)
    else:
        ctx.notes.append("peers: EMAILRELAY_BIN is not set to E-MailRelay's binary; its rows"
                         " are not measured (docs/performance.md says how to build it)")
    if postfix_program() is not None:
        found["Postfix"] = lambda: Postfix(ctx)
    else:
        ctx.notes.append("peers: Postfix is not installed (apt-get install postfix); its rows"
                         " are not measured")
    return found


@dataclass
class Measured:
    rate: float
    cpu_ms: float  # the server's CPU per message


def measure(start: Callable[[], System], shape: Shape, count: int) -> Measured:
    """Start a system, send it *count* messages in *shape*, check it stored them all.

    The page cache is written back first (sync(2)): E-MailRelay never flushes, so the
    files of its run were still dirty when the next system started, and that system's
    first syncfs (relay's) or fsyncs wrote them out on its own time.
    """
    os.sync()
    system = start()
    try:
        cpu_before = system.cpu_seconds()
        sent = smtp_source.run(system.port, count, sessions=shape.sessions, reuse=shape.reuse)
        cpu_after = system.cpu_seconds()
        deadline = time.monotonic() + 10
        while (stored := system.stored()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        if stored != count:
            raise BenchError(f"{system.name} answered 250 to {count} messages but holds"
                             f" {stored}")
    finally:
        system.stop()
    return Measured(sent.rate, 1000 * (cpu_after - cpu_before) / count)


def fsync_latency_ms(ctx: Context, files: int = 200) -> float:
    """Median time to write a new 4 KiB file and fsync it, on the spools' disk."""
    directory = ctx.spool("fsync-probe")
    data = b"x" * 4096
    times = []
    for number in range(files):
        started = time.perf_counter()
        fd = os.open(directory / f"f{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - started)
    return 1000 * median(times)


def run(ctx: Context) -> list[Row]:
    if smtp_source.program() is None:
        return [Row("7 peers", "not measured: smtp-source is not installed (apt-get install"
                    " postfix)", None, None, "")]
    sizes = ctx.sizes
    found = systems(ctx)
    names = list(found)
    results: dict[tuple[str, str], list[Measured]] = {}
    fsyncs = [fsync_latency_ms(ctx)]
    for round_number in range(sizes.runs):
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for shape in SHAPES:
            count = sizes.sequential_messages if shape.sequential else sizes.peers_messages
            line = []
            for name in order:
                measured = measure(found[name], shape, count)
                results.setdefault((shape.key, name), []).append(measured)
                line.append(f"{name} {measured.rate:.0f}/s ({measured.cpu_ms:.2f} ms CPU/msg)")
            print(f"  peers round {round_number + 1}, {shape.label}: {', '.join(line)}",
                  flush=True)
        fsyncs.append(fsync_latency_ms(ctx))
    return rows(results, names, median(fsyncs))


def _ratio(results: dict[tuple[str, str], list[Measured]], shape: str, name: str,
           other: str) -> float:
    return median([a.rate / b.rate for a, b in zip(results[(shape, name)],
                                                    results[(shape, other)], strict=True)])


TARGETS = {("fresh", "E-MailRelay"): 0.6, ("fresh", "Postfix"): 1.5,
           ("reused", "E-MailRelay"): 0.6}


def rows(results: dict[tuple[str, str], list[Measured]], names: list[str],
         fsync_ms: float) -> list[Row]:
    found: list[Row] = []
    for shape in SHAPES:
        relay = median([m.rate for m in results[(shape.key, "relay")]])
        for other in ("E-MailRelay", "Postfix", "relay-1"):
            if other not in names:
                continue
            ratio = _ratio(results, shape.key, "relay", other)
            target = TARGETS.get((shape.key, other))
            label = "relay --processes 1" if other == "relay-1" else other
            note = "E-MailRelay does not fsync" if other == "E-MailRelay" else ""
            found.append(Row(
                "7 peers", f"intake, {shape.label} (baseline: {label})", relay,
                median([m.rate for m in results[(shape.key, other)]]), "msg/s", ratio,
                target=f">= {target}x" if target else "",
                met=None if target is None else ratio >= target, note=note))
    def per_connection(name: str) -> float:
        return median([fresh.cpu_ms - reused.cpu_ms for fresh, reused in zip(
            results[("fresh", name)], results[("reused", name)], strict=True)])

    relay_cost = per_connection("relay")
    for other in ("E-MailRelay", "Postfix"):
        if other in names:
            cost = per_connection(other)
            found.append(Row(
                "7 peers", f"CPU per new connection (one connection per message minus reused,"
                f" per message; baseline: {other})", relay_cost, cost, "ms",
                relay_cost / cost if cost > 0 else None, target="<= 0.3 ms",
                met=relay_cost <= 0.3))
    found.append(Row("7 peers", "fsync of a new 4 KiB file on the spools' disk (median)",
                     fsync_ms, None, "ms", note=f"one flush per message: at most"
                     f" {1000 / fsync_ms:,.0f} msg/s for a single sequential client"))
    return found
