"""The durable store: modes, group commit, id clashes, fault injection, crashes, dir checks.

Real spool directories (tmp_path, 0700) and real child processes: faults come from
spool.testhooks (RELAY_TEST_FAIL_AT / RELAY_TEST_CRASH_AT), read by the child at import.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spool import (
    Envelope,
    HostileFile,
    Spool,
    SpoolError,
    State,
    check_spool_directory,
    parse_envelope,
)
from spool.claims import claim
from spool.names import parse_name
from spool.scan import recover, scan_due
from spool.store import _ids

CONTENT = b"Received: from test\r\nSubject: hi\r\n\r\nbody\r\n"
ENVELOPE = Envelope(sender="a@example.com", to_remote=("b@example.net",), client="192.0.2.1")

_CHILD_STORE = """
import errno, sys
from spool import Envelope, Spool
spool = Spool(sys.argv[1])
try:
    message_id = spool.store(b"Subject: x\\r\\n\\r\\nbody\\r\\n", Envelope(to_remote=("b@x",)))
except OSError as error:
    print("error", errno.errorcode[error.errno], error)
    sys.exit(3)
print("stored", message_id)
"""


def _store_in_child(spool_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_TEST_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", _CHILD_STORE, str(spool_dir)],
        env=environ, capture_output=True, text=True, timeout=60, check=False,
    )


def _names(spool_dir: Path) -> list[str]:
    return sorted(os.listdir(spool_dir))


def _accepted(spool_dir: Path) -> list[str]:
    """Ids that deliver would forward: a `.envelope` with its final name."""
    return [
        parsed[0]
        for name in os.listdir(spool_dir)
        if (parsed := parse_name(name)) is not None and parsed[1] is State.READY
    ]


def test_stored_files_are_0660_less_umask_and_parse(spool: Spool) -> None:
    """A stored message is a 0660 (less the umask) content file with the exact bytes and a
    parsing .envelope."""
    message_id = spool.store(CONTENT, ENVELOPE)
    content = spool.content_path(message_id)
    envelope = spool.envelope_path(message_id, State.READY)
    for path in (content, envelope):
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660 & ~umask
    assert content.read_bytes() == CONTENT
    assert parse_envelope(envelope.read_bytes()) == ENVELOPE
    assert _names(spool.path) == sorted([content.name, envelope.name])


def test_id_looks_like_emailrelay(spool: Spool) -> None:
    """Ids are emailrelay.<pid>.<unix-time>.<seq>, like E-MailRelay's."""
    message_id = spool.store(CONTENT, ENVELOPE)
    word, pid, unix_time, seq = message_id.split(".")
    assert word == "emailrelay" and int(pid) == os.getpid()
    assert abs(int(unix_time) - time.time()) < 5 and int(seq) > 0


def test_store_accepts_chunks(spool: Spool) -> None:
    """Content may come in chunks (any iterable of bytes); the bytes are kept exactly."""
    first = spool.store([b"a" * 70000, b"b", b""], ENVELOPE)
    assert spool.content_path(first).read_bytes() == b"a" * 70000 + b"b"
    second = spool.store(iter([CONTENT] * 1000), ENVELOPE)
    assert spool.content_path(second).read_bytes() == CONTENT * 1000


def test_batch_commit_accepts_every_message(spool: Spool) -> None:
    """Spool.commit renames a batch of pending messages with one directory fsync for all."""
    pending = []
    for number in range(5):
        writer = spool.writer()
        writer.write(CONTENT + str(number).encode())
        pending.append(writer.finish(Envelope(to_remote=(f"r{number}@x",))))
    assert _accepted(spool.path) == []  # nothing is accepted before the commit
    assert spool.commit(pending) == [None] * 5
    for number, message in enumerate(pending):
        path = spool.envelope_path(message.message_id, State.READY)
        assert parse_envelope(path.read_bytes()).to_remote == (f"r{number}@x",)
    assert not any(name.endswith(".new") for name in _names(spool.path))


def test_batch_commit_reports_a_vanished_message_and_keeps_the_rest(spool: Spool) -> None:
    """One message of a batch whose .new vanished gets its error; the others are accepted."""
    pending = []
    for _ in range(3):
        writer = spool.writer()
        writer.write(CONTENT)
        pending.append(writer.finish(ENVELOPE))
    os.unlink(pending[1].new_path)
    results = spool.commit(pending)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], FileNotFoundError)
    assert sorted(_accepted(spool.path)) == sorted([pending[0].message_id, pending[2].message_id])
    assert not pending[1].content_path.exists()


def test_id_clash_bumps_the_sequence(spool: Spool) -> None:
    """A file already at the next name (even a symlink) is left alone; the id bumps seq."""
    probe = _ids.next()
    _word, pid, unix_time, seq = probe.split(".")
    target = spool.path.parent / "target"
    target.write_bytes(b"untouched")
    planted = []
    for when in (int(unix_time), int(unix_time) + 1):  # the clock may tick meanwhile
        for step in (1, 2):
            name = spool.content_path(f"emailrelay.{pid}.{when}.{int(seq) + step}")
            if step == 1:
                os.symlink(target, name)
            else:
                name.write_bytes(b"old")
            planted.append(name)
    message_id = spool.store(CONTENT, ENVELOPE)
    assert int(message_id.split(".")[3]) >= int(seq) + 3
    assert target.read_bytes() == b"untouched"
    assert all(os.path.lexists(name) for name in planted)


