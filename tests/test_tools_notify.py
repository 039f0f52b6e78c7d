"""relay-notify as a subprocess against real spools: DSNs stored, procmail, keep, injection."""

from __future__ import annotations

import email
import email.policy
import os
from email.message import EmailMessage
from pathlib import Path

from support.programs import run_tool
from support.spool import spool_files
from support.tools import CONTENT, emailrelay_envelope, failures_of, write_bad

from spool import State, parse_envelope


def notify(spool_dir: Path, *args: str, **kwargs: object) -> tuple[int, bytes, bytes]:
    result = run_tool("relay-notify", "--spool-dir", str(spool_dir), "--domain", "relay.test",
                      *args, **kwargs)  # type: ignore[arg-type]
    return result.returncode, result.stdout, result.stderr


def stored_dsns(spool_dir: Path) -> list[tuple[str, bytes]]:
    """(id, content) of every waiting message in the spool."""
    found = []
    for name in spool_files(spool_dir):
        if name.endswith(State.READY.suffix):
            message_id = name[: -len(State.READY.suffix)]
            found.append((message_id, (spool_dir / f"{message_id}.content").read_bytes()))
    return found


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_dsn_stored_with_null_sender_and_failed_message_removed(spool_dir: Path) -> None:
    """A message that failed 5 times: a DSN to its sender is spooled (From <>), the .bad goes."""
    failures = [*failures_of(4), ("550 5.1.1 <alice@example.org>: no such user", "550")]
    write_bad(spool_dir, "emailrelay.9.1700000000.1", emailrelay_envelope(failures=failures))
    code, stdout, stderr = notify(spool_dir)
    assert (code, stdout, stderr) == (0, b"", b"")  # silent on success
    (dsn_id, data), = stored_dsns(spool_dir)
    assert spool_files(spool_dir) == [f"{dsn_id}.content", f"{dsn_id}.envelope"]
    envelope = parse_envelope((spool_dir / f"{dsn_id}.envelope").read_bytes())
    assert envelope.sender == ""
    assert envelope.to_remote == ("bob@example.com",)
    assert envelope.body_type == "7bit"
    dsn = parse(data)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn["From"].addresses[0].addr_spec == "MAILER-DAEMON@relay.test"
    assert dsn["To"].addresses[0].addr_spec == "bob@example.com"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["Date"] and dsn["Message-ID"]
    human, status, headers = dsn.iter_parts()
    assert "no such user" in human.get_content()
    per_message, recipient = status.get_payload()
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert recipient["Final-Recipient"] == "rfc822; alice@example.org"
    assert recipient["Status"] == "5.1.1"
    assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 <alice@example.org>: no such user"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: quarterly figures" in headers.get_content()
    assert (spool_dir / ".relay-scan-now").exists()  # deliver is asked to scan


def test_only_messages_past_max_retries_unless_all(spool_dir: Path) -> None:
    """4 failures of 5 are left for resubmit; --all notifies about them too (4xx -> 4.0.0)."""
    write_bad(spool_dir, "m1", emailrelay_envelope(failures=[("451 try later", "451")] * 4))
    assert notify(spool_dir)[0] == 0
    assert spool_files(spool_dir) == ["m1.content", "m1.envelope.bad"]
    assert notify(spool_dir, "--max-retries", "4")[0] == 0
    (_, data), = stored_dsns(spool_dir)
    assert list(parse(data).iter_parts())[1].get_payload()[1]["Status"] == "4.0.0"
    write_bad(spool_dir, "m2", emailrelay_envelope(failures=failures_of(1)))
    assert notify(spool_dir, "--all")[0] == 0
    assert len(stored_dsns(spool_dir)) == 2
    assert not any(name.endswith(".bad") for name in spool_files(spool_dir))


