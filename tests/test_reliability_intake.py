"""Data safety at intake under faults: kill -9 at every step of the store, failing fsyncs,
and a full disk. "250" must mean "durable": every message a client saw 250 for is later
delivered byte-identical, and nothing a client did not see 250 for is delivered, except
when the kill came after the commit (rename done) and before the reply (a duplicate once
the client retries, which is inherent to SMTP; see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import threading
import time
from pathlib import Path

import pytest
from support.intake import IntakeProcess, IntakeThread
from support.processes import children
from support.programs import deliver_once
from support.sink import Sink
from support.spool import accepted, fill, spool_files, strip_received

from spool import Spool, recover

# Every checkpoint between the first DATA byte and the 250, in the order they are passed.
CRASH_POINTS = (
    "data_received",
    "content_written",
    "fsync_content",
    "content_synced",
    "envelope_written",
    "fsync_envelope",
    "envelope_synced",
    "rename_envelope",
    "fsync_directory",
    "directory_synced",
    "before_reply",
)
# After these the `.envelope` has its final name: the message is accepted even though the
# client never saw the 250 (a process kill, not a power cut: the rename is in the page cache).
COMMITTED_POINTS = frozenset({"fsync_directory", "directory_synced", "before_reply"})


def message(token: str, size: int = 0) -> bytes:
    """A CRLF message unique per *token*, with a line that needs dot-stuffing."""
    return (f"From: a@example.org\r\nTo: b@example.com\r\nSubject: {token}\r\n"
            f"X-Token: {token}\r\n\r\nbody of {token}\r\n.a line starting with a dot\r\n"
            ).encode() + (b"y" * 70 + b"\r\n") * (size // 72)


def offer(intake: IntakeProcess, token: str, size: int = 0) -> int | None:
    """Offer one message: the reply code to its DATA, None when the connection was lost."""
    try:
        with intake.smtp() as client:
            client.sendmail("a@example.org", ["b@example.com"], message(token, size))
    except smtplib.SMTPResponseException as error:
        return error.smtp_code
    except (smtplib.SMTPException, OSError):
        return None
    return 250


def send(intake: IntakeProcess, token: str, size: int = 0) -> bool:
    """Offer one message; True when the client saw 250 for it."""
    return offer(intake, token, size) == 250


def delivered(sink: Sink, token: str) -> list[bytes]:
    """The bodies (relay's Received line removed) of every copy of *token* the sink got."""
    with sink.lock:
        found = [m.data for m in sink.messages]
    return [strip_received(data) for data in found if f"X-Token: {token}\r\n".encode() in data]


def ready_or_busy(spool_dir: Path) -> list[str]:
    return [n for n in spool_files(spool_dir) if n.endswith((".envelope", ".busy"))]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_9_at_each_step_loses_no_acknowledged_message(spool_dir: Path, sink: Sink,
                                                           point: str) -> None:
    """kill -9 at each store step: a retried message arrives once, or twice after the commit."""
    with IntakeProcess(spool_dir, env={"RELAY_TEST_CRASH_AT": point}) as crashing:
        reply = offer(crashing, "victim")
        if reply is None:  # intake itself was killed: the connection is simply gone
            assert crashing.process.wait(10) == -signal.SIGKILL, "the checkpoint was not reached"
        else:  # a helper process that does intake's file work was killed: 4xx, never 250
            assert 400 <= reply < 500, f"{reply}: the checkpoint was not reached, or a 250"
            assert crashing.stop() == 0
    with IntakeProcess(spool_dir) as intake:
        # The client did not see 250, so it sends again: the normal SMTP client behaviour.
        assert send(intake, "victim")
        assert send(intake, "after")
        assert intake.stop() == 0
    done = deliver_once(spool_dir, sink.address)
    assert done.returncode == 0, done.stderr
    copies = delivered(sink, "victim")
    assert copies and all(copy == message("victim") for copy in copies)
    assert len(copies) == (2 if point in COMMITTED_POINTS else 1)
    assert delivered(sink, "after") == [message("after")]
    assert ready_or_busy(spool_dir) == []
    # What the kill left (a .content, maybe a .envelope.new) is debris that deliver's
    # recovery removes once it is older than any SMTP session (3 h) or orphaned (24 h).
    recover(Spool(spool_dir), now=time.time() + 2 * 86400)
    assert spool_files(spool_dir) == []


def test_kill_9_mid_batch_keeps_every_committed_message(spool_dir: Path, sink: Sink) -> None:
    """A group commit killed after its renames: each message of the batch is delivered once."""
    with IntakeProcess(spool_dir, env={"RELAY_TEST_CRASH_AT": "fsync_directory"}) as crashing:
        clients = []
        for number in range(3):
            client = crashing.smtp()
            client.ehlo()
            client.mail("a@example.org")
            client.rcpt("b@example.com")
            clients.append(client)
        replies: list[int | None] = []
        for client in clients:
            client.putcmd("data")
            assert client.getreply()[0] == 354
        for number, client in enumerate(clients):  # three messages in flight at once
            with contextlib.suppress(OSError, smtplib.SMTPException):  # may be dead already
                client.send(message(f"batch-{number}").replace(b"\r\n.", b"\r\n..")
                            + b".\r\n")
        for client in clients:
            try:
                replies.append(client.getreply()[0])
            except (smtplib.SMTPException, OSError):
                replies.append(None)
            client.close()
        assert crashing.process.wait(10) == -signal.SIGKILL
    assert 250 not in replies
    committed = {name.split(".envelope")[0] for name in ready_or_busy(spool_dir)}
    assert committed  # at least the first batch was renamed before the kill
    done = deliver_once(spool_dir, sink.address)
    assert done.returncode == 0, done.stderr
    arrived = [n for n in range(3) if delivered(sink, f"batch-{n}")]
    assert len(arrived) == len(committed)
    for number in arrived:
        assert delivered(sink, f"batch-{number}") == [message(f"batch-{number}")]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("fsync_content:EIO", 451),
        ("content_written:ENOSPC", 452),
        ("fsync_envelope:EIO", 451),
        ("rename_envelope:EIO", 451),
        ("fsync_directory:EIO", 451),
        ("fsync_directory:EDQUOT", 452),
    ],
)
def test_failing_fsync_or_write_answers_4xx_and_keeps_nothing(spool_dir: Path, fault: str,
                                                             code: int) -> None:
    """An injected storage error at each step: 451 (452 for no space), no file left behind."""
    with IntakeProcess(spool_dir, env={"RELAY_TEST_FAIL_AT": fault}) as intake:
        with intake.smtp() as client:
            client.ehlo()
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@example.org", ["b@example.com"], message("faulty"))
            assert refused.value.smtp_code == code
            assert client.noop()[0] == 250  # the session goes on
        assert intake.process.poll() is None
        assert spool_files(spool_dir) == []
        assert "store_failed" in intake.log()
        assert intake.stop() == 0


