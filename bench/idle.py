"""Benchmark 6, idle footprint: RSS of relay-intake and relay-deliver at rest.

Each round starts relay-intake and relay-deliver on an empty spool (deliver pointed at
bench's sink) and, at the same time, bench's bare aiosmtpd server as the baseline; after a
few seconds of rest it reads VmRSS from /proc/<pid>/status. Target: < 60 MB each.
Writes only into scratch directories.
"""

from __future__ import annotations

import time

from bench.common import Context, Row, empty_directory, median, processes, remove_tree
from bench.harness import start_deliver, start_intake, start_null_server

NAME = "idle"
LIMIT_BYTES = 60_000_000


def idle_round(ctx: Context) -> tuple[int, int, int]:
    """(intake VmRSS, deliver VmRSS, bare aiosmtpd VmRSS), KiB, after the rest period."""
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.spool(NAME)
    try:
        with processes() as running:
            baseline, sink_port = start_null_server(ctx, logs)
            running.append(baseline)
            intake, _port = start_intake(ctx, spool, logs)
            running.append(intake)
            deliver = start_deliver(ctx, spool, sink_port, logs)
            running.append(deliver)
            time.sleep(ctx.sizes.idle_seconds)
            for process in running:
                process.check_alive()
            return (intake.memory_kib()["VmRSS"], deliver.memory_kib()["VmRSS"],
                    baseline.memory_kib()["VmRSS"])
    finally:
        empty_directory(spool)
        remove_tree(logs)


def run(ctx: Context) -> list[Row]:
    rounds = [idle_round(ctx) for _ in range(ctx.sizes.runs)]
    for number, (intake, deliver, baseline) in enumerate(rounds, 1):
        print(f"  idle round {number}: intake {intake / 1024:.1f} MiB, deliver"
              f" {deliver / 1024:.1f} MiB, bare aiosmtpd {baseline / 1024:.1f} MiB", flush=True)
    rows = []
    for index, name in ((0, "intake"), (1, "deliver")):
        value = median([r[index] for r in rounds])
        base = median([r[2] for r in rounds])
        rows.append(Row("6 idle", f"{name} RSS at rest (baseline: bare aiosmtpd server)",
                        value / 1024, base / 1024, "MiB",
                        median([r[index] / r[2] for r in rounds]), target="< 60 MB",
                        met=value * 1024 < LIMIT_BYTES))
    return rows
