"""Starting the processes a benchmark needs: relay's programs, bench's servers and clients.

relay-intake and relay-deliver are run only through their console scripts, with their
stderr (one log line per message) in a log file of the run's scratch directory. Bench's
own helpers (servers, loadgen, sender) are `python -m bench.<module>` subprocesses, so no
client shares a GIL with a server. With --profile, py-spy (when installed) samples each
relay process into the profile directory. Writes only into scratch directories.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    BenchError,
    Context,
    Process,
    free_port,
    helper,
    parse_json_line,
    python_env,
    script,
    wait_for_port,
)

LOG_FORMAT = ["--log-format", "logfmt"]


def py_spy() -> str | None:
    """The py-spy program (an optional tool: pip install py-spy), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy sampling one process until stopped (SIGINT makes it write its file)."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        spy = py_spy()
        assert spy is not None
        self.popen = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
             "--nonblocking", "--threads", "--subprocesses", "--output", str(output)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def profiled(ctx: Context, process: Process, name: str,
             profilers: list[Profiler]) -> Process:
    """Attach py-spy to *process* when --profile asked for it and py-spy is installed."""
    if ctx.profile is None:
        return process
    if py_spy() is None:
        ctx.notes.append("--profile: py-spy is not installed; no profile taken")
        return process
    directory = Path(ctx.profile)
    directory.mkdir(parents=True, exist_ok=True)
    number = len(list(directory.glob(f"{name}-*.txt")))
    profilers.append(Profiler(process.pid, directory / f"{name}-{number}.txt"))
    return process


def start_null_server(ctx: Context, logs: Path, *, progress: int = 0, expect: int = 0,
                      record: Path | None = None, name: str = "sink") -> tuple[Process, int]:
    """Bench's bare aiosmtpd server (intake baseline, deliver sink), with its port."""
    port = free_port()
    argv = helper("servers", "--port", str(port), "--progress", str(progress),
                  "--expect", str(expect), *ctx.helper_flags())
    if record is not None:
        argv += ["--record", str(record)]
    process = Process(argv, logs / f"{name}.log", stdout_lines=progress > 0, env=python_env())
    wait_for_port(port, process)
    return process, port


def start_postfix_sink(logs: Path, *, progress: int, expect: int,
                       name: str = "smtp-sink") -> tuple[Process, int]:
    """Postfix's smtp-sink (see bench.postfix_sink) with bench's progress lines, its port."""
    port = free_port()
    argv = helper("postfix_sink", "--port", str(port), "--progress", str(progress),
                  "--expect", str(expect))
    process = Process(argv, logs / f"{name}.log", stdout_lines=True, env=python_env())
    wait_for_port(port, process)
    return process, port


def start_intake(ctx: Context, spool: Path, logs: Path, *extra: str,
                 name: str = "intake") -> tuple[Process, int]:
    """relay-intake on 127.0.0.1 with its spool in *spool*; returns it and its port."""
    port = free_port()
    argv = [script("relay-intake"), "--spool-dir", str(spool), "--port", str(port),
            "--interface", HOST, "--domain", "intake.bench", *LOG_FORMAT, *ctx.relay_flags(),
            *extra]
    process = Process(argv, logs / f"{name}.log")
    wait_for_port(port, process)
    return process, port


def deliver_argv(spool: Path, forward_port: int, *extra: str, once: bool = False,
                 concurrency: int | None = None) -> list[str]:
    argv = [script("relay-deliver"), "--spool-dir", str(spool),
            "--forward-to", f"{HOST}:{forward_port}", "--domain", "deliver.bench",
            *LOG_FORMAT, *extra]
    if once:
        argv.append("--once")
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    return argv


def start_deliver(ctx: Context, spool: Path, forward_port: int, logs: Path, *extra: str,
                  once: bool = False, concurrency: int | None = None,
                  name: str = "deliver") -> Process:
    """relay-deliver forwarding the spool to 127.0.0.1:*forward_port* (peak RSS sampled)."""
    return Process(deliver_argv(spool, forward_port, *ctx.relay_flags(), *extra, once=once,
                                concurrency=concurrency),
                   logs / f"{name}.log", sample_memory=True)


