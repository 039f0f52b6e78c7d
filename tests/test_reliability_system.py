"""The whole system under supervisord (the shipped supervisord.conf): kill -9 of intake and
of deliver while mail flows; supervisord restarts them and nothing acknowledged is lost.
A short, deterministic cousin of the chaos soak (tests/test_soak.py) that runs in make test."""

from __future__ import annotations

import os
import signal
import smtplib
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from support.sink import Behaviour, Sink
from support.spool import spool_files
from support.system import System, wait_until


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(Behaviour()) as running:
        yield running


def pid_of(system: System, name: str) -> int | None:
    output = system.ctl("pid", name).stdout.strip()
    return int(output) if output.isdigit() and output != "0" else None


def kill_9(system: System, name: str) -> None:
    """SIGKILL *name* and wait until supervisord has it running again under a new pid."""
    old = pid_of(system, name)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: pid_of(system, name) not in (None, old), timeout=30)
    system.wait_running([name])


def offer(system: System, token: str, deadline: float = 30.0) -> None:
    """Send one message as a real client would: retry until it gets a 250."""
    message = (f"From: a@example.org\r\nTo: b@example.com\r\nSubject: {token}\r\n"
               f"X-Token: {token}\r\n\r\nbody\r\n").encode()
    give_up = time.monotonic() + deadline
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", system.port, timeout=10) as client:
                client.sendmail("a@example.org", ["b@example.com"], message)
            return
        except (OSError, smtplib.SMTPException):
            if time.monotonic() > give_up:
                raise
            time.sleep(0.1)


def tokens(sink: Sink) -> Counter[str]:
    with sink.lock:
        found = [m.data for m in sink.messages]
    counts: Counter[str] = Counter()
    for data in found:
        start = data.index(b"X-Token: ") + 9
        counts[data[start : data.index(b"\r\n", start)].decode()] += 1
    return counts


def test_kill_9_of_intake_and_deliver_under_supervisord_loses_nothing(sink: Sink) -> None:
    """Both programs SIGKILLed mid-flow and restarted by supervisord: every message that got
    a 250 arrives, the spool ends empty, and extra copies stay within deliver's concurrency."""
    system = System(sink.address, RELAY_POLL="1", RELAY_RETRY_FIRST="1", RELAY_RETRY_MAX="2",
                    RELAY_RESPONSE_TIMEOUT="5", RELAY_DATA_TIMEOUT="5")
    try:
        system.start()
        sent = [f"first-{n}" for n in range(10)]
        for token in sent:
            offer(system, token)
        kill_9(system, "relay:intake")
        sent += [f"second-{n}" for n in range(10)]
        for token in sent[10:]:
            offer(system, token)
        assert wait_until(lambda: set(sent) <= set(tokens(sink)), timeout=30), system.logs()

        sink.behaviour.stall_after_data = 2.0  # deliver will be killed while DATA waits
        before = sink.data_attempts
        sent += [f"third-{n}" for n in range(4)]
        for token in sent[20:]:
            offer(system, token)
        assert wait_until(lambda: sink.data_attempts > before, timeout=20), system.logs()
        kill_9(system, "relay:deliver")
        sink.behaviour.stall_after_data = 0.0
        def drained() -> bool:
            return set(sent) <= set(tokens(sink)) and not any(
                n.endswith((".envelope", ".busy", ".new")) for n in spool_files(system.spool))

        assert wait_until(drained, timeout=60), system.logs()
        time.sleep(2.5)  # the killed connection's stalled handlers finish recording
        counts = tokens(sink)
        assert set(counts) == set(sent)
        assert sum(counts.values()) - len(sent) <= 4  # only messages in flight at the kill
    finally:
        system.stop()
