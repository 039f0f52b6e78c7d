"""Benchmark 1, durable intake: relay-intake against a bare aiosmtpd server that stores nothing.

Each round runs the load generator (its own process; 20 sessions, EHLO once each, 4 KiB
messages) against both servers, in alternating order: relay-intake with its spool on the
real disk (fsync on, as deployed) and bench's bare aiosmtpd server whose DATA handler
answers 250 and forgets. Figure: accepted messages per second, first connect to last 250.
After each relay run every message must be in the spool as an `.envelope`.
Writes only into scratch directories (removed afterwards).
"""

from __future__ import annotations

from bench.common import BenchError, Context, Row, count_files, median, processes, remove_tree
from bench.harness import profiled, run_loadgen, start_intake, start_null_server

NAME = "intake"


def intake_rate(ctx: Context, server: str, count: int, prefix: str) -> float:
    """One closed-loop run of *count* messages against "relay" or "baseline"; messages/s."""
    sizes = ctx.sizes
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.scratch(f"{NAME}-spool")
    profilers: list = []  # type: ignore[type-arg]
    try:
        with processes() as running:
            if server == "relay":
                process, port = start_intake(ctx, spool, logs)
                running.append(profiled(ctx, process, "intake", profilers))
            else:
                process, port = start_null_server(ctx, logs, name="null-server")
                running.append(process)
            result = run_loadgen(ctx, port, count, logs, sessions=sizes.intake_sessions,
                                 size=sizes.message_size, prefix=prefix)
            for profiler in profilers:
                profiler.stop()
        if server == "relay":
            stored = count_files(spool, ".envelope")
            if stored != count:
                raise BenchError(f"relay-intake answered 250 to {count} messages but the spool"
                                 f" holds {stored} envelopes")
        return float(result["rate"])
    finally:
        remove_tree(spool)
        remove_tree(logs)


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    relay_rates: list[float] = []
    baseline_rates: list[float] = []
    ratios: list[float] = []
    for round_number in range(sizes.runs):
        order = ("baseline", "relay") if round_number % 2 == 0 else ("relay", "baseline")
        rates = {}
        for server in order:
            rates[server] = intake_rate(ctx, server, sizes.intake_messages,
                                        f"i{round_number}{server[0]}")
        relay_rates.append(rates["relay"])
        baseline_rates.append(rates["baseline"])
        ratios.append(rates["relay"] / rates["baseline"])
        print(f"  intake round {round_number + 1}: relay {rates['relay']:.0f}/s,"
              f" baseline {rates['baseline']:.0f}/s, ratio {ratios[-1]:.2f}", flush=True)
    ratio = median(ratios)
    row = Row("1 intake", f"durable intake, {sizes.intake_sessions} sessions, "
              f"{sizes.message_size // 1024} KiB, {sizes.intake_messages} msgs",
              median(relay_rates), median(baseline_rates), "msg/s", ratio,
              target=">= 0.9x", met=ratio >= 0.9)
    return [row]
