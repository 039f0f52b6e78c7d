"""Hostile spool files, made for real (mkfifo, symlinks to /etc/passwd, hard links, device
nodes, directories, garbage): a running relay-deliver fails each to `.bad` with a reason
that says what it found, still delivers a probe message queued beside it, and stops at
once on SIGTERM; relay-resubmit and relay-notify leave a hostile `.bad` alone and handle
the probe beside it; the trigger and lock files and the recovery resist the same tricks."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.deliver import Deliver
from support.programs import run_tool
from support.sink import Sink
from support.tools import CONTENT, emailrelay_envelope, failures_of, write_bad

from spool import Envelope, HostileFile, Spool, State, claim, parse_envelope
from spool.files import open_regular
from spool.names import TOOLS_LOCK_NAME, TRIGGER_NAME
from spool.scan import recover

PROBE = b"Subject: probe\r\n\r\nthe probe still goes\r\n"
ENVELOPE = Envelope(sender="a@example.com", to_remote=("b@example.net",))
SECRET = b"root:x:0:0:not for the smarthost\n"
STOP_TIMEOUT = 3.0  # deliver's --shutdown-timeout in these tests


def make_device(path: Path) -> None:
    """A character device node like /dev/zero (an endless read, if it were ever read)."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("mknod is not allowed here (a container without CAP_MKNOD)")


def plant(kind: str, path: Path, outside: Path) -> str:
    """Put a hostile file of *kind* at *path*; the words the refusal must contain."""
    if kind == "fifo":
        os.mkfifo(path, 0o600)
        return "a FIFO"
    if kind == "symlink":
        path.symlink_to("/etc/passwd")
        return "a symbolic link to /etc/passwd"
    if kind == "hardlink":
        outside.write_bytes(SECRET if path.suffix == ".content" else emailrelay_envelope())
        os.link(outside, path)
        return "a hard link (2 links"
    if kind == "device":
        make_device(path)
        return "a character device"
    if kind == "directory":
        path.mkdir()
        return "a directory"
    raise AssertionError(kind)


KINDS = ["fifo", "symlink", "hardlink", "device", "directory"]


@pytest.fixture
def deliver_for(spool: Spool, sink: Sink) -> Iterator[Callable[..., Deliver]]:
    """Starts relay-deliver against the sink; any still running at the end is killed."""
    started: list[Deliver] = []

    def start(*extra: str) -> Deliver:
        started.append(Deliver(spool, sink.address, "--shutdown-timeout", str(STOP_TIMEOUT),
                               "--content-grace", "0.5", *extra))
        return started[-1]

    yield start
    for deliver in started:
        deliver.close()


def failures_logged(deliver: Deliver) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in deliver.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "message_failed"]


