"""Benchmark 9, forwarding against the peers: drain, end to end, latency (relay and the peers).

Each round, for every system this machine can run (`bench.peers`), in an order that
rotates from round to round:

1. drain: N queued 4 KiB messages forwarded to Postfix's smtp-sink (`bench.postfix_sink`);
   msg/s from the start of forwarding to the sink's N-th receipt. relay: a spool filled
   by the spool library, then `relay-deliver --once --concurrency 4`. E-MailRelay: the
   same spool (it reads relay's spool format), then `emailrelay --as-client`. Postfix: the
   messages sent in by smtp-source and held, then released (`postsuper -H ALL`,
   `postqueue -f`) with `relayhost` at the sink.
2. end to end, sustained: smtp-source sends N messages over 20 reused sessions while the
   system forwards to smtp-sink; msg/s from smtp-source's start to the sink's N-th
   receipt. relay: relay-intake and relay-deliver on one spool; E-MailRelay:
   `--as-server --forward-on-disconnect --poll 1`; Postfix as configured by default.
3. latency: bench's load generator offers 100 msg/s for 10 s; bench's recording sink
   notes each message's arrival by its Message-ID; latency = arrival - the 250 the client
   saw; p50 and p99.

E-MailRelay forwards one message at a time, so its drain and end-to-end counts are capped
(`PEER_FORWARD_CAP`) to keep a round short; its rate is a rate all the same. Writes only
into scratch directories.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from bench import smtp_source
from bench.common import BenchError, Context, Process, Row, median, percentile, processes
from bench.fill import fill
from bench.harness import (
    progress_time,
    run_loadgen,
    start_deliver,
    start_null_server,
    start_postfix_sink,
    start_relay,
)
from bench.peer_intake import RELAY_LIMITS
from bench.peers import EmailRelay, Postfix, emailrelay_program, postfix_program
from bench.postfix_sink import smtp_sink

NAME = "forward"
PEER_FORWARD_CAP = 500  # E-MailRelay's drain and end-to-end counts


def relay_drain(ctx: Context, count: int) -> float:
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.spool(f"{NAME}-relay")
    fill(spool, count, ctx.sizes.message_size, prefix="fr")
    with processes() as running:
        sink, port = start_postfix_sink(logs, progress=max(1, count // 10), expect=count)
        running.append(sink)
        deliver = start_deliver(ctx, spool, port, logs, once=True,
                                concurrency=ctx.sizes.concurrency)
        running.append(deliver)
        if deliver.wait(600) != 0:
            raise BenchError(f"relay-deliver --once failed; see {deliver.log_path}")
        return count / (progress_time(sink, count, 60) - deliver.started)


def emailrelay_drain(ctx: Context, program: str, count: int) -> float:
    logs = ctx.scratch(f"{NAME}-logs")
    spool = ctx.spool(f"{NAME}-emailrelay")
    fill(spool, count, ctx.sizes.message_size, prefix="fe")
    with processes() as running:
        sink, port = start_postfix_sink(logs, progress=max(1, count // 10), expect=count)
        running.append(sink)
        client = Process([program, "--as-client", f"127.0.0.1:{port}", "--spool-dir",
                          str(spool), "--log-file", str(logs / "emailrelay.log")],
                         logs / "emailrelay.stderr")
        running.append(client)
        if client.wait(900) != 0:
            raise BenchError(f"emailrelay --as-client failed; see {client.log_path}")
        return count / (progress_time(sink, count, 60) - client.started)


def postfix_drain(ctx: Context, count: int) -> float:
    logs = ctx.scratch(f"{NAME}-logs")
    postfix = Postfix(ctx)
    try:
        smtp_source.run(postfix.port, count, sessions=20, reuse=True)
        with processes() as running:
            sink, port = start_postfix_sink(logs, progress=max(1, count // 10), expect=count)
            running.append(sink)
            started = postfix.release_to(port)
            return count / (progress_time(sink, count, 600) - started)
    finally:
        postfix.stop()


def start_forwarder(ctx: Context, system: str, sink_port: int, logs: Path,
                    running: list[Process]) -> tuple[int, Callable[[], None]]:
    """*system* taking mail on a port and forwarding it to *sink_port*: the port and what
    stops it (relay's processes are appended to *running* and stop with it instead)."""
    if system == "relay":
        port, _deliver = start_relay(ctx, ctx.spool(f"{NAME}-relay"), sink_port, logs, running,
                                     *RELAY_LIMITS)
        return port, lambda: None
    if system == "E-MailRelay":
        program = emailrelay_program()
        assert program is not None
        emailrelay = EmailRelay(ctx, program, forward_port=sink_port)
        return emailrelay.port, emailrelay.stop
    postfix = Postfix(ctx, relay_port=sink_port)
    return postfix.port, postfix.stop


def sustained(ctx: Context, system: str, count: int) -> float:
    """Closed loop through intake and forwarding to smtp-sink: msg/s to the last receipt."""
    logs = ctx.scratch(f"{NAME}-logs")
    with processes() as running:
        sink, sink_port = start_postfix_sink(logs, progress=max(1, count // 10), expect=count)
        running.append(sink)
        port, stop = start_forwarder(ctx, system, sink_port, logs, running)
        try:
            started = time.monotonic()
            smtp_source.run(port, count, sessions=20, reuse=True)
            return count / (progress_time(sink, count, 900) - started)
        finally:
            stop()


def latency(ctx: Context, system: str) -> list[float]:
    """Latencies (s) from the 250 to the recording sink's receipt, at the fixed rate."""
    sizes = ctx.sizes
    count = round(sizes.e2e_rate * sizes.e2e_seconds)
    logs = ctx.scratch(f"{NAME}-logs")
    record = logs / "sink-record.json"
    with processes() as running:
        sink, sink_port = start_null_server(ctx, logs, progress=50, record=record,
                                            expect=count)
        running.append(sink)
        port, stop = start_forwarder(ctx, system, sink_port, logs, running)
        try:
            offered = run_loadgen(ctx, port, count, logs, sessions=sizes.intake_sessions,
                                  size=sizes.message_size, rate=sizes.e2e_rate,
                                  prefix=f"l{system[0]}", record=True)
            progress_time(sink, count, 600)
        finally:
            stop()
        sink.stop()
    received = dict(json.loads(record.read_text())["received"])
    missing = [token for token, _ in offered["records"] if token not in received]
    if missing:
        raise BenchError(f"{system}: {len(missing)} accepted messages never reached the sink")
    return [received[token] - accepted for token, accepted in offered["records"]]


def run(ctx: Context) -> list[Row]:
    if smtp_source.program() is None or smtp_sink() is None:
        return [Row("9 forward", "not measured: Postfix's smtp-source and smtp-sink are not"
                    " installed (apt-get install postfix)", None, None, "")]
    sizes = ctx.sizes
    program = emailrelay_program()
    names = ["relay"] + (["E-MailRelay"] if program else []) + (
        ["Postfix"] if postfix_program() else [])
    drains: dict[str, list[float]] = {name: [] for name in names}
    ends: dict[str, list[float]] = {name: [] for name in names}
    p50s: dict[str, list[float]] = {name: [] for name in names}
    p99s: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(sizes.runs):
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for name in order:
            cap = PEER_FORWARD_CAP if name == "E-MailRelay" else None
            drain_count = min(sizes.drain_messages, cap or sizes.drain_messages)
            end_count = min(sizes.e2e_messages, cap or sizes.e2e_messages)
            if name == "relay":
                drains[name].append(relay_drain(ctx, drain_count))
            elif name == "E-MailRelay":
                assert program is not None
                drains[name].append(emailrelay_drain(ctx, program, drain_count))
            else:
                drains[name].append(postfix_drain(ctx, drain_count))
            ends[name].append(sustained(ctx, name, end_count))
            times = latency(ctx, name)
            p50s[name].append(1000 * percentile(times, 0.5))
            p99s[name].append(1000 * percentile(times, 0.99))
            print(f"  forward round {round_number + 1}, {name}: drain {drains[name][-1]:.0f}/s,"
                  f" end to end {ends[name][-1]:.0f}/s, at {sizes.e2e_rate:.0f}/s p50"
                  f" {p50s[name][-1]:.1f} ms p99 {p99s[name][-1]:.1f} ms", flush=True)
    rows: list[Row] = []
    for other in names[1:]:
        for label, values in (("drain a spool to smtp-sink", drains),
                              ("end to end sustained, 20 reused sessions, to smtp-sink", ends)):
            ratio = median([a / b for a, b in zip(values["relay"], values[other], strict=True)])
            rows.append(Row("9 forward", f"{label} (baseline: {other})", median(values["relay"]),
                            median(values[other]), "msg/s", ratio))
        for label, values in (("p50", p50s), ("p99", p99s)):
            rows.append(Row("9 forward", f"latency 250 -> sink at {sizes.e2e_rate:.0f} msg/s,"
                            f" {label} (baseline: {other})", median(values["relay"]),
                            median(values[other]), "ms"))
    return rows
