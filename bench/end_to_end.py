"""Benchmark 3, end to end: relay-intake and relay-deliver running, a recording sink downstream.

Each round starts bench's sink (it notes each message's receipt time by its Message-ID
token), relay-intake and relay-deliver (default concurrency) on one spool, then:
1. latency: the load generator offers messages at a fixed rate (100/s) for a few seconds
   and notes the time of each 250; latency = sink receipt - intake's 250, per message
   (both clocks are CLOCK_MONOTONIC of this machine);
2. sustained throughput: the load generator offers N messages closed loop (20 sessions);
   throughput = N / (first connect to the sink's last receipt), every message delivered.
   When Postfix's smtp-sink is installed, this part sends to it instead (deliver is
   restarted towards it): a C sink leaves the 2 vCPUs to relay (bench.postfix_sink).
Its baseline, in the same round (alternating order), is benchmark 1's figure measured
afresh: relay-intake alone, same N, same sessions. Writes only into scratch directories.
"""

from __future__ import annotations

import json

from bench.common import (
    BenchError,
    Context,
    Row,
    median,
    percentile,
    processes,
    remove_tree,
)
from bench.durable_intake import intake_rate, warm_up
from bench.harness import (
    profiled,
    progress_time,
    run_loadgen,
    start_deliver,
    start_null_server,
    start_postfix_sink,
    start_relay,
)
from bench.postfix_sink import smtp_sink

NAME = "e2e"


def end_to_end(ctx: Context, prefix: str) -> tuple[float, list[float]]:
    """One round with relay running: (sustained msg/s, latencies in seconds at the fixed rate)."""
    sizes = ctx.sizes
    latency_count = round(sizes.e2e_rate * sizes.e2e_seconds)
    count = sizes.e2e_messages
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.spool(NAME)
    record = logs / "sink-record.json"
    fast_sink = smtp_sink() is not None
    profilers: list = []  # type: ignore[type-arg]
    try:
        with processes() as running:
            sink, sink_port = start_null_server(
                ctx, logs, progress=50, record=record,
                expect=latency_count if fast_sink else latency_count + count)
            running.append(sink)
            port, deliver = start_relay(ctx, spool, sink_port, logs, running,
                                        profilers=profilers, profile_name="e2e")
            offered = run_loadgen(ctx, port, latency_count, logs, sessions=sizes.intake_sessions,
                                  size=sizes.message_size, rate=sizes.e2e_rate,
                                  prefix=f"{prefix}l", record=True)
            progress_time(sink, latency_count, 60)
            retired = []
            if fast_sink:
                # The sustained part sends to smtp-sink: deliver is restarted towards it
                # (the spool is empty again: every latency message has arrived).
                deliver.stop()
                sink.stop()
                retired += [deliver, sink]
                sink, sink_port = start_postfix_sink(logs, progress=500, expect=count)
                running.append(sink)
                running.append(profiled(ctx, start_deliver(ctx, spool, sink_port, logs,
                                                           name="deliver-2"),
                                        "e2e-deliver", profilers))
            loaded = run_loadgen(ctx, port, count, logs, sessions=sizes.intake_sessions,
                                 size=sizes.message_size, prefix=f"{prefix}t")
            last = progress_time(sink, count if fast_sink else latency_count + count, 120)
            for profiler in profilers:
                profiler.stop()
            for process in running:
                if process not in retired:
                    process.check_alive()
            sink.stop()
        received = {token: when for token, when in json.loads(record.read_text())["received"]}
        latencies = []
        for token, accepted in offered["records"]:
            if token not in received:
                raise BenchError(f"message {token} was accepted but never reached the sink")
            latencies.append(received[token] - accepted)
        if offered["lag_max"] > 0.5:
            ctx.notes.append(f"e2e: the load generator fell {offered['lag_max']:.2f} s behind"
                             " the fixed rate")
        accepted_in, delivered_in = loaded["end"] - loaded["start"], last - loaded["start"]
        print(f"    relay accepted the {count} in {accepted_in:.2f} s, the sink had them all"
              f" after {delivered_in:.2f} s", flush=True)
        return count / delivered_in, latencies
    finally:
        remove_tree(logs)


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    sustained: list[float] = []
    intake_alone: list[float] = []
    ratios: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    spread: list[str] = []
    warm_up(ctx)
    for round_number in range(sizes.runs):
        order = ("baseline", "relay") if round_number % 2 == 0 else ("relay", "baseline")
        for kind in order:
            if kind == "relay":
                rate, latencies = end_to_end(ctx, f"e{round_number}")
                sustained.append(rate)
                p50s.append(percentile(latencies, 0.50) * 1000)
                p99s.append(percentile(latencies, 0.99) * 1000)
                spread.append(", ".join(f"p{int(100 * f)} {percentile(latencies, f) * 1000:.1f}"
                                        for f in (0.9, 0.95)) +
                              f", max {max(latencies) * 1000:.1f} ms")
            else:
                intake_alone.append(intake_rate(ctx, "relay", sizes.e2e_messages,
                                                f"e{round_number}b"))
        ratios.append(sustained[-1] / intake_alone[-1])
        print(f"  e2e round {round_number + 1}: sustained {sustained[-1]:.0f}/s, intake alone"
              f" {intake_alone[-1]:.0f}/s, ratio {ratios[-1]:.2f}; at {sizes.e2e_rate:.0f}/s"
              f" p50 {p50s[-1]:.1f} ms p99 {p99s[-1]:.1f} ms ({spread[-1]})", flush=True)
    ratio = median(ratios)
    p99 = median(p99s)
    return [
        Row("3 e2e", f"sustained intake+deliver, {sizes.e2e_messages} msgs, sink"
            f" {'smtp-sink' if smtp_sink() else 'aiosmtpd'} (baseline: relay-intake alone)",
            median(sustained), median(intake_alone), "msg/s", ratio,
            target=">= 0.6x", met=ratio >= 0.6),
        Row("3 e2e", f"latency 250 -> sink at {sizes.e2e_rate:.0f} msg/s, p50",
            median(p50s), None, "ms"),
        Row("3 e2e", f"latency 250 -> sink at {sizes.e2e_rate:.0f} msg/s, p99",
            p99, None, "ms", target="< 50 ms", met=p99 < 50),
    ]
