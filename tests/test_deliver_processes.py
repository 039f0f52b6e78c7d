"""relay-deliver --processes N as real processes: worker processes sharing one spool's claims.

Every message is delivered exactly once (by the sink's count of each body) with 2 workers,
both in a --once run and while running; signals reach the workers; a worker that dies ends
the program; a parent killed with -9 leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from support.deliver import FAST, Deliver, body, files, store, wait_until_empty
from support.processes import alive, children
from support.programs import DELIVER
from support.sink import Sink

from common.workers import combined_exit_code
from spool import Spool


@pytest.fixture
def running() -> Iterator[list[Deliver]]:
    """Deliver programs started by a test; any left running are killed with their group."""
    started: list[Deliver] = []
    yield started
    for deliver in started:
        workers = children(deliver.process.pid)
        deliver.close()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def stopped_lines(log: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "deliver_stopped"]


def test_once_with_two_processes_delivers_each_message_exactly_once(spool: Spool,
                                                                    sink: Sink) -> None:
    """--once --processes 2: 300 messages, each received once, both workers sent some, exit 0."""
    for number in range(300):
        store(spool, number)
    done = subprocess.run([DELIVER, "--once", "--processes", "2", "--concurrency", "4",
                           "--spool-dir", str(spool.path), "--forward-to", sink.address, *FAST],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = Counter(message.data for message in sink.messages)
    assert counts == Counter(body(number) for number in range(300))
    stopped = stopped_lines(done.stderr)
    assert sorted(line["process"] for line in stopped) == [0, 1]
    assert sum(int(str(line["sent"])) for line in stopped) == 300
    assert all(int(str(line["sent"])) > 0 for line in stopped), stopped
    assert files(spool) == []


def two_workers(spool: Spool, sink: Sink, running: list[Deliver]) -> Deliver:
    """relay-deliver --processes 2 forwarding to *sink*, once both workers are running."""
    deliver = Deliver(spool, sink.address, "--processes", "2", "--concurrency", "2")
    running.append(deliver)
    deadline = time.monotonic() + 10
    while len(children(deliver.process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return deliver


def test_running_workers_share_new_mail_and_stop_on_sigterm(spool: Spool, sink: Sink,
                                                            running: list[Deliver]) -> None:
    """Two running workers: mail stored while they run arrives once each; SIGTERM exits 0."""
    deliver = two_workers(spool, sink, running)
    workers = children(deliver.process.pid)
    assert len(workers) == 2
    for number in range(100):
        store(spool, number)
    sink.wait_for(100, timeout=30)
    wait_until_empty(spool)
    time.sleep(0.3)  # a duplicate would arrive now
    assert Counter(m.data for m in sink.messages) == Counter(body(n) for n in range(100))
    assert deliver.stop(signal.SIGTERM) == 0
    assert not any(alive(pid) for pid in workers)
    assert sorted(line["process"] for line in stopped_lines(deliver.log())) == [0, 1]


def test_a_dead_worker_ends_the_program(spool: Spool, sink: Sink,
                                        running: list[Deliver]) -> None:
    """A worker killed with -9 makes the parent stop the other one and end the same way."""
    deliver = two_workers(spool, sink, running)
    first, second = sorted(children(deliver.process.pid))
    os.kill(first, signal.SIGKILL)
    assert deliver.process.wait(30) == -signal.SIGKILL
    assert not alive(second)
    assert "worker_ended" in deliver.log()


def test_workers_die_with_a_killed_parent(spool: Spool, sink: Sink,
                                          running: list[Deliver]) -> None:
    """kill -9 of the parent: the workers end too (no orphan keeps claiming)."""
    deliver = two_workers(spool, sink, running)
    workers = children(deliver.process.pid)
    deliver.process.kill()
    deliver.process.wait(10)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)


def test_more_processes_than_connections_is_a_configuration_error(spool: Spool,
                                                                  sink: Sink) -> None:
    """--processes above --concurrency (a worker without a connection) exits 78."""
    done = subprocess.run([DELIVER, "--once", "--processes", "3", "--concurrency", "2",
                           "--spool-dir", str(spool.path), "--forward-to", sink.address, *FAST],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78 and "processes" in done.stderr


@pytest.mark.parametrize(("codes", "expected"), [
    ([0, 0], 0), ([0, 75], 75), ([75, 2], 2), ([137, 0], 137), ([], 0),
])
def test_combined_exit_code(codes: list[int], expected: int) -> None:
    """The program's exit code: the first failure, else 75 when a --once worker left mail."""
    assert combined_exit_code(codes) == expected