# -- a full disk: a spool on a small tmpfs ------------------------------------------------


def test_full_disk_refuses_at_mail_and_after_the_dot_then_recovers(small_disk: Path,
                                                                   sink: Sink) -> None:
    """452 at MAIL below --min-free-space, 452 after the dot on ENOSPC; fine once freed."""
    spool_dir = small_disk / "spool"
    spool_dir.mkdir(mode=0o700)
    filler = small_disk / "filler"
    big = message("big", size=300_000)
    with IntakeThread(spool_dir, "--min-free-space", "1M", "--size", "2M") as intake:
        fill(filler, leave=512 * 1024)  # under --min-free-space
        time.sleep(1.1)  # the free-space figure is cached for a second
        with intake.smtp() as client:
            client.ehlo()
            code, text = client.mail("a@example.org")
            assert code == 452 and b"storage" in text.lower()
        assert spool_files(spool_dir) == []
    with IntakeThread(spool_dir, "--min-free-space", "0", "--size", "2M") as intake:
        fill(filler, leave=100 * 1024)  # the check passes, the write cannot
        with intake.smtp() as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@example.org", ["b@example.com"], big)
            assert refused.value.smtp_code == 452
            assert spool_files(spool_dir) == []  # nothing half stored
            filler.unlink()
            client.sendmail("a@example.org", ["b@example.com"], big)
    ((_, content),) = accepted(spool_dir)
    assert strip_received(content) == big
    done = deliver_once(spool_dir, sink.address)
    assert done.returncode == 0, done.stderr
    assert delivered(sink, "big") == [big]
    assert spool_files(spool_dir) == []


def keep_killing(pid: int, stop: threading.Event, delay: float) -> None:
    """SIGKILL *pid*'s children after *delay*, then again every 10 ms until *stop*."""
    if stop.wait(delay):
        return
    while not stop.is_set():
        for helper in children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(helper, signal.SIGKILL)
        stop.wait(0.01)


def test_storage_process_killed_alone_costs_no_acknowledged_message(spool_dir: Path,
                                                                   sink: Sink) -> None:
    """kill -9 of intake's storage process alone, idle and mid-message: intake starts a new
    one; a message answered 250 is always stored, a 4xx one is retried, service resumes."""
    replies: dict[str, int | None] = {}
    # One worker, so that the storage processes are the program's children.
    with IntakeProcess(spool_dir, "--processes", "1") as intake:
        helpers = children(intake.process.pid)
        if not helpers:
            pytest.skip("relay-intake has no storage process to kill")
        os.kill(helpers[0], signal.SIGKILL)  # idle
        for number in range(4):
            token = f"storage-{number}"
            with intake.smtp() as client:
                client.ehlo()
                client.mail("a@example.org")
                client.rcpt("b@example.com")
                client.putcmd("data")
                assert client.getreply()[0] == 354
                client.send(message(token, size=3_000_000).replace(b"\r\n.", b"\r\n..")
                            + b".\r\n")
                replied = threading.Event()
                killer = threading.Thread(target=keep_killing,
                                          args=(intake.process.pid, replied, number * 0.02))
                killer.start()  # kills whichever storage process is storing this message
                try:
                    replies[token] = client.getreply()[0]
                finally:
                    replied.set()
                    killer.join()
        assert "storage_process_died" in intake.log()
        for token, reply in replies.items():
            assert reply is not None and (reply == 250 or 400 <= reply < 500), reply
            if reply != 250:
                assert send(intake, token, size=3_000_000)  # the client's retry
        assert send(intake, "after")
        assert intake.process.poll() is None
        assert intake.stop() == 0
    done = deliver_once(spool_dir, sink.address)
    assert done.returncode == 0, done.stderr
    for token, reply in replies.items():
        copies = delivered(sink, token)
        assert copies and all(c == message(token, size=3_000_000) for c in copies)
        assert len(copies) == 1 if reply == 250 else 1 <= len(copies) <= 2
    assert delivered(sink, "after") == [message("after")]
