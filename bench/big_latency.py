"""Benchmark 10, small mail beside a big one: latency of small messages while deliver sends 50 MB.

Each round starts bench's recording sink (receipt time per Message-ID token), a second,
bare sink for the big message (its own process, so that receiving 50 MB does not slow the
recording sink down), relay-intake and relay-deliver on one spool. The load generator
offers small messages at a fixed rate (100/s for 10 s) through intake; two seconds in, one
50 MB message is put straight into the spool with the spool library, routed by its
envelope (`X-MailRelay-ForwardToAddress`) to the big sink, and deliver sends it over one of
its connections while the others go on with the small ones. Latency = the recording sink's
receipt - intake's 250, per small message (both CLOCK_MONOTONIC of this machine); the
figure is the p99 of the small messages accepted between the big message's commit and its
receipt at the big sink.
The baseline, in the same round (alternating order), is the same run without the big
message (all small messages). The big sink is Postfix's smtp-sink when it is installed
(bench.postfix_sink): aiosmtpd would spend a CPU for seconds reading 50 MB line by line,
which on a 2-core machine would show up in the small messages' latency as well. No
target: the figures are reported. Writes only into scratch directories.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    RECIPIENT,
    SENDER,
    BenchError,
    Context,
    Row,
    median,
    message_bytes,
    percentile,
    processes,
    remove_tree,
)
from bench.harness import (
    progress_time,
    run_loadgen,
    start_null_server,
    start_postfix_sink,
    start_relay,
)
from bench.postfix_sink import smtp_sink
from spool import Envelope, Spool

NAME = "biglatency"
BIG_AFTER = 2.0  # seconds into the small messages' run when the big one is committed


def store_big(spool_dir: Path, port: int, size: int, token: str) -> float:
    """Commit the big message (routed to 127.0.0.1:*port*); the monotonic time of the commit."""
    envelope = Envelope(sender=SENDER, to_remote=(RECIPIENT,), client=HOST,
                        forward_to_address=f"{HOST}:{port}")
    Spool(str(spool_dir)).store(message_bytes(token, size), envelope)
    return time.monotonic()


def latency_round(ctx: Context, prefix: str, big: bool) -> tuple[list[float], float, float]:
    """(latencies in s of the small messages that count, the big message's window in s,
    the whole run's p99 in s). Without *big* every small message counts and the window is 0."""
    sizes = ctx.sizes
    count = round(sizes.e2e_rate * sizes.e2e_seconds)
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.spool(NAME)
    record = logs / "sink-record.json"
    try:
        with processes() as running:
            sink, sink_port = start_null_server(ctx, logs, progress=50, record=record,
                                                expect=count)
            running.append(sink)
            big_sink = big_port = None
            if big:
                if smtp_sink() is not None:
                    big_sink, big_port = start_postfix_sink(logs, progress=1, expect=1,
                                                            name="big-sink")
                else:
                    big_sink, big_port = start_null_server(ctx, logs, progress=1, expect=1,
                                                           name="big-sink")
                running.append(big_sink)
            port, _deliver = start_relay(ctx, spool, sink_port, logs, running)
            offered: dict[str, Any] = {}

            def offer() -> None:
                offered.update(run_loadgen(ctx, port, count, logs,
                                           sessions=sizes.intake_sessions,
                                           size=sizes.message_size, rate=sizes.e2e_rate,
                                           prefix=f"{prefix}s", record=True))

            loader = threading.Thread(target=offer)
            loader.start()
            committed = received_big = 0.0
            if big_port is not None and big_sink is not None:
                time.sleep(BIG_AFTER)
                committed = store_big(spool, big_port, sizes.big_message_size, f"{prefix}big")
            loader.join()
            if not offered:
                raise BenchError("the load generator gave no result")
            progress_time(sink, count, 120)
            if big_sink is not None:
                received_big = progress_time(big_sink, 1, 300)
            sink.stop()
        received = dict(json.loads(record.read_text())["received"])
        latencies: list[float] = []
        counted: list[float] = []
        for token, accepted in offered["records"]:
            if token not in received:
                raise BenchError(f"message {token} was accepted but never reached the sink")
            latencies.append(received[token] - accepted)
            if not big or committed <= accepted <= received_big:
                counted.append(received[token] - accepted)
        if not counted:
            raise BenchError("no small message was accepted while the big one was sent")
        return counted, received_big - committed, percentile(latencies, 0.99)
    finally:
        remove_tree(logs)


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    during: list[float] = []
    alone: list[float] = []
    maxima: list[float] = []
    for round_number in range(sizes.runs):
        order = ("baseline", "relay") if round_number % 2 == 0 else ("relay", "baseline")
        for kind in order:
            if kind == "relay":
                counted, window, whole = latency_round(ctx, f"L{round_number}r", True)
                during.append(percentile(counted, 0.99) * 1000)
                maxima.append(max(counted) * 1000)
                print(f"  biglatency round {round_number + 1}: {len(counted)} small messages"
                      f" during the {window:.1f} s of the big one: p50"
                      f" {percentile(counted, 0.5) * 1000:.1f} ms, p99 {during[-1]:.1f} ms,"
                      f" max {maxima[-1]:.1f} ms (whole run p99 {whole * 1000:.1f} ms)",
                      flush=True)
            else:
                counted, _window, _whole = latency_round(ctx, f"L{round_number}b", False)
                alone.append(percentile(counted, 0.99) * 1000)
                print(f"  biglatency round {round_number + 1}: no big message: p99"
                      f" {alone[-1]:.1f} ms", flush=True)
    mib = sizes.big_message_size // (1024 * 1024)
    p99, base = median(during), median(alone)
    return [
        Row("10 biglatency", f"small-message latency 250 -> sink at {sizes.e2e_rate:.0f} msg/s"
            f" while deliver sends one {mib} MB message, p99 (baseline: no big message)",
            p99, base, "ms", p99 / base if base else None),
        Row("10 biglatency", f"the same, the largest latency while the {mib} MB message is sent",
            median(maxima), None, "ms"),
    ]
