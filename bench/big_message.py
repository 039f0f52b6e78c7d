"""Benchmark 5, big message: one 50 MB message through relay-intake and relay-deliver.

Each round, in alternating order:
- relay: relay-intake and relay-deliver on one spool, bench's sink downstream; the load
  generator sends one 50 MB message; once the sink has it, the peak RSS (VmHWM) of intake
  and of deliver is read, and the time from the first connect to the sink's receipt.
- baselines: bench's bare aiosmtpd server receiving the same message (intake's baseline),
  and bench.sender (aiosmtplib, no spool) sending it to the sink (deliver's baseline).
No target: the figures are reported. Writes only into scratch directories.
"""

from __future__ import annotations

from bench.common import Context, Row, median, memory_kib, processes, remove_tree
from bench.harness import (
    profiled,
    progress_time,
    run_loadgen,
    run_sender,
    start_deliver,
    start_intake,
    start_null_server,
)

NAME = "bigmessage"
# relay-intake refuses messages over its --size; give it room for the big one.
INTAKE_FLAGS = ("--size", str(200 * 1024 * 1024))


def relay_round(ctx: Context, prefix: str) -> tuple[int, int, float]:
    """(intake peak KiB, deliver peak KiB, seconds from connect to the sink's receipt)."""
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.spool(NAME)
    profilers: list = []  # type: ignore[type-arg]
    try:
        with processes() as running:
            sink, sink_port = start_null_server(ctx, logs, progress=1, expect=1)
            running.append(sink)
            intake, port = start_intake(ctx, spool, logs, *INTAKE_FLAGS)
            running.append(profiled(ctx, intake, "bigmessage-intake", profilers))
            deliver = start_deliver(ctx, spool, sink_port, logs)
            running.append(profiled(ctx, deliver, "bigmessage-deliver", profilers))
            sent = run_loadgen(ctx, port, 1, logs, sessions=1, size=ctx.sizes.big_message_size,
                               prefix=prefix, timeout=300)
            received = progress_time(sink, 1, 300)
            intake_peak = intake.memory_kib()["VmHWM"]
            deliver_peak = max(deliver.peak_kib, deliver.memory_kib()["VmHWM"])
            for profiler in profilers:
                profiler.stop()
        return intake_peak, deliver_peak, received - sent["start"]
    finally:
        remove_tree(logs)


def baseline_round(ctx: Context, prefix: str) -> tuple[int, int, float]:
    """(aiosmtpd server peak KiB, aiosmtplib sender peak KiB, seconds of both legs)."""
    logs = ctx.scratch(f"{NAME}-logs")
    size = ctx.sizes.big_message_size
    try:
        with processes() as running:
            server, port = start_null_server(ctx, logs, progress=1, expect=1, name="null-server")
            running.append(server)
            sent = run_loadgen(ctx, port, 1, logs, sessions=1, size=size, prefix=prefix,
                               timeout=300)
            received = progress_time(server, 1, 300)
            server_peak = memory_kib(server.pid)["VmHWM"]
            sink, sink_port = start_null_server(ctx, logs, progress=1, expect=1)
            running.append(sink)
            result = run_sender(ctx, sink_port, 1, logs, size=size, concurrency=1,
                                prefix=prefix)
            forwarded = progress_time(sink, 1, 300)
        return (server_peak, int(result["hwm_kib"]),
                (received - sent["start"]) + (forwarded - result["start"]))
    finally:
        remove_tree(logs)


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    relay: list[tuple[int, int, float]] = []
    baseline: list[tuple[int, int, float]] = []
    for round_number in range(sizes.runs):
        order = ("baseline", "relay") if round_number % 2 == 0 else ("relay", "baseline")
        for kind in order:
            if kind == "relay":
                relay.append(relay_round(ctx, f"g{round_number}r"))
            else:
                baseline.append(baseline_round(ctx, f"g{round_number}b"))
        print(f"  bigmessage round {round_number + 1}: intake peak {relay[-1][0] / 1024:.0f} MiB"
              f" (aiosmtpd {baseline[-1][0] / 1024:.0f}), deliver peak"
              f" {relay[-1][1] / 1024:.0f} MiB (aiosmtplib {baseline[-1][1] / 1024:.0f}),"
              f" {relay[-1][2]:.1f} s through relay ({baseline[-1][2]:.1f} s both legs bare)",
              flush=True)
    mib = sizes.big_message_size // (1024 * 1024)

    def figure(index: int) -> tuple[float, float, float]:
        ratio = median([r[index] / b[index] for r, b in zip(relay, baseline, strict=True)])
        scale = 1024 if index < 2 else 1
        return (median([r[index] for r in relay]) / scale,
                median([b[index] for b in baseline]) / scale, ratio)

    rows = []
    for index, text, unit in (
        (0, f"intake peak RSS (its processes summed), one {mib} MB message (baseline: bare"
            " aiosmtpd)", "MiB"),
        (1, f"deliver peak RSS, one {mib} MB message (baseline: aiosmtplib alone)", "MiB"),
        (2, f"time for one {mib} MB message, connect to sink (baseline: both legs bare)", "s"),
    ):
        value, base, ratio = figure(index)
        rows.append(Row("5 bigmessage", text, value, base, unit, ratio))
    return rows
