"""The tools with the real relay-deliver and an aiosmtpd sink: submit, fail, resubmit, notify."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from support.programs import run_tool
from support.sink import Sink
from support.spool import spool_files

from spool import parse_envelope


def deliver_once(spool_dir: Path, sink: Sink) -> None:
    result = run_tool("relay-deliver", "--once", "--spool-dir", str(spool_dir),
                      "--forward-to", sink.address, "--domain", "relay.test")
    assert result.returncode == 0, result.stderr.decode()


def bad_envelopes(spool_dir: Path) -> list[str]:
    return [name for name in spool_files(spool_dir) if name.endswith(".envelope.bad")]


def test_refused_mail_is_retried_then_bounced_through_deliver(spool_dir: Path,
                                                              sink: Sink) -> None:
    """A submitted message refused with 550 is resubmitted once, then its DSN goes out with <>."""
    sink.behaviour.rcpt_replies["alice@example.org"] = "550 5.1.1 <alice@example.org>: no such user"
    message = b"To: alice@example.org\nSubject: figures\n\nsee attached\n"
    submitted = run_tool("relay-submit", "-t", "-i", "-f", "bob@example.com",
                         "--spool-dir", str(spool_dir), stdin=message)
    assert submitted.returncode == 0, submitted.stderr
    deliver_once(spool_dir, sink)
    (bad,) = bad_envelopes(spool_dir)
    assert len(parse_envelope((spool_dir / bad).read_bytes()).reasons) == 1

    resubmit = ["relay-resubmit", "--spool-dir", str(spool_dir), "--max-retries", "2"]
    assert run_tool(*resubmit).returncode == 0
    assert bad_envelopes(spool_dir) == []
    deliver_once(spool_dir, sink)
    (bad,) = bad_envelopes(spool_dir)
    assert len(parse_envelope((spool_dir / bad).read_bytes()).reasons) == 2
    assert run_tool(*resubmit).returncode == 0
    assert bad_envelopes(spool_dir) == [bad]  # two failures: no more retries
    assert sink.messages == []

    notified = run_tool("relay-notify", "--spool-dir", str(spool_dir), "--max-retries", "2",
                        "--domain", "relay.test")
    assert (notified.returncode, notified.stdout, notified.stderr) == (0, b"", b"")
    deliver_once(spool_dir, sink)
    (received,) = sink.wait_for(1)
    assert received.mail_from == "<>"  # aiosmtpd reports MAIL FROM:<> as "<>"
    assert received.rcpt_tos == ["bob@example.com"]
    dsn = email.message_from_bytes(received.data, policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    status = list(dsn.iter_parts())[1].get_payload()[1]
    assert status["Final-Recipient"] == "rfc822; alice@example.org"
    assert status["Status"] == "5.1.1"
    assert spool_files(spool_dir) == []