def test_no_notification_for_null_sender(spool_dir: Path) -> None:
    """A failed bounce (sender <>) is removed without any notification: no bounce loops."""
    write_bad(spool_dir, "bounce", emailrelay_envelope(sender="", failures=failures_of(5)))
    assert notify(spool_dir)[0] == 0
    assert spool_files(spool_dir) == []


def test_keep_moves_failed_message_to_failed_folder(spool_dir: Path) -> None:
    """--keep moves envelope and content, unchanged, into failed/ (bounces too)."""
    envelope = emailrelay_envelope(failures=failures_of(5))
    bounce = emailrelay_envelope(sender="", failures=failures_of(5))
    write_bad(spool_dir, "m1", envelope)
    write_bad(spool_dir, "b1", bounce)
    assert notify(spool_dir, "--keep")[0] == 0
    failed = spool_dir / "failed"
    assert sorted(os.listdir(failed)) == [
        "b1.content", "b1.envelope.bad", "m1.content", "m1.envelope.bad"]
    assert (failed / "m1.envelope.bad").read_bytes() == envelope
    assert (failed / "m1.content").read_bytes() == CONTENT
    assert (failed / "b1.envelope.bad").read_bytes() == bounce
    assert len(stored_dsns(spool_dir)) == 1  # for m1 only


def test_dry_run_changes_nothing(spool_dir: Path) -> None:
    """--dry-run says what it would do and leaves the spool as it was."""
    write_bad(spool_dir, "m1", emailrelay_envelope(failures=failures_of(5)))
    write_bad(spool_dir, "b1", emailrelay_envelope(sender="", failures=failures_of(5)))
    before = spool_files(spool_dir)
    code, stdout, _ = notify(spool_dir, "--dry-run")
    assert code == 0
    assert b"would notify bob@example.com about m1" in stdout
    assert b"would remove b1 (null sender" in stdout
    assert spool_files(spool_dir) == before


def test_envelope_our_parser_refuses_is_still_notified(spool_dir: Path) -> None:
    """An LF-only, ToCount-less .bad still yields a DSN to its X-MailRelay-From."""
    write_bad(spool_dir, "odd", b"X-MailRelay-Format: #2821.8\nX-MailRelay-From: carol@ex.org\n"
              b"X-MailRelay-To-Remote: dave@ex.net\nX-MailRelay-End: 1\n"
              + b"X-MailRelay-Reason: 554 rejected\nX-MailRelay-ReasonCode: 554\n" * 5)
    assert notify(spool_dir)[0] == 0
    (dsn_id, data), = stored_dsns(spool_dir)
    assert parse_envelope((spool_dir / f"{dsn_id}.envelope").read_bytes()).to_remote == (
        "carol@ex.org",)
    assert "rfc822; dave@ex.net" in data.decode()


def test_injection_in_reasons_and_addresses_runs_nothing(spool_dir: Path, tmp_path: Path) -> None:
    """Backticks, $(...), ;, ../ and line breaks in reasons and addresses stay inert text."""
    work = tmp_path / "cwd"
    work.mkdir()
    nasty_reason = ("550 `touch pwned1` $(touch pwned2); touch pwned3 ../../escape\r"
                    "Bcc: victim@example.net")
    sender = "`touch pwned4`$(touch${IFS}pwned5);x@example.com"
    rcpt = "../../../etc/passwd@example.org"
    envelope = emailrelay_envelope(sender=sender, recipients=[rcpt],
                                   failures=[(nasty_reason, "550")] * 5)
    write_bad(spool_dir, "nasty", envelope)
    result = run_tool("relay-notify", "--spool-dir", str(spool_dir), "--domain", "relay.test",
                      cwd=work)
    assert result.returncode == 0, result.stderr
    assert os.listdir(work) == []
    assert sorted(os.listdir(tmp_path)) == ["cwd", "spool"]
    (dsn_id, data), = stored_dsns(spool_dir)
    assert parse_envelope((spool_dir / f"{dsn_id}.envelope").read_bytes()).to_remote == (sender,)
    dsn = parse(data)
    assert dsn["Bcc"] is None
    blocks = list(dsn.iter_parts())[1].get_payload()
    assert all(block["Bcc"] is None for block in blocks)
    assert blocks[1]["Final-Recipient"] == f"rfc822; {rcpt}"
    assert "`touch pwned1` $(touch pwned2)" in blocks[1]["Diagnostic-Code"]


