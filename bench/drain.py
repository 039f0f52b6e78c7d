"""Benchmark 2, drain: `relay-deliver --once` on a full spool against aiosmtplib with no spool.

Each round, in alternating order:
- relay: a spool filled (untimed) with N 4 KiB messages by the spool library, then
  `relay-deliver --once --concurrency C` to bench's sink (a bare aiosmtpd server in its
  own process). It must exit 0 with the spool empty and the sink holding N messages.
- baseline: bench.sender, aiosmtplib `sendmail()` of the same messages over C reused
  connections, to a fresh sink of the same kind.
Figure: messages per second from the process's start to the sink's N-th receipt (so
relay's start-up scan counts); the sink's first-to-last rate is kept for benchmark 4.
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
from bench.fill import fill
from bench.harness import profiled, progress_time, run_sender, start_deliver, start_null_server

NAME = "drain"


@dataclass
class Drain:
    """One drain of *count* messages: rates by wall clock and at the sink, peak RSS."""

    count: int
    spawned: float
    first: float
    last: float
    peak_kib: int
    user_us: float = 0.0
    system_us: float = 0.0
    sink_us: float = 0.0

    def cpu(self) -> str:
        return (f"sender CPU {self.user_us:.0f} us user + {self.system_us:.0f} us sys per msg,"
                f" sink {self.sink_us:.0f} us")

    @property
    def rate(self) -> float:
        """From the sender's start (scan included) to the last receipt."""
        return self.count / (self.last - self.spawned)

    @property
    def sink_rate(self) -> float:
        """From the first receipt to the last one (forwarding only)."""
        return (self.count - 1) / (self.last - self.first) if self.last > self.first else 0.0


def relay_drain(ctx: Context, count: int, prefix: str) -> Drain:
    """Fill a spool with *count* messages, then time `relay-deliver --once` on it."""
    sizes = ctx.sizes
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.spool(NAME)
    profilers: list = []  # type: ignore[type-arg]
    try:
        fill(spool, count, sizes.message_size, prefix=prefix)
        with processes() as running:
            sink, port = start_null_server(ctx, logs, progress=max(1, count // 10), expect=count)
            running.append(sink)
            deliver = start_deliver(ctx, spool, port, logs, once=True,
                                    concurrency=sizes.concurrency)
            running.append(profiled(ctx, deliver, "deliver-once", profilers))
            code = deliver.wait(600)
            user, system = deliver.last_cpu  # sampled every 50 ms: the end may be missed
            for profiler in profilers:
                profiler.stop()
            if code != 0:
                raise BenchError(f"relay-deliver --once exited {code}; see {deliver.log_path}\n"
                                 f"{deliver.log_tail()}")
            last = progress_time(sink, count, 30)
            first = progress_time(sink, 1, 1)
            left = count_files(spool, ".envelope") + count_files(spool, ".content")
            if left:
                raise BenchError(f"relay-deliver --once exited 0 but left {left} files")
            sink_cpu = sum(sink.cpu_times())
            return Drain(count, deliver.started, first, last, deliver.peak_kib,
                         1e6 * user / count, 1e6 * system / count, 1e6 * sink_cpu / count)
    finally:
        remove_tree(logs)


def baseline_drain(ctx: Context, count: int, prefix: str) -> Drain:
    """aiosmtplib alone sending *count* messages over the same number of connections."""
    sizes = ctx.sizes
    logs = ctx.scratch(f"{NAME}-logs")
    try:
        with processes() as running:
            sink, port = start_null_server(ctx, logs, progress=max(1, count // 10), expect=count)
            running.append(sink)
            result = run_sender(ctx, port, count, logs, size=sizes.message_size,
                                concurrency=sizes.concurrency, prefix=prefix)
            last = progress_time(sink, count, 30)
            first = progress_time(sink, 1, 1)
            sink_cpu = sum(sink.cpu_times())
            return Drain(count, result["spawned"], first, last, int(result["hwm_kib"]),
                         1e6 * result["user"] / count, 1e6 * result["system"] / count,
                         1e6 * sink_cpu / count)
    finally:
        remove_tree(logs)


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    count = sizes.drain_messages
    relay_runs: list[Drain] = []
    baseline_runs: list[Drain] = []
    ratios: list[float] = []
    for round_number in range(sizes.runs):
        order = ("baseline", "relay") if round_number % 2 == 0 else ("relay", "baseline")
        drains = {}
        for kind in order:
            prefix = f"d{round_number}{kind[0]}"
            drains[kind] = (relay_drain(ctx, count, prefix) if kind == "relay"
                            else baseline_drain(ctx, count, prefix))
        relay_runs.append(drains["relay"])
        baseline_runs.append(drains["baseline"])
        ratios.append(drains["relay"].rate / drains["baseline"].rate)
        relay, baseline = drains["relay"], drains["baseline"]
        print(f"  drain round {round_number + 1}: ratio {ratios[-1]:.2f}\n"
              f"    relay    {relay.rate:5.0f}/s (first to last {relay.sink_rate:.0f}/s, peak"
              f" {relay.peak_kib / 1024:.0f} MiB), {relay.cpu()}\n"
              f"    baseline {baseline.rate:5.0f}/s (first to last {baseline.sink_rate:.0f}/s,"
              f" peak {baseline.peak_kib / 1024:.0f} MiB), {baseline.cpu()}", flush=True)
    ratio = median(ratios)
    sink_ratio = median([r.sink_rate / b.sink_rate for r, b in zip(relay_runs, baseline_runs,
                                                                    strict=True)])
    return [Row("2 drain", f"deliver --once, {count} x {sizes.message_size // 1024} KiB,"
                f" concurrency {sizes.concurrency}",
                median([run.rate for run in relay_runs]),
                median([run.rate for run in baseline_runs]), "msg/s", ratio,
                target=">= 0.7x", met=ratio >= 0.7,
                note=f"start to last receipt; first-to-last receipt ratio {sink_ratio:.2f}x")]
