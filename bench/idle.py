"""Benchmark 6, idle footprint: RSS of relay-intake and relay-deliver at rest.

Each round starts relay-intake (`--processes 1`: one SMTP process and its storage
process, as the figures before --processes were taken) and relay-deliver on an empty spool
(deliver pointed at bench's sink) and, at the same time, bench's bare aiosmtpd server as
the baseline; after a few seconds of rest it reads VmRSS from /proc/<pid>/status. Target:
< 60 MB each. It also starts relay-intake as deployed (a worker per CPU under a parent)
and reports the PSS of its processes summed (/proc/<pid>/smaps_rollup: pages the forked
workers share with the parent count once), since their RSS would count those for each.
Writes only into scratch directories.
"""

from __future__ import annotations

import time

from bench.common import Context, Row, median, memory_kib, process_tree, processes, remove_tree
from bench.harness import start_deliver, start_intake, start_null_server

NAME = "idle"
LIMIT_BYTES = 60_000_000


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (KiB): shared pages divided among the sharers."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def idle_round(ctx: Context) -> tuple[int, int, int, int, int, int, int]:
    """KiB after the rest period: (intake VmRSS, deliver VmRSS, bare aiosmtpd VmRSS), then
    how many processes intake and deliver each run (their helpers' RSS is included)."""
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.spool(NAME)
    try:
        with processes() as running:
            baseline, sink_port = start_null_server(ctx, logs)
            running.append(baseline)
            intake, _port = start_intake(ctx, spool, logs, "--processes", "1")
            running.append(intake)
            deployed, _port = start_intake(ctx, ctx.spool(NAME), logs, name="intake-default")
            running.append(deployed)
            deliver = start_deliver(ctx, spool, sink_port, logs)
            running.append(deliver)
            time.sleep(ctx.sizes.idle_seconds)
            for process in running:
                process.check_alive()
            intake_memory, deliver_memory = intake.memory_kib(), deliver.memory_kib()
            parts = [memory_kib(pid)["VmRSS"] / 1024 for pid in process_tree(intake.pid)]
            print("    intake's processes: " + " + ".join(f"{part:.1f}" for part in parts)
                  + " MiB", flush=True)
            members = process_tree(deployed.pid)
            deployed_pss = sum(pss_kib(pid) for pid in members)
            print(f"    relay-intake as deployed: {len(members)} processes, PSS"
                  f" {deployed_pss / 1024:.1f} MiB", flush=True)
            return (intake_memory["VmRSS"], deliver_memory["VmRSS"],
                    baseline.memory_kib()["VmRSS"], intake_memory["processes"],
                    deliver_memory["processes"], deployed_pss, len(members))
    finally:
        remove_tree(logs)


def run(ctx: Context) -> list[Row]:
    rounds = [idle_round(ctx) for _ in range(ctx.sizes.runs)]
    for number, (intake, deliver, baseline, intake_count, deliver_count, *_) in enumerate(
            rounds, 1):
        print(f"  idle round {number}: intake {intake / 1024:.1f} MiB ({intake_count}"
              f" processes), deliver {deliver / 1024:.1f} MiB ({deliver_count} processes),"
              f" bare aiosmtpd {baseline / 1024:.1f} MiB", flush=True)
    rows = []
    for index, name in ((0, "intake"), (1, "deliver")):
        value = median([r[index] for r in rounds])
        base = median([r[2] for r in rounds])
        count = rounds[0][3 + index]
        label = f"{name} (--processes 1)" if name == "intake" else name
        rows.append(Row("6 idle", f"{label} RSS at rest, {count}"
                        f" process{'es' if count > 1 else ''} summed (baseline: bare aiosmtpd"
                        " server)",
                        value / 1024, base / 1024, "MiB",
                        median([r[index] / r[2] for r in rounds]), target="< 60 MB",
                        met=value * 1024 < LIMIT_BYTES))
    pss = median([r[5] for r in rounds])
    rows.append(Row("6 idle", f"intake as deployed, {rounds[0][6]} processes (--processes"
                    " default), PSS summed (baseline: bare aiosmtpd server's RSS)",
                    pss / 1024, median([r[2] for r in rounds]) / 1024, "MiB",
                    median([r[5] / r[2] for r in rounds])))
    return rows
