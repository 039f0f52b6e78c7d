"""The relay-deliver console script as a real process: --once exit codes, watchdog pick-up,
SIGUSR1, SIGTERM, kill -9 in the middle of DATA, and restart recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from support.deliver import FAST, Deliver, body, files, store, wait_until_empty
from support.programs import DELIVER
from support.sink import Behaviour, Sink

from spool import Spool, State, entries


@pytest.fixture
def running() -> Iterator[list[Deliver]]:
    """Deliver processes started by a test; any left running are killed at the end."""
    started: list[Deliver] = []
    yield started
    for deliver in started:
        deliver.close()


def test_once_exit_codes(spool: Spool, sink: Sink) -> None:
    """The console script: --once exits 0 when all went, 75 when mail was deferred."""
    store(spool, 1)
    command = [DELIVER, "--once", "--spool-dir", str(spool.path), "--forward-to", sink.address,
               *FAST]
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    assert [m.data for m in sink.messages] == [body(1)] and files(spool) == []
    sink.behaviour.mail_reply = "421 4.3.2 shutting down"
    store(spool, 2)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 75
    assert "delivery_deferred" in done.stderr and "shutting down" in done.stderr


def test_hand_dropped_pair_is_found_by_watchdog(spool: Spool, sink: Sink,
                                                running: list[Deliver]) -> None:
    """With --poll 1h, a hand-dropped content+envelope pair is sent within seconds."""
    running.append(Deliver(spool, sink.address, "--poll", "3600"))
    time.sleep(0.3)  # past the scan at start: only a watchdog event can find the pair now
    template = Spool(spool.path.parent / "template", check=False)
    template.path.mkdir(mode=0o700)
    source = store(template, 7)
    (spool.path / "byhand.content").write_bytes(template.content_path(source).read_bytes())
    dropped = time.monotonic()
    (spool.path / "byhand.envelope").write_bytes(
        template.envelope_path(source, State.READY).read_bytes())
    sink.wait_for(1, timeout=10)
    assert time.monotonic() - dropped < 10
    assert [m.data for m in sink.messages] == [body(7)]
    running[0].wait_for_log("message_forwarded")
    wait_until_empty(spool)  # the remover thread removes it right after the 250


def make_due_silently(spool: Spool, deliver: Deliver, message_id: str, count: int) -> None:
    """Wait for the *count*-th deferral, then make the message due by hand (no event)."""
    deadline = time.monotonic() + 10
    path = spool.envelope_path(message_id, State.READY)
    while (deliver.log().count("delivery_deferred") < count or not path.exists()):
        assert time.monotonic() < deadline, deliver.log()
        time.sleep(0.02)
    os.utime(path, (time.time(), time.time() - 1))


def test_trigger_file_and_sigusr1_flush_deferred_mail_too(spool: Spool, sink: Sink,
                                                           running: list[Deliver]) -> None:
    """SIGUSR1 and the trigger file are flushes: every queued message goes now, deferred ones
    included (sendmail -q, E-MailRelay), long before its backoff ends."""
    sink.behaviour.mail_reply = "451 later"
    deliver = Deliver(spool, sink.address, "--poll", "3600", "--retry-first", "1h")
    running.append(deliver)
    first = store(spool, 1)
    second = store(spool, 2)
    make_due_silently(spool, deliver, first, 2)
    make_due_silently(spool, deliver, second, 2)
    sink.behaviour.mail_reply = "451 still later"
    deliver.process.send_signal(signal.SIGUSR1)  # both fail again: deferred for an hour
    deadline = time.monotonic() + 10
    while deliver.log().count("delivery_deferred") < 4:
        assert time.monotonic() < deadline, deliver.log()
        time.sleep(0.02)
    sink.behaviour.mail_reply = None
    time.sleep(0.3)
    assert sink.messages == []  # deferred for an hour: nothing is due
    deliver.process.send_signal(signal.SIGUSR1)
    assert sorted(m.data for m in sink.wait_for(2)) == [body(1), body(2)]
    wait_until_empty(spool)
    sink.behaviour.mail_reply = "451 later"
    third = store(spool, 3)
    while (deliver.log().count("delivery_deferred") < 5
           or not spool.envelope_path(third, State.READY).exists()):
        assert time.monotonic() < deadline + 10, deliver.log()
        time.sleep(0.02)
    sink.behaviour.mail_reply = None
    Spool(spool.path).trigger_scan()  # what intake (filter exit 103) and the tools do
    assert sorted(m.data for m in sink.wait_for(3)) == [body(1), body(2), body(3)]


def test_sigterm_exits_0_and_leaves_no_busy(spool: Spool, running: list[Deliver]) -> None:
    """SIGTERM while messages are in flight: exit 0 in bounded time, no .busy left behind."""
    with Sink(Behaviour(stall_after_data=1.0)) as sink:
        for n in range(6):
            store(spool, n)
        deliver = Deliver(spool, sink.address, "--concurrency", "2", "--shutdown-timeout", "3")
        running.append(deliver)
        deadline = time.monotonic() + 10
        while sink.data_attempts == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        assert deliver.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
    left = {entry.state for entry in entries(spool) if entry.state is not None}
    assert State.BUSY not in left
    waiting = [e.message_id for e in entries(spool) if e.state is State.READY]
    assert len(waiting) + len(sink.messages) >= 6  # every message sent or still queued


def test_kill_9_during_data_delivers_later_at_most_one_extra_copy(
    spool: Spool, running: list[Deliver]
) -> None:
    """deliver killed while the smarthost holds the reply to DATA: the .busy left behind is
    recovered by the next run, which delivers it; the smarthost has it once or twice."""
    behaviour = Behaviour(stall_after_data=2.0)
    with Sink(behaviour) as sink:
        message_id = store(spool, 1)
        deliver = Deliver(spool, sink.address)
        running.append(deliver)
        deadline = time.monotonic() + 10
        while sink.data_attempts == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        deliver.process.kill()
        deliver.process.wait()
        assert spool.envelope_path(message_id, State.BUSY).exists()
        behaviour.stall_after_data = 0.0
        command = [DELIVER, "--once", "--spool-dir", str(spool.path), "--forward-to",
                   sink.address, *FAST]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "messages_recovered" in done.stderr
        time.sleep(2.2)  # let the killed session's stalled handler finish recording
        copies = [m for m in sink.messages if m.data == body(1)]
        assert 1 <= len(copies) <= 2
    assert files(spool) == []


def inotify_watches(pid: int) -> int:
    """How many inotify watches process *pid* holds (from /proc/PID/fdinfo)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "inotify" not in os.readlink(f"/proc/{pid}/fd/{fd}"):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                count += sum(1 for line in info if line.startswith("inotify wd:"))
        except FileNotFoundError:
            continue  # closed meanwhile
    return count


