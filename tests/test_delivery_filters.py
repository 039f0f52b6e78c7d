"""The `deliver:` and `copy:` server filters: local delivery into mailboxes and maildirs.

Real relay-intake with the `account:` verifier (or a verifier script) naming local
mailboxes; the mailbox directories and maildirs are real directories beside the spool.
"""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest
from support.intake import MESSAGE, IntakeThread
from support.spool import accepted, spool_files

from intake.main import main as intake_main

LOCAL_VERIFIER = """#!/bin/sh
case "$1" in
  *@local.test) echo "Local"; echo "${1%@local.test}"; exit 0 ;;
  *) echo ""; echo "$1"; exit 1 ;;
esac
"""


def verifier(tmp_path: Path) -> str:
    path = tmp_path / "verify"
    path.write_text(LOCAL_VERIFIER)
    path.chmod(0o755)
    return str(path)


def test_deliver_local_only_goes_to_mailboxes(spool_dir: Path, tmp_path: Path) -> None:
    """Only local recipients: one copy per mailbox (created), a maildir gets the content in
    new/, the original leaves the spool; the client is told 250."""
    boxes = tmp_path / "boxes"
    (boxes / "carol" / "tmp").mkdir(parents=True)
    (boxes / "carol" / "cur").mkdir()
    (boxes / "carol" / "new").mkdir()
    with IntakeThread(spool_dir, "--address-verifier", verifier(tmp_path), "--filter",
                      "deliver:", "--delivery-dir", str(boxes)) as intake, \
            intake.smtp() as client:
        client.sendmail("a@x.test", ["alice@local.test", "carol@local.test"], MESSAGE)
    assert spool_files(spool_dir) == []
    alice = sorted(path.name for path in (boxes / "alice").iterdir())
    assert len(alice) == 2 and alice[0].endswith(".content") and alice[1].endswith(".envelope")
    (maildir_copy,) = (boxes / "carol" / "new").iterdir()
    assert maildir_copy.read_bytes().endswith(MESSAGE)
    assert list((boxes / "carol" / "tmp").iterdir()) == []


def test_deliver_with_remote_recipients_keeps_the_message(spool_dir: Path,
                                                          tmp_path: Path) -> None:
    """Local and remote recipients: the mailbox copy, and the message stays to be forwarded."""
    with IntakeThread(spool_dir, "--address-verifier", verifier(tmp_path), "--filter",
                      "deliver:") as intake, intake.smtp() as client:
        client.sendmail("a@x.test", ["bob@local.test", "far@remote.test"], MESSAGE)
    ((envelope, _content),) = accepted(spool_dir)
    assert envelope.to_local == ("bob",) and envelope.to_remote == ("far@remote.test",)
    assert len(list((spool_dir / "bob").iterdir())) == 2


def test_deliver_with_the_account_verifier(spool_dir: Path, tmp_path: Path) -> None:
    """E-MailRelay's pairing: `--address-verifier account: --filter deliver:`."""
    uid = pwd.getpwnam("root").pw_uid
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    with IntakeThread(spool_dir, "--address-verifier", f"account:{uid}-{uid}", "--filter",
                      "deliver:", "--delivery-dir", str(boxes)) as intake, \
            intake.smtp() as client:
        client.sendmail("a@x.test", ["root@intake.test"], MESSAGE)
    assert spool_files(spool_dir) == []
    assert len(list((boxes / "root").iterdir())) == 2


def test_copy_into_every_subdirectory(spool_dir: Path) -> None:
    """`copy:`: a copy in each subdirectory but postmaster and dot-directories; the
    original goes. `copy:nodelete` keeps it."""
    for name in ("alice", "bob", "postmaster", ".hidden"):
        (spool_dir / name).mkdir()
    with IntakeThread(spool_dir, "--filter", "copy:") as intake, intake.smtp() as client:
        client.sendmail("a@x.test", ["b@y.test"], MESSAGE)
    assert spool_files(spool_dir) == ["alice", "bob", "postmaster"]
    assert len(list((spool_dir / "alice").iterdir())) == 2
    assert len(list((spool_dir / "bob").iterdir())) == 2
    assert list((spool_dir / "postmaster").iterdir()) == []
    with IntakeThread(spool_dir, "--filter", "copy:nodelete") as intake, \
            intake.smtp() as client:
        client.sendmail("a@x.test", ["b@y.test"], MESSAGE)
    assert len(accepted(spool_dir)) == 1
    assert len(list((spool_dir / "alice").iterdir())) == 4


@pytest.mark.parametrize("spec", ["copy:pop", "deliver:bogus"])
def test_bad_delivery_spec_stops_intake_with_78(spool_dir: Path, spec: str) -> None:
    """A parameter relay does not have (pop: there is no POP server): exit 78 at start."""
    assert intake_main(["--spool-dir", str(spool_dir), "--port", "0", "--filter", spec]) == 78
