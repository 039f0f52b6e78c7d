"""relay-notify killed (SIGKILL, spool.testhooks) at each step of a bounce, then run again:
exactly one notification per failed message in the end, never none, never two.

Real relay-notify subprocesses on real spool directories; the crash points are the store's
own (content written ... directory synced) and notify's (notification stored, failed
message cleared, notification released).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.emailrelay import EMAILRELAY
from support.programs import run_tool
from support.sink import Sink
from support.spool import spool_files
from support.tools import emailrelay_envelope, failures_of, write_bad

from spool import Spool, State, parse_envelope, recover, scan_due
from spool.envelope import trailer_fields
from spool.notifications import ANSWERS_KEY

FAILED = ("emailrelay.9.1700000000.1", "emailrelay.9.1700000000.2")
STORE_POINTS = ["content_written", "fsync_content", "content_synced", "envelope_written",
                "fsync_envelope", "envelope_synced", "rename_envelope", "fsync_directory",
                "directory_synced"]
NOTIFY_POINTS = ["notification_stored", "failed_message_cleared", "notification_released"]
# After these, the first notification is stored (renamed to `.envelope.dsn`) but not released.
UNRELEASED_POINTS = ["fsync_directory", "directory_synced", "notification_stored",
                     "failed_message_cleared"]


def notify(spool_dir: Path, *args: str, crash_at: str | None = None) -> tuple[int, str]:
    env = {"RELAY_TEST_CRASH_AT": crash_at} if crash_at else None
    result = run_tool("relay-notify", "--spool-dir", str(spool_dir), "--domain", "relay.test",
                      *args, env=env)
    return result.returncode, result.stderr.decode()


def two_failed_messages(spool_dir: Path) -> None:
    for number, message_id in enumerate(FAILED):
        write_bad(spool_dir, message_id,
                  emailrelay_envelope(sender=f"sender{number}@example.com",
                                      failures=failures_of(5)))


def notifications(spool_dir: Path, state: State) -> dict[str, str]:
    """{failed message id: notification id} for each notification in *state*."""
    found: dict[str, str] = {}
    for name in spool_files(spool_dir):
        if not name.endswith(state.suffix) or name.count(".envelope") != 1:
            continue
        dsn_id = name[: -len(state.suffix)]
        if state is State.READY and name != f"{dsn_id}.envelope":
            continue
        envelope = parse_envelope((spool_dir / name).read_bytes())
        marks = [value for key, value in trailer_fields(envelope.trailer) if key == ANSWERS_KEY]
        if not marks:
            continue  # a message, not a notification
        (answers,) = marks
        assert answers not in found, f"two notifications for {answers}"
        assert (spool_dir / f"{dsn_id}.content").is_file()
        found[answers] = dsn_id
    return found


@pytest.mark.parametrize(("point", "keep"),
                         [(point, False) for point in STORE_POINTS + NOTIFY_POINTS]
                         + [(point, True) for point in NOTIFY_POINTS])  # --keep: after the store
def test_kill_at_each_step_then_exactly_one_notification(spool_dir: Path, point: str,
                                                          keep: bool) -> None:
    """Killed at *point* during the first bounce, the next run ends with one DSN per message."""
    two_failed_messages(spool_dir)
    extra = ("--keep",) if keep else ()
    code, stderr = notify(spool_dir, *extra, crash_at=point)
    assert code == -signal.SIGKILL, (code, stderr)
    released = notifications(spool_dir, State.READY)
    unreleased = notifications(spool_dir, State.DSN)
    spool = Spool(spool_dir)
    # Nothing deliver would forward yet, unless the kill came after the release.
    assert list(released) == ([FAILED[0]] if point == "notification_released" else [])
    assert scan_due(spool).due == list(released.values())
    assert list(unreleased) == ([FAILED[0]] if point in UNRELEASED_POINTS else [])
    failed_left = [m for m in FAILED if (spool_dir / f"{m}.envelope.bad").exists()]
    cleared = point in ("failed_message_cleared", "notification_released")
    assert failed_left == ([FAILED[1]] if cleared else list(FAILED))

    code, stderr = notify(spool_dir, *extra)
    assert code == 0, stderr
    assert notifications(spool_dir, State.DSN) == {}
    final = notifications(spool_dir, State.READY)
    assert sorted(final) == sorted(FAILED)  # one each: none lost, none twice
    if point == "failed_message_cleared":  # the one already cleared was released, not redone
        assert final[FAILED[0]] == unreleased[FAILED[0]]
    if point in UNRELEASED_POINTS[:3]:  # its message was still there: bounced again
        assert final[FAILED[0]] != unreleased[FAILED[0]]
    assert not list(spool_dir.glob("*.envelope.bad"))
    kept = sorted(p.name for p in (spool_dir / "failed").glob("*")) if keep else []
    assert kept == ([f"{m}.{s}" for m in FAILED for s in ("content", "envelope.bad")]
                    if keep else [])
    # What a store killed half-way left is debris deliver's recovery removes when old.
    recover(spool, now=time.time() + 7 * 24 * 3600)
    names = spool_files(spool_dir)
    assert sorted(names) == sorted(
        [f"{d}.content" for d in final.values()] + [f"{d}.envelope" for d in final.values()]
        + (["failed"] if keep else []))


def test_unreleased_notification_of_a_requeued_message_is_removed(spool_dir: Path) -> None:
    """A kill after the store, then relay-resubmit: the message is retried, no DSN goes."""
    two_failed_messages(spool_dir)
    code, _ = notify(spool_dir, crash_at="notification_stored")
    assert code == -signal.SIGKILL
    (spool_dir / f"{FAILED[0]}.envelope.bad").rename(spool_dir / f"{FAILED[0]}.envelope")
    (spool_dir / f"{FAILED[1]}.envelope.bad").unlink()
    code, stderr = notify(spool_dir)
    assert code == 0, stderr
    assert notifications(spool_dir, State.DSN) == {}
    assert notifications(spool_dir, State.READY) == {}
    assert "notification_redone" in stderr


def test_dry_run_says_what_it_would_settle_and_changes_nothing(spool_dir: Path) -> None:
    """--dry-run after a kill names the unreleased notification and leaves every file."""
    two_failed_messages(spool_dir)
    code, _ = notify(spool_dir, crash_at="failed_message_cleared")
    assert code == -signal.SIGKILL
    before = spool_files(spool_dir)
    result = run_tool("relay-notify", "--spool-dir", str(spool_dir), "--dry-run")
    assert result.returncode == 0, result.stderr
    (dsn_id,) = notifications(spool_dir, State.DSN).values()
    assert f"would release notification {dsn_id}".encode() in result.stdout
    assert spool_files(spool_dir) == before


def test_unreadable_unreleased_notification_is_left_for_a_person(spool_dir: Path) -> None:
    """A FIFO or a foreign file under a `.envelope.dsn` name is named on stderr, not touched."""
    os.mkfifo(spool_dir / "planted.envelope.dsn")
    (spool_dir / "foreign.envelope.dsn").write_bytes(emailrelay_envelope())
    code, stderr = notify(spool_dir)
    assert code == 0, stderr
    assert "planted.envelope.dsn" in stderr and "foreign.envelope.dsn" in stderr
    assert "remove it by hand" in stderr
    assert spool_files(spool_dir) == ["foreign.envelope.dsn", "planted.envelope.dsn"]


def test_relay_queue_bounce_killed_after_the_store_bounces_once(spool_dir: Path) -> None:
    """relay-queue bounce stores unreleased as notify does: killed, then again, one DSN."""
    two_failed_messages(spool_dir)
    args = ("relay-queue", "--spool-dir", str(spool_dir), "bounce", FAILED[0],
            "--domain", "relay.test")
    killed = run_tool(*args, env={"RELAY_TEST_CRASH_AT": "notification_stored"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(notifications(spool_dir, State.DSN)) == [FAILED[0]]
    assert notifications(spool_dir, State.READY) == {}
    again = run_tool(*args)
    assert again.returncode == 0, again.stderr
    assert list(notifications(spool_dir, State.READY)) == [FAILED[0]]
    assert notifications(spool_dir, State.DSN) == {}
    assert not (spool_dir / f"{FAILED[0]}.envelope.bad").exists()


@pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK),
                    reason="E-MailRelay 2.6.1 is not built here")
def test_the_real_emailrelay_leaves_an_unreleased_notification_alone(spool_dir: Path) -> None:
    """`emailrelay --as-client` over a spool with a `.envelope.dsn` forwards nothing and
    leaves it; once relay-notify has released it, the same run forwards the DSN."""
    two_failed_messages(spool_dir)
    for suffix in (".envelope.bad", ".content"):  # one failed message is enough here
        (spool_dir / f"{FAILED[1]}{suffix}").unlink()
    code, _ = notify(spool_dir, crash_at="failed_message_cleared")
    assert code == -signal.SIGKILL
    unreleased = notifications(spool_dir, State.DSN)
    assert list(unreleased) == [FAILED[0]]
    before = spool_files(spool_dir)
    with Sink() as sink:
        command = [str(EMAILRELAY), "--as-client", sink.address, "--spool-dir", str(spool_dir),
                   "--no-syslog"]
        subprocess.run(command, check=True, timeout=30, capture_output=True)
        assert sink.messages == []
        assert spool_files(spool_dir) == before
        code, stderr = notify(spool_dir)
        assert code == 0, stderr
        subprocess.run(command, check=True, timeout=30, capture_output=True)
        (received,) = sink.messages
    assert received.mail_from == "<>" and received.rcpt_tos == ["sender0@example.com"]
    assert spool_files(spool_dir) == []
