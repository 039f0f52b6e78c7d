"""relay-intake's server filters and address verifier, with real #!/bin/sh programs."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest
from support.intake import MESSAGE, IntakeThread, RawClient
from support.spool import accepted, spool_files, strip_received

from common.programs import ProgramResult
from intake.filters import FilterAction, interpret_filter
from spool.names import TRIGGER_NAME


def script(tmp_path: Path, name: str, body: str) -> Path:
    """An executable /bin/sh script in tmp_path."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def send(intake: IntakeThread, recipients: list[str] | None = None) -> None:
    with intake.smtp() as client:
        client.sendmail("a@example.org", recipients or ["b@example.com"], MESSAGE)


def test_filter_accepts_and_may_edit_the_new_files(spool_dir: Path, tmp_path: Path) -> None:
    """Exit 0: the filter ran on content + .envelope.new (in order); its edit is kept."""
    seen = tmp_path / "seen"
    addsig = script(tmp_path, "addsig", f'echo "$1 $2" >> {seen}\n'
                    'printf -- "-- \\r\\nsent through relay\\r\\n" >> "$1"\nexit 0\n')
    second = script(tmp_path, "second", f'echo second >> {seen}\nexit 101\n')
    with IntakeThread(spool_dir, "--filter", str(addsig), "--filter", str(second)) as intake:
        send(intake)
    ((_envelope, content),) = accepted(spool_dir)
    assert strip_received(content) == MESSAGE + b"-- \r\nsent through relay\r\n"
    first_line, second_line = seen.read_text().splitlines()
    content_path, envelope_path = first_line.split()
    assert content_path.endswith(".content") and envelope_path.endswith(".envelope.new")
    assert second_line == "second"
    assert not (spool_dir / TRIGGER_NAME).exists()


@pytest.mark.parametrize(("output", "expected"), [
    ("<<550 no spam here>>", "550 no spam here"),
    ("<<554 5.7.1 no>>", "554 5.7.1 no"),
    ("[[try again]]", "452 try again"),
    ("nothing to say", "452 rejected"),
])
def test_filter_rejects_with_its_reply_and_files_go(spool_dir: Path, tmp_path: Path,
                                                    output: str, expected: str) -> None:
    """Exit 1-99: the reply is the <<...>> text as E-MailRelay sends it; nothing left."""
    reject = script(tmp_path, "reject", f"echo '{output}'\nexit 7\n")
    with IntakeThread(spool_dir, "--filter", str(reject)) as intake:
        with pytest.raises(smtplib.SMTPDataError) as error:
            send(intake)
        reply = f"{error.value.smtp_code} {error.value.smtp_error.decode()}"
        assert reply == expected
        assert spool_files(spool_dir) == []


@pytest.mark.parametrize("code", [100, 102])
def test_filter_abandon_commits_what_it_left(spool_dir: Path, tmp_path: Path, code: int) -> None:
    """Exit 100/102 leaving the files: 250 and committed (E-MailRelay's token effort)."""
    keeper = script(tmp_path, "keeper", f"exit {code}\n")
    with IntakeThread(spool_dir, "--filter", str(keeper)) as intake:
        send(intake)
    assert len(accepted(spool_dir)) == 1
    assert (spool_dir / TRIGGER_NAME).exists() == (code == 102)


@pytest.mark.parametrize("code", [100, 102])
def test_filter_took_the_message(spool_dir: Path, tmp_path: Path, code: int) -> None:
    """Exit 100/102 after removing the files: 250, nothing committed, nothing left."""
    keep = tmp_path / "kept"
    keep.mkdir()
    taker = script(tmp_path, "taker", f'cp "$1" {keep}/\nrm -f "$1" "$2"\nexit {code}\n')
    with IntakeThread(spool_dir, "--filter", str(taker)) as intake:
        send(intake)
    assert spool_files(spool_dir) == []
    assert len(list(keep.iterdir())) == 1
    assert (spool_dir / TRIGGER_NAME).exists() == (code == 102)


def test_filter_103_accepts_and_triggers_a_scan(spool_dir: Path, tmp_path: Path) -> None:
    """Exit 103: accepted and the deliver scan trigger is touched."""
    with IntakeThread(spool_dir, "--filter", str(script(tmp_path, "f", "exit 103\n"))) as intake:
        send(intake)
    assert len(accepted(spool_dir)) == 1
    assert (spool_dir / TRIGGER_NAME).exists()