def wait_for(predicate: Callable[[], bool], what: str, deliver: Deliver,
             timeout: float = 15.0) -> float:
    """Poll until *predicate*; the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"not {what}:\n{deliver.log()}"
        time.sleep(0.005)
    return time.monotonic() - started


def stop_promptly(deliver: Deliver) -> None:
    """SIGTERM stops deliver well within its --shutdown-timeout, exit 0."""
    started = time.monotonic()
    assert deliver.stop(signal.SIGTERM, timeout=STOP_TIMEOUT + 5) == 0, deliver.log()
    assert time.monotonic() - started < STOP_TIMEOUT, deliver.log()


def probe_went(sink: Sink) -> bool:
    return any(m.data.endswith(b"the probe still goes\r\n") for m in sink.messages)


@pytest.mark.parametrize("kind", KINDS)
def test_deliver_fails_a_hostile_content_file_and_sends_the_probe(
        kind: str, spool: Spool, sink: Sink, tmp_path: Path,
        deliver_for: Callable[..., Deliver]) -> None:
    """A valid envelope whose content is a FIFO, a symlink to /etc/passwd, a hard link, a
    device or a directory: its envelope goes to `.bad` with a Reason saying what was found,
    nothing of it reaches the smarthost, the probe beside it does, SIGTERM stops deliver."""
    message_id = "hostile"
    found = plant(kind, Path(spool.content_path(message_id)), tmp_path / "outside")
    spool.envelope_path(message_id, State.READY).write_bytes(emailrelay_envelope())
    spool.store(PROBE, ENVELOPE)
    deliver = deliver_for()
    bad = spool.envelope_path(message_id, State.BAD)
    wait_for(bad.exists, "failed to .bad", deliver)
    wait_for(lambda: probe_went(sink), "probe delivered", deliver)
    reasons = parse_envelope(bad.read_bytes()).reasons
    assert len(reasons) == 1 and found in reasons[0] and "not a regular file" in reasons[0]
    assert [line["msg_id"] for line in failures_logged(deliver)] == [message_id]
    assert len(sink.messages) == 1
    assert all(SECRET not in m.data and b"root:" not in m.data for m in sink.messages)
    stop_promptly(deliver)
    if kind == "hardlink":
        assert (tmp_path / "outside").read_bytes() == SECRET


@pytest.mark.parametrize("kind", [*KINDS, "garbage", "huge"])
def test_deliver_moves_a_hostile_envelope_to_bad_and_sends_the_probe(
        kind: str, spool: Spool, sink: Sink, tmp_path: Path,
        deliver_for: Callable[..., Deliver]) -> None:
    """The envelope itself a FIFO, a symlink, a hard link, a device, a directory, garbage or
    a 64 GiB sparse file: it is moved to `.envelope.bad` (unread and unchanged unless it is
    a regular file with one link), the log says what it was, the probe is delivered, SIGTERM
    stops deliver at once."""
    message_id = "hostile"
    Path(spool.content_path(message_id)).write_bytes(CONTENT)
    ready = spool.envelope_path(message_id, State.READY)
    outside = tmp_path / "outside"
    if kind in ("garbage", "huge"):
        ready.write_bytes(b"\xff\xfeX-MailRelay-Format: nonsense\r\n\x00\x01\r\n")
        if kind == "huge":  # 64 GiB, sparse: never read into memory
            os.truncate(ready, 64 << 30)
        os.utime(ready, (time.time() - 60, time.time() - 60))  # no drop in progress
        found = "bad envelope" if kind == "garbage" else "bytes: no envelope"
    else:
        found = plant(kind, ready, outside)
    before = os.lstat(ready)
    spool.store(PROBE, ENVELOPE)
    deliver = deliver_for()
    bad = spool.envelope_path(message_id, State.BAD)
    wait_for(lambda: os.path.lexists(bad), "moved to .bad", deliver)
    wait_for(lambda: probe_went(sink), "probe delivered", deliver)
    (logged,) = failures_logged(deliver)
    assert logged["msg_id"] == message_id and found in str(logged["reason"])
    after = os.lstat(bad)
    assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino,
                                                          stat.S_IFMT(before.st_mode))
    if kind == "hardlink":
        assert outside.read_bytes() == emailrelay_envelope()  # nothing appended to it
    if kind in ("garbage", "huge"):
        with bad.open("rb") as failed:
            failed.seek(max(0, after.st_size - 300))
            assert b"X-MailRelay-Reason: bad envelope" in failed.read()
    assert len(sink.messages) == 1
    stop_promptly(deliver)


def test_a_fifo_is_skipped_at_once_and_costs_the_probe_nothing(
        spool: Spool, sink: Sink, deliver_for: Callable[..., Deliver]) -> None:
    """Timing: a FIFO content and a FIFO envelope are each refused in well under a second
    by the claim itself, and a running deliver fails a newly dropped FIFO pair and sends a
    probe dropped with it within a second or so. (The figures in docs/reliability.md.)"""
    os.mkfifo(spool.content_path("inproc"), 0o600)
    Path(spool.envelope_path("inproc", State.READY)).write_bytes(emailrelay_envelope())
    started = time.perf_counter()
    held = claim(spool, "inproc")
    assert held is not None
    with pytest.raises(HostileFile, match="a FIFO"):
        held.open_content()
    content_refusal = time.perf_counter() - started
    held.fail("test", None)
    os.mkfifo(spool.envelope_path("fifo-envelope", State.READY), 0o600)
    started = time.perf_counter()
    with pytest.raises(HostileFile, match="a FIFO"):
        claim(spool, "fifo-envelope")
    envelope_refusal = time.perf_counter() - started
    assert content_refusal < 0.5 and envelope_refusal < 0.5
    deliver = deliver_for("--poll", "3600")
    time.sleep(0.3)
    dropped = time.monotonic()
    os.mkfifo(spool.content_path("dropped"), 0o600)
    spool.envelope_path("dropped", State.READY).write_bytes(emailrelay_envelope())
    spool.store(PROBE, ENVELOPE)
    wait_for(spool.envelope_path("dropped", State.BAD).exists, "failed", deliver)
    failed_after = time.monotonic() - dropped
    wait_for(lambda: probe_went(sink), "probe delivered", deliver)
    probe_after = time.monotonic() - dropped
    print(f"\nFIFO refused by the claim: content {content_refusal * 1e6:.0f} us, envelope"
          f" {envelope_refusal * 1e6:.0f} us; a running deliver failed a dropped FIFO pair"
          f" {failed_after * 1000:.0f} ms after the drop and sent the probe"
          f" {probe_after * 1000:.0f} ms after it")
    assert failed_after < 5 and probe_after < 5
    stop_promptly(deliver)


def test_a_client_filter_is_never_run_on_a_fifo(
        spool: Spool, sink: Sink, tmp_path: Path, deliver_for: Callable[..., Deliver]) -> None:
    """With --client-filter, a FIFO content fails before the filter runs (a filter that
    opened it would hang until its timeout); the probe is filtered and sent."""
    record = tmp_path / "filter-runs"
    client_filter = tmp_path / "filter"
    client_filter.write_text(f"#!/bin/sh\necho \"$1\" >> {record}\nexit 0\n")
    client_filter.chmod(0o755)
    os.mkfifo(spool.content_path("hostile"), 0o600)
    spool.envelope_path("hostile", State.READY).write_bytes(emailrelay_envelope())
    probe = spool.store(PROBE, ENVELOPE)
    deliver = deliver_for("--client-filter", str(client_filter), "--filter-timeout", "60")
    wait_for(lambda: probe_went(sink), "probe delivered", deliver)
    wait_for(spool.envelope_path("hostile", State.BAD).exists, "failed", deliver)
    assert record.read_text().split() == [spool.content_file(probe)]
    stop_promptly(deliver)


# -- the tools ---------------------------------------------------------------------------


def run_with_deadline(tool: str, spool_dir: Path, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = run_tool(tool, "--spool-dir", str(spool_dir), *args)
    return done.returncode, done.stderr.decode(), time.monotonic() - started


@pytest.mark.parametrize("kind", KINDS)
def test_resubmit_leaves_a_hostile_bad_alone_and_resubmits_the_probe(
        kind: str, spool_dir: Path, tmp_path: Path) -> None:
    """A `.envelope.bad` that is a FIFO, a symlink, a hard link, a device or a directory is
    never read nor moved (one stderr line says what it is); the probe `.bad` beside it goes
    back to the queue; the run ends at once."""
    hostile = spool_dir / "hostile.envelope.bad"
    found = plant(kind, hostile, tmp_path / "outside")
    before = os.lstat(hostile)
    write_bad(spool_dir, "probe", emailrelay_envelope(failures=failures_of(1)))
    code, stderr, took = run_with_deadline("relay-resubmit", spool_dir)
    assert code == 0, stderr
    assert took < 10
    assert (spool_dir / "probe.envelope").exists()
    assert found in stderr and "hostile.envelope.bad" in stderr and "not resubmitted" in stderr
    assert os.lstat(hostile).st_ino == before.st_ino
    assert not (spool_dir / "hostile.envelope").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_notify_leaves_a_hostile_bad_alone_and_notifies_the_probe(
        kind: str, spool_dir: Path, tmp_path: Path) -> None:
    """relay-notify: a hostile `.envelope.bad` is never read nor moved (one stderr line);
    the probe beside it gets its notification and leaves the spool."""
    hostile = spool_dir / "hostile.envelope.bad"
    found = plant(kind, hostile, tmp_path / "outside")
    write_bad(spool_dir, "probe", emailrelay_envelope(failures=failures_of(5)))
    code, stderr, took = run_with_deadline("relay-notify", spool_dir, "--domain", "relay.test")
    assert code == 0, stderr
    assert took < 10
    assert found in stderr and "hostile.envelope.bad" in stderr
    assert not (spool_dir / "probe.envelope.bad").exists()
    (notification,) = spool_dir.glob("*.envelope")
    assert parse_envelope(notification.read_bytes()).to_remote == ("bob@example.com",)
    assert os.path.lexists(hostile)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "hardlink", "device"])
def test_notify_never_reads_a_hostile_content_file(kind: str, spool_dir: Path,
                                                   tmp_path: Path) -> None:
    """A valid `.bad` whose content is hostile: the sender is notified without the original
    headers (nothing of /etc/passwd or the linked file in it), and --keep keeps no link to
    it in failed/."""
    write_bad(spool_dir, "m", emailrelay_envelope(failures=failures_of(5)))
    (spool_dir / "m.content").unlink()
    plant(kind, spool_dir / "m.content", tmp_path / "outside")
    code, stderr, took = run_with_deadline("relay-notify", spool_dir, "--domain", "relay.test",
                                           "--keep")
    assert code == 0, stderr
    assert took < 10
    (notification,) = spool_dir.glob("*.envelope")
    dsn = (spool_dir / notification.name.replace(".envelope", ".content")).read_bytes()
    assert SECRET not in dsn and b"root:x:0:0" not in dsn
    assert sorted(os.listdir(spool_dir / "failed")) == ["m.envelope.bad"]


def test_hostile_trigger_and_lock_files(spool_dir: Path, tmp_path: Path) -> None:
    """A FIFO at the trigger's name never blocks a tool (it is replaced by a regular file);
    a hard link there is not written into; a FIFO at the tools lock's name is refused
    (exit 78, saying what it is)."""
    for kind in ("fifo", "hardlink"):
        trigger = spool_dir / TRIGGER_NAME
        plant(kind, trigger, tmp_path / "outside")
        write_bad(spool_dir, f"probe-{kind}", emailrelay_envelope(failures=failures_of(1)))
        code, stderr, took = run_with_deadline("relay-resubmit", spool_dir)
        assert code == 0 and took < 10, stderr
        info = os.lstat(trigger)
        assert stat.S_ISREG(info.st_mode) and info.st_nlink == 1
        trigger.unlink()
    assert (tmp_path / "outside").read_bytes() == emailrelay_envelope()  # not written into
    (spool_dir / TOOLS_LOCK_NAME).unlink()  # the runs above created it
    os.mkfifo(spool_dir / TOOLS_LOCK_NAME)
    code, stderr, took = run_with_deadline("relay-resubmit", spool_dir)
    assert code == os.EX_CONFIG and took < 10
    assert "a FIFO" in stderr and TOOLS_LOCK_NAME in stderr


def test_trigger_scan_replaces_a_fifo_without_blocking(spool: Spool) -> None:
    """Spool.trigger_scan (intake's and the tools' hint) returns at once on a FIFO."""
    os.mkfifo(spool.path / TRIGGER_NAME)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (spool.trigger_scan(), done.set()), daemon=True)
    thread.start()
    assert done.wait(5), "trigger_scan blocked on a FIFO"
    assert stat.S_ISREG(os.lstat(spool.path / TRIGGER_NAME).st_mode)


def test_recovery_moves_a_hostile_busy_to_bad_and_goes_on(spool: Spool) -> None:
    """A symlink or FIFO `.busy` never stops the recovery: it goes to `.bad` unopened, a
    directory named like old debris is left alone, and a dead worker's real `.busy`
    beside them is still put back."""
    os.symlink("/etc/passwd", spool.envelope_path("link", State.BUSY))
    os.mkfifo(spool.envelope_path("fifo", State.BUSY))
    old = time.time() - 7 * 86400
    for name in ("dir.envelope.new", "dir2.content"):
        (spool.path / name).mkdir()
        os.utime(spool.path / name, (old, old))
    real = spool.store(b"x\r\n", ENVELOPE)
    os.rename(spool.envelope_path(real, State.READY), spool.envelope_path(real, State.BUSY))
    report = recover(spool)
    assert report.busy_recovered == [real]
    assert sorted(report.left_alone) == ["dir", "dir2"]
    assert spool.envelope_path("link", State.BAD).is_symlink()
    assert stat.S_ISFIFO(os.lstat(spool.envelope_path("fifo", State.BAD)).st_mode)


@pytest.mark.parametrize("kind", KINDS)
def test_open_regular_refuses_each_kind_on_the_descriptor(kind: str, tmp_path: Path) -> None:
    """open_regular refuses every kind, for reading and for appending, without blocking."""
    path = tmp_path / "victim.content"
    found = plant(kind, path, tmp_path / "outside")
    for flags in (os.O_RDONLY, os.O_RDWR | os.O_APPEND):
        with pytest.raises(HostileFile) as refused:
            open_regular(str(path), flags)
        assert found in str(refused.value) or (kind == "directory" and "directory" in str(
            refused.value))


def test_intakes_fsync_of_a_file_swapped_for_a_fifo_fails_that_message(spool: Spool) -> None:
    """The storage process fsyncs a batch's files by name: a `.envelope.new` swapped for a
    FIFO meanwhile fails that message (its files removed), at once, and its neighbour in
    the batch is accepted."""
    pending = []
    for _ in range(2):
        writer = spool.writer()
        writer.write(b"Subject: x\r\n\r\nx\r\n")
        pending.append(writer.finish(ENVELOPE, sync=False))
    os.unlink(pending[0].new_path)
    os.mkfifo(pending[0].new_path, 0o600)
    results: list[list[OSError | None]] = []
    thread = threading.Thread(target=lambda: results.append(
        spool.commit(pending, sync_files=True)), daemon=True)
    thread.start()
    thread.join(5)
    assert results, "the fsync blocked on a FIFO"
    first, second = results[0]
    assert isinstance(first, HostileFile) and "a FIFO" in str(first)
    assert second is None
    assert sorted(os.listdir(spool.path)) == sorted(
        [f"{pending[1].message_id}.content", f"{pending[1].message_id}.envelope"])