def start_relay(ctx: Context, spool: Path, sink_port: int, logs: Path, running: list[Process],
                *intake_extra: str, profilers: list[Profiler] | None = None,
                profile_name: str = "") -> tuple[int, Process]:
    """relay-intake and relay-deliver on *spool*, deliver forwarding to 127.0.0.1:*sink_port*;
    each appended to *running* as soon as it runs (so that it stops with the others), and
    with *profilers*, profiled as PROFILE_NAME-intake and -deliver. Intake's port, deliver."""
    intake, port = start_intake(ctx, spool, logs, *intake_extra)
    running.append(intake)
    deliver = start_deliver(ctx, spool, sink_port, logs)
    running.append(deliver)
    if profilers is not None:
        profiled(ctx, intake, f"{profile_name}-intake", profilers)
        profiled(ctx, deliver, f"{profile_name}-deliver", profilers)
    return port, deliver


def run_loadgen(ctx: Context, port: int, count: int, logs: Path, *, sessions: int, size: int,
                rate: float = 0.0, prefix: str = "m", record: bool = False,
                timeout: float = 300.0) -> dict[str, Any]:
    """Run the load generator in ctx.loadgen_processes processes; combined figures.

    With record, result["records"] holds every [token, time of the 250].
    """
    parts = max(1, min(ctx.loadgen_processes, sessions, count))
    running: list[tuple[Process, Path]] = []
    for part in range(parts):
        share = count // parts + (1 if part < count % parts else 0)
        record_path = logs / f"{prefix}-loadgen-{part}.json"
        argv = helper("loadgen", "--port", str(port), "--count", str(share),
                      "--sessions", str(sessions // parts + (1 if part < sessions % parts else 0)),
                      "--size", str(size), "--rate", str(rate / parts),
                      "--prefix", f"{prefix}{part}", "--timeout", str(timeout),
                      *ctx.helper_flags())
        if record:
            argv += ["--record", str(record_path)]
        running.append((Process(argv, logs / f"{prefix}-loadgen-{part}.log", stdout_lines=True,
                                env=python_env()), record_path))
    results = []
    records: list[list[Any]] = []
    for process, record_path in running:
        line = process.wait_line(lambda text: text.startswith("{"), timeout + 30)
        process.wait(30)
        process.stop()
        result = parse_json_line(line)
        if result["errors"] or result["refused"]:
            raise BenchError(f"load generator: {result['errors']} {result['first_refusal']}"
                             f" ({result['refused']} refused)")
        results.append(result)
        if record:
            records.extend(json.loads(record_path.read_text()))
    start = min(result["start"] for result in results)
    end = max(result["end"] for result in results)
    sent = sum(result["sent"] for result in results)
    return {
        "sent": sent,
        "start": start,
        "end": end,
        "elapsed": end - start,
        "rate": sent / (end - start),
        "pipelined": all(result["pipelined"] for result in results),
        "lag_max": max(result["lag_max"] for result in results),
        "cpu": sum(result["cpu"] for result in results),
        "records": records,
    }


def run_sender(ctx: Context, port: int, count: int, logs: Path, *, size: int, concurrency: int,
               prefix: str = "b", timeout: float = 300.0) -> dict[str, Any]:
    """The aiosmtplib baseline sender (no spool); its JSON result."""
    process = Process(
        helper("sender", "--port", str(port), "--count", str(count), "--size", str(size),
               "--concurrency", str(concurrency), "--prefix", prefix, *ctx.helper_flags()),
        logs / f"{prefix}-sender.log", stdout_lines=True, env=python_env(),
    )
    try:
        line = process.wait_line(lambda text: text.startswith("{"), timeout)
        process.wait(30)
    finally:
        process.stop()
    result = parse_json_line(line)
    result["spawned"] = process.started
    return result


def progress_time(sink: Process, count: int, timeout: float) -> float:
    """When the sink said it had received *count* messages (its progress line's time)."""
    line = sink.wait_line(lambda text: int(text.split()[0]) >= count, timeout)
    return float(line.split()[1])