@pytest.mark.parametrize(("body", "expected"), [
    ("echo '<<550 5.7.1 unknown code>>'\nexit 120\n", "550 5.7.1 unknown code"),
    ("exit 104\n", "452 rejected"),
    ("kill -9 $$\n", "452 rejected"),
    ("sleep 10\n", "452 error"),
])
def test_other_exits_crash_and_timeout_refuse(spool_dir: Path, tmp_path: Path, body: str,
                                              expected: str) -> None:
    """Any other exit, a crash or a timeout refuses (452 unless the filter says), files go."""
    broken = script(tmp_path, "broken", body)
    with IntakeThread(spool_dir, "--filter", str(broken), "--filter-timeout", "0.5") as intake:
        with pytest.raises(smtplib.SMTPDataError) as error:
            send(intake)
        assert f"{error.value.smtp_code} {error.value.smtp_error.decode()}" == expected
        assert spool_files(spool_dir) == []
    assert (spool_dir / TRIGGER_NAME).exists() == body.startswith("exit 104")


def test_filter_leaving_a_background_child_is_done_at_exit(spool_dir: Path,
                                                           tmp_path: Path) -> None:
    """A filter that exits 0 with a child holding its stdout: 250 at once, not a timeout."""
    forker = script(tmp_path, "forker", "sleep 30 &\nexit 0\n")
    started = time.monotonic()
    with IntakeThread(spool_dir, "--filter", str(forker), "--filter-timeout", "20") as intake:
        send(intake)
    assert time.monotonic() - started < 10
    assert len(accepted(spool_dir)) == 1


def test_filter_exit_codes_table() -> None:
    """interpret_filter maps every exit code as E-MailRelay 2.6.1's server side does."""
    def outcome(code: int | None, out: str = "") -> FilterAction:
        return interpret_filter(ProgramResult(code, out, ""), "f").action

    assert outcome(0) is outcome(101) is outcome(103) is FilterAction.ACCEPT
    assert outcome(100) is outcome(102) is FilterAction.ABANDON
    assert all(outcome(code) is FilterAction.REJECT
               for code in (1, 50, 99, 104, 105, 255, -9, None))
    assert interpret_filter(ProgramResult(3, "<<554 go away>>", ""), "f").reply == "554 go away"
    assert interpret_filter(ProgramResult(None, "", ""), "f").reply == "452 error"


def verifier(tmp_path: Path, log: Path) -> Path:
    """A verifier that logs its arguments and answers by the recipient's local part."""
    return script(tmp_path, "verifier", f"""echo "$@" >> {log}
case "$1" in
  local@*) echo "Local Person"; echo "mailbox1"; exit 0 ;;
  remote@*) echo "Remote"; echo "rewritten@example.net"; exit 1 ;;
  nobody@*) echo "no such user here"; exit 2 ;;
  later@*) echo "busy"; exit 3 ;;
  drop@*) exit 100 ;;
  *) exit 42 ;;
esac
""")


def test_verifier_each_exit_code(spool_dir: Path, tmp_path: Path) -> None:
    """0 -> To-Local mailbox, 1 -> To-Remote address, 2 -> 550, 3 -> 450, other -> 550."""
    log = tmp_path / "args"
    with IntakeThread(spool_dir, "--address-verifier", str(verifier(tmp_path, log))) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        assert raw.command(b"MAIL FROM:<a@example.org>")[:3] == "250"
        assert raw.command(b"RCPT TO:<local@example.com>")[:3] == "250"
        assert raw.command(b"RCPT TO:<remote@example.com>")[:3] == "250"
        nobody = raw.command(b"RCPT TO:<nobody@example.com>")
        assert nobody.startswith("550") and "no such user here" in nobody
        assert raw.command(b"RCPT TO:<later@example.com>").startswith("450")
        assert raw.command(b"RCPT TO:<other@example.com>").startswith("550")
        assert raw.command(b"DATA")[:3] == "354"
        raw.send(MESSAGE.replace(b"\n..", b"\n.") + b".\r\n")
        assert raw.reply()[:3] == "250"
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.to_local == ("mailbox1",)
    assert envelope.to_remote == ("rewritten@example.net",)
    first = log.read_text().splitlines()[0].split(" ")
    assert first[0] == "local@example.com" and first[1] == "a@example.org"
    assert first[2].startswith("127.0.0.1:") and first[3] == "intake.test"
    assert first[4] == "none"


def test_verifier_100_drops_the_connection(spool_dir: Path, tmp_path: Path) -> None:
    """Exit 100: the connection is closed; nothing is stored; others are still served."""
    log = tmp_path / "args"
    with IntakeThread(spool_dir, "--address-verifier", str(verifier(tmp_path, log))) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        raw.command(b"MAIL FROM:<a@example.org>")
        assert raw.command(b"RCPT TO:<drop@example.com>").startswith("421")
        assert raw.closed()
        assert spool_files(spool_dir) == []
        with intake.smtp() as client:
            client.sendmail("a@example.org", ["remote@example.com"], MESSAGE)
    assert len(accepted(spool_dir)) == 1
