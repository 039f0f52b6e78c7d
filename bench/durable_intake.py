"""Benchmark 1, durable intake: relay-intake against a bare aiosmtpd server that stores nothing.

Each round runs the load generator (its own process; 20 sessions, EHLO once each, 4 KiB
messages) against both servers, in alternating order: relay-intake with its spool on the
real disk (fsync on, as deployed) and bench's bare aiosmtpd server whose DATA handler
answers 250 and forgets. Figure: accepted messages per second, first connect to last 250.
After each relay run every message must be in the spool as an `.envelope`.
Writes only into scratch directories (removed afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.common import (
    BenchError,
    Context,
    Row,
    count_files,
    median,
    processes,
    remove_tree,
)
from bench.harness import Profiler, profiled, run_loadgen, start_intake, start_null_server

NAME = "intake"


@dataclass
class IntakeRun:
    """One closed-loop run: accepted msg/s, and the server's CPU per message (microseconds)."""

    rate: float
    user_us: float
    system_us: float
    loadgen_us: float
    pipelined: bool

    def cpu(self) -> str:
        return (f"server CPU {self.user_us:.0f} us user + {self.system_us:.0f} us sys per msg,"
                f" load generator {self.loadgen_us:.0f} us"
                f"{', pipelined' if self.pipelined else ''}")


def intake_run(ctx: Context, server: str, count: int, prefix: str) -> IntakeRun:
    """One closed-loop run of *count* messages against "relay" or "baseline"."""
    sizes = ctx.sizes
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.spool(NAME)
    profilers: list[Profiler] = []
    with processes() as running:
        if server == "relay":
            process, port = start_intake(ctx, spool, logs)
            running.append(profiled(ctx, process, "intake", profilers))
        else:
            process, port = start_null_server(ctx, logs, name="null-server")
            running.append(process)
        user, system = process.cpu_times()
        result = run_loadgen(ctx, port, count, logs, sessions=sizes.intake_sessions,
                             size=sizes.message_size, prefix=prefix)
        user_after, system_after = process.cpu_times()
        for profiler in profilers:
            profiler.stop()
    if server == "relay":
        stored = count_files(spool, ".envelope")
        if stored != count:
            raise BenchError(f"relay-intake answered 250 to {count} messages but the spool"
                             f" holds {stored} envelopes")
    remove_tree(logs)
    return IntakeRun(float(result["rate"]), 1e6 * (user_after - user) / count,
                     1e6 * (system_after - system) / count, 1e6 * result["cpu"] / count,
                     bool(result["pipelined"]))


def intake_rate(ctx: Context, server: str, count: int, prefix: str) -> float:
    """Accepted messages per second of one closed-loop run."""
    return intake_run(ctx, server, count, prefix).rate


def warm_up(ctx: Context) -> None:
    """One untimed run of each server: the first run after a pause pays kernel warm-up."""
    if ctx.sizes.warmup_messages:
        for server in ("relay", "baseline"):
            intake_run(ctx, server, ctx.sizes.warmup_messages, f"w{server[0]}")


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    relay_rates: list[float] = []
    baseline_rates: list[float] = []
    ratios: list[float] = []
    warm_up(ctx)
    for round_number in range(sizes.runs):
        order = ("baseline", "relay") if round_number % 2 == 0 else ("relay", "baseline")
        runs = {}
        for server in order:
            runs[server] = intake_run(ctx, server, sizes.intake_messages,
                                      f"i{round_number}{server[0]}")
        relay_rates.append(runs["relay"].rate)
        baseline_rates.append(runs["baseline"].rate)
        ratios.append(runs["relay"].rate / runs["baseline"].rate)
        print(f"  intake round {round_number + 1}: ratio {ratios[-1]:.2f}\n"
              f"    relay    {runs['relay'].rate:5.0f}/s, {runs['relay'].cpu()}\n"
              f"    baseline {runs['baseline'].rate:5.0f}/s, {runs['baseline'].cpu()}", flush=True)
    ratio = median(ratios)
    row = Row("1 intake", f"durable intake, {sizes.intake_sessions} sessions, "
              f"{sizes.message_size // 1024} KiB, {sizes.intake_messages} msgs",
              median(relay_rates), median(baseline_rates), "msg/s", ratio,
              target=">= 0.9x", met=ratio >= 0.9)
    return [row]