def test_watch_is_off_during_a_backlog_and_new_mail_is_still_found(
    spool: Spool, running: list[Deliver]
) -> None:
    """While a long due list is worked down deliver holds no inotify watch; mail stored
    meanwhile (no event reaches deliver, --poll 1h) is found by the scan after the watch is
    armed again, and the watch finds later mail as before."""
    backlog = 60
    with Sink(Behaviour(stall_after_data=0.04)) as sink:
        for n in range(backlog):
            store(spool, n)
        deliver = Deliver(spool, sink.address, "--poll", "3600", "--concurrency", "1",
                          "--verbose")
        running.append(deliver)
        pid = deliver.process.pid
        sink.wait_for(3)
        assert len(sink.messages) < backlog // 2  # still well inside the backlog
        assert inotify_watches(pid) == 0
        deliver.wait_for_log("watch_paused")
        store(spool, 1000)  # committed by rename, as intake does: no watch sees it
        sink.wait_for(backlog + 1, timeout=30)
        deliver.wait_for_log("watch_resumed")
        deadline = time.monotonic() + 10
        while inotify_watches(pid) != 1:
            assert time.monotonic() < deadline, deliver.log()
            time.sleep(0.02)
        time.sleep(0.3)  # idle now: only a watchdog event can wake it for the next one
        store(spool, 1001)
        sink.wait_for(backlog + 2, timeout=10)
    assert sorted(m.data for m in sink.messages) == sorted(
        [body(n) for n in range(backlog)] + [body(1000), body(1001)])
    assert deliver.stop() == 0
    assert files(spool) == []


def test_pid_file_is_whole_while_running_and_removed_at_exit(
    spool: Spool, sink: Sink, running: list[Deliver]
) -> None:
    """--pid-file: the file holds deliver's pid (written by rename, never half) and goes at exit;
    `1m` is a duration for --filter-timeout as it is for relay-intake."""
    pid_file = spool.path.parent / "deliver.pid"
    deliver = Deliver(spool, sink.address, "--pid-file", str(pid_file), "--filter-timeout", "1m")
    running.append(deliver)
    assert pid_file.read_text() == f"{deliver.process.pid}\n"
    assert not list(spool.path.parent.glob("deliver.pid.*.tmp"))
    assert deliver.stop() == 0
    assert not pid_file.exists()