def test_symlink_at_envelope_name_is_not_followed(spool: Spool) -> None:
    """A symlink planted at the .envelope.new name fails the store without touching its target."""
    target = spool.path.parent / "target"
    target.write_bytes(b"untouched")
    writer = spool.writer()
    writer.write(CONTENT)
    os.symlink(target, spool.envelope_path(writer.message_id, State.NEW))
    with pytest.raises(FileExistsError):
        writer.finish(ENVELOPE)
    writer.abort()
    assert target.read_bytes() == b"untouched"
    assert not spool.content_path(writer.message_id).exists()
    assert _accepted(spool.path) == []


def test_claim_does_not_follow_a_symlinked_envelope(spool: Spool) -> None:
    """A symlink named like a waiting envelope is never opened or claimed: it is moved to
    `.envelope.bad` as a link, and HostileFile says where it pointed."""
    target = spool.path.parent / "target"
    target.write_bytes(b"X-MailRelay-Format: #2821.8\r\n")
    os.symlink(target, spool.envelope_path("planted", State.READY))
    with pytest.raises(HostileFile, match=f"a symbolic link to {target}"):
        claim(spool, "planted")
    assert spool.envelope_path("planted", State.BAD).is_symlink()
    assert not spool.envelope_path("planted", State.READY).is_symlink()
    assert target.read_bytes() == b"X-MailRelay-Format: #2821.8\r\n"


@pytest.mark.parametrize(
    ("point", "code"),
    [
        ("fsync_content", "EIO"),
        ("fsync_envelope", "EIO"),
        ("fsync_directory", "EIO"),
        ("rename_envelope", "EIO"),
        ("directory_synced", "EIO"),
        ("fsync_content", "ENOSPC"),
        ("fsync_envelope", "ENOSPC"),
    ],
)
def test_injected_failure_propagates_and_leaves_nothing(
    spool_dir: Path, point: str, code: str
) -> None:
    """A failed fsync or rename raises that error and leaves no file at all in the spool."""
    result = _store_in_child(spool_dir, RELAY_TEST_FAIL_AT=f"{point}:{code}")
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith(f"error {code} "), result.stdout
    assert f"injected at {point}" in result.stdout
    assert _names(spool_dir) == []


def test_store_without_faults_in_child(spool_dir: Path) -> None:
    """The child used by the fault tests stores normally when no fault is asked for."""
    result = _store_in_child(spool_dir)
    assert result.returncode == 0, result.stderr
    assert _accepted(spool_dir) == [result.stdout.split()[1]]


CRASH_POINTS_BEFORE_RENAME = [
    "content_written", "fsync_content", "content_synced",
    "envelope_written", "fsync_envelope", "envelope_synced", "rename_envelope",
]
CRASH_POINTS_AFTER_RENAME = ["fsync_directory", "directory_synced"]


@pytest.mark.parametrize("point", CRASH_POINTS_BEFORE_RENAME + CRASH_POINTS_AFTER_RENAME)
def test_crash_leaves_whole_message_or_only_debris(spool_dir: Path, point: str) -> None:
    """SIGKILL at any step leaves an accepted message with content, or debris recover removes."""
    result = _store_in_child(spool_dir, RELAY_TEST_CRASH_AT=point)
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr)
    spool = Spool(spool_dir)
    accepted = _accepted(spool_dir)
    if point in CRASH_POINTS_AFTER_RENAME:
        assert len(accepted) == 1
        (message_id,) = accepted
        assert parse_envelope(spool.envelope_path(message_id, State.READY).read_bytes())
        assert spool.content_path(message_id).read_bytes().endswith(b"body\r\n")
    else:
        assert accepted == []
        assert _names(spool_dir)  # debris: content, maybe a .new
        assert all(n.endswith((".content", ".envelope.new")) for n in _names(spool_dir))
    assert scan_due(spool).due == accepted
    recover(spool)  # young debris may be a store in progress: kept
    assert _accepted(spool_dir) == accepted
    report = recover(spool, now=time.time() + 7 * 24 * 3600)
    remaining = _names(spool_dir)
    if accepted:
        assert len(remaining) == 2
    else:
        assert remaining == []
        assert report.new_removed or report.orphans_removed


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        ("missing", "does not exist"),
        ("file", "is not a directory"),
        ("symlink", "is a symbolic link"),
        ("others-writable", "is writable by others (mode 702); run: chmod o-w"),
    ],
)
def test_unsafe_spool_directory_is_refused(tmp_path: Path, make: str, problem: str) -> None:
    """A missing, non-directory, symlinked or world-writable spool dir is refused, clearly."""
    path = tmp_path / "spool"
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    if make == "file":
        path.write_bytes(b"")
    elif make == "symlink":
        path.symlink_to(real)
    elif make == "others-writable":
        path.mkdir()
        path.chmod(0o702)
    with pytest.raises(SpoolError) as caught:
        Spool(path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


def test_private_spool_directory_is_accepted(spool_dir: Path) -> None:
    """A 0700 directory owned by this user passes the check (and Spool(check=False) skips it)."""
    check_spool_directory(spool_dir)
    spool_dir.chmod(0o777)
    with pytest.raises(SpoolError):
        check_spool_directory(spool_dir)
    assert Spool(spool_dir, check=False).path == spool_dir


def test_trigger_file_is_not_a_message(spool: Spool) -> None:
    """trigger_scan touches .relay-scan-now, which no scan mistakes for a message."""
    spool.trigger_scan()
    assert (spool.path / ".relay-scan-now").exists()
    assert scan_due(spool).due == [] and scan_due(spool).counts == {}


def test_free_bytes_is_positive(spool: Spool) -> None:
    """free_bytes reports the space left on the spool's file system."""
    assert spool.free_bytes() > 0