def fake_procmail(directory: Path, exit_code: int = 0) -> dict[str, str]:
    """A `procmail` script first in PATH that records its arguments and input."""
    directory.mkdir()
    script = directory / "procmail"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {directory}/args\n"
                      f"cat > {directory}/input\nexit {exit_code}\n")
    script.chmod(0o755)
    return {"PATH": f"{directory}:{os.environ['PATH']}"}


def test_procmail_delivers_locally(spool_dir: Path, tmp_path: Path) -> None:
    """--procmail pipes the DSN to `procmail -d <local part>` and spools nothing."""
    env = fake_procmail(tmp_path / "bin")
    write_bad(spool_dir, "m1", emailrelay_envelope(sender="bob@example.com",
                                                   failures=failures_of(5)))
    code, _, stderr = notify(spool_dir, "--procmail", env=env)
    assert code == 0, stderr
    assert (tmp_path / "bin" / "args").read_text().split() == ["-d", "bob"]
    delivered = (tmp_path / "bin" / "input").read_bytes()
    assert b"\r\n" not in delivered  # a local mailbox gets Unix line ends
    assert parse(delivered).get_content_type() == "multipart/report"
    assert spool_files(spool_dir) == []


def test_procmail_failure_or_unsafe_user_keeps_the_message(spool_dir: Path,
                                                           tmp_path: Path) -> None:
    """procmail failing, or a sender whose local part is not a plain user name: exit 75, kept."""
    env = fake_procmail(tmp_path / "bin", exit_code=75)
    write_bad(spool_dir, "m1", emailrelay_envelope(failures=failures_of(5)))
    code, _, stderr = notify(spool_dir, "--procmail", env=env)
    assert code == os.EX_TEMPFAIL and b"exited 75" in stderr
    assert spool_files(spool_dir) == ["m1.content", "m1.envelope.bad"]
    (tmp_path / "bin" / "args").unlink()
    os.unlink(spool_dir / "m1.envelope.bad")
    write_bad(spool_dir, "m1", emailrelay_envelope(sender="-oevil@example.com",
                                                   failures=failures_of(5)))
    code, _, stderr = notify(spool_dir, "--procmail", env=env)
    assert code == os.EX_TEMPFAIL and b"no local user name" in stderr
    assert not (tmp_path / "bin" / "args").exists()  # procmail never ran
    assert spool_files(spool_dir) == ["m1.content", "m1.envelope.bad"]


def test_configuration_errors_exit_78(spool_dir: Path, tmp_path: Path) -> None:
    """A missing spool, a domain that could inject text, or no procmail: exit 78."""
    assert notify(tmp_path / "missing")[0] == os.EX_CONFIG
    result = run_tool("relay-notify", "--spool-dir", str(spool_dir), "--domain", "a\nb;c")
    assert result.returncode == os.EX_CONFIG
    code, _, stderr = notify(spool_dir, "--procmail", env={"PATH": str(tmp_path)})
    assert code == os.EX_CONFIG and b"procmail" in stderr


def test_missing_content_still_notifies(spool_dir: Path) -> None:
    """A .bad whose content is gone still gets its DSN (with no original headers) and goes."""
    write_bad(spool_dir, "m1", emailrelay_envelope(failures=failures_of(5)))
    os.unlink(spool_dir / "m1.content")
    assert notify(spool_dir)[0] == 0
    (_, data), = stored_dsns(spool_dir)
    assert not any(name.startswith("m1.") for name in spool_files(spool_dir))
    assert list(parse(data).iter_parts())[2].get_content_type() == "text/rfc822-headers"
