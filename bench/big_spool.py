"""Benchmark 4, big spool: relay-deliver started on 100,000 queued messages.

The big spool is filled once (untimed, spool library, two processes). Each round, in
alternating order, relay-deliver runs as deployed (not --once: watchdog on, default
concurrency), with a fresh sink:
- on the big spool: measured are the time from its start to the sink's first receipt, the
  forwarding rate over the next W messages (sink's first to W-th receipt) and its peak RSS
  (VmHWM); then it is stopped with SIGTERM. The spool shrinks by W each round (3 rounds of
  10,000 cover the first 30,000 of the 100,000), so every round starts on 70,000+ messages.
- the baseline, the 10,000 case: the same on a spool filled with 10,000 messages, all of
  them forwarded (first to last receipt).
Writes only into scratch directories (removed afterwards).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Context, Row, count_files, median, processes, remove_tree
from bench.fill import fill
from bench.harness import profiled, progress_time, start_deliver, start_null_server

NAME = "bigspool"


def drain_window(ctx: Context, spool: Path, window: int) -> tuple[float, float, int, int]:
    """Start relay-deliver on *spool*, time its first *window* deliveries, stop it.

    (time to first delivery s, rate over the window msg/s, peak RSS KiB, spool size)."""
    queued = count_files(spool, ".envelope")
    logs = ctx.scratch(f"{NAME}-logs")
    profilers: list = []  # type: ignore[type-arg]
    try:
        with processes() as running:
            sink, port = start_null_server(ctx, logs, progress=window, expect=window)
            running.append(sink)
            deliver = start_deliver(ctx, spool, port, logs)
            running.append(profiled(ctx, deliver, "bigspool-deliver", profilers))
            first = progress_time(sink, 1, 120)
            last = progress_time(sink, window, 600)
            deliver.check_alive()
            peak = max(deliver.peak_kib, deliver.memory_kib()["VmHWM"])
            for profiler in profilers:
                profiler.stop()
        return first - deliver.started, (window - 1) / (last - first), peak, queued
    finally:
        remove_tree(logs)


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    spool = ctx.spool(NAME)
    try:
        started = time.monotonic()
        fill(spool, sizes.big_spool_messages, sizes.message_size, prefix="big")
        print(f"  filled {sizes.big_spool_messages} messages in"
              f" {time.monotonic() - started:.0f} s (untimed)", flush=True)
        window = sizes.big_spool_window
        firsts: list[float] = []
        small_firsts: list[float] = []
        rates: list[float] = []
        small_rates: list[float] = []
        peaks: list[int] = []
        small_peaks: list[int] = []
        ratios: list[float] = []
        for round_number in range(sizes.runs):
            order = ("small", "big") if round_number % 2 == 0 else ("big", "small")
            for kind in order:
                if kind == "big":
                    first, rate, peak, queued = drain_window(ctx, spool, window)
                    firsts.append(first)
                    rates.append(rate)
                    peaks.append(peak)
                else:
                    small = ctx.spool(f"{NAME}-small")
                    fill(small, sizes.drain_messages, sizes.message_size, prefix=f"s{round_number}")
                    first, rate, peak, _queued = drain_window(ctx, small, sizes.drain_messages)
                    small_firsts.append(first)
                    small_rates.append(rate)
                    small_peaks.append(peak)
            ratios.append(rates[-1] / small_rates[-1])
            print(f"  bigspool round {round_number + 1}: {queued} queued, first delivery after"
                  f" {firsts[-1]:.2f} s, {rates[-1]:.0f}/s over {window}, peak"
                  f" {peaks[-1] / 1024:.0f} MiB; {sizes.drain_messages} case:"
                  f" {small_rates[-1]:.0f}/s, first after {small_firsts[-1]:.2f} s,"
                  f" ratio {ratios[-1]:.2f}", flush=True)
    finally:
        remove_tree(spool)  # the last benchmark to delete many files: see Context.spool
    n = sizes.big_spool_messages
    ratio = median(ratios)
    peak_mib = max(peaks) / 1024
    return [
        Row("4 bigspool", f"time to first delivery, {n:,} queued (baseline:"
            f" {sizes.drain_messages:,} queued)", median(firsts), median(small_firsts), "s",
            median([a / b for a, b in zip(firsts, small_firsts, strict=True)])),
        Row("4 bigspool", f"drain rate over 3 x {window:,} of {n:,} (baseline: the"
            f" {sizes.drain_messages:,} case)", median(rates), median(small_rates), "msg/s",
            ratio, target=">= 0.8x", met=ratio >= 0.8),
        Row("4 bigspool", f"deliver peak RSS, {n:,} queued (baseline: {sizes.drain_messages:,}"
            " queued)", peak_mib, median(small_peaks) / 1024, "MiB",
            peak_mib / (median(small_peaks) / 1024), target="< 150 MB",
            met=max(peaks) * 1024 < 150_000_000, note="max of rounds"),
    ]
