"""Postfix's smtp-source as the load generator every system gets alike (bench's peers rows).

smtp-source (Debian package `postfix`) is a small C client: HELO, MAIL, RCPT, DATA, one
command at a time (it does not pipeline), a message of a given payload size, over a given
number of parallel sessions; by default one connection per message, with `-d` message
after message on the same connection. `run` times one invocation (wall clock from its
start to its exit) and its CPU, and fails unless every message got its 250 (smtp-source
exits non-zero on any other reply). Touches no file.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass

from bench.common import HOST, RECIPIENT, SENDER, BenchError


def program() -> str | None:
    """The smtp-source program, or None when Postfix's tools are not installed."""
    return shutil.which("smtp-source") or next(
        (path for path in ("/usr/sbin/smtp-source",) if os.access(path, os.X_OK)), None)


@dataclass
class SourceRun:
    """One smtp-source run: messages, seconds from start to exit, its own CPU seconds."""

    messages: int
    elapsed: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.messages / self.elapsed


def run(port: int, messages: int, *, sessions: int, reuse: bool, size: int = 4096,
        timeout: float = 300.0) -> SourceRun:
    """Send *messages* of *size* payload bytes over *sessions* parallel sessions."""
    source = program()
    if source is None:
        raise BenchError("smtp-source is not installed (apt-get install postfix)")
    argv = [source, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-M", "client.bench", "-f", SENDER, "-t", RECIPIENT]
    if reuse:
        argv.append("-d")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        done = subprocess.run([*argv, f"{HOST}:{port}"], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"smtp-source did not finish {messages} messages in {timeout:.0f} s"
                         ) from None
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(f"smtp-source exited {done.returncode}: {done.stderr.strip()[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return SourceRun(messages, elapsed, cpu)
