"""relay passes filters and verifiers what E-MailRelay 2.6.1 passes, value by value.

The same recording script runs as `--filter` and `--address-verifier` under relay-intake
and, when the built E-MailRelay binary is on this machine, under `emailrelay --as-server`;
each records its arguments, environment, working directory and standard input. The two
records must be equal once the things that differ by nature (client port, message ids,
spool paths) are normalised. Without the binary, relay's record is compared with the one
E-MailRelay 2.6.1 made (kept below, from a run of the real binary).
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.emailrelay import EMAILRELAY, EmailRelayServer, spool_in
from support.intake import IntakeThread
from support.sink import Sink

from deliver.main import main as deliver_main
from spool import Envelope, Spool, State
from spool.envelope import parse_envelope

MESSAGE = b"Subject: t\r\n\r\nhi\r\n"

RECORDER = """#!/bin/sh
out=$(mktemp "{dir}/record.XXXXXX")
{{ echo "KIND=$(basename "$0")"; echo "ARGC=$#"
  for a in "$@"; do echo "ARG=[$a]"; done
  echo "CWD=$(pwd)"; env -0 | tr '\\n\\0' '~\\n' | sort | sed 's/^/ENV=/'
  echo "STDIN=$(readlink /proc/$$/fd/0)"; }} > "$out"
case "$(basename "$0")" in verifier) echo ""; echo "$1"; exit 1 ;; esac
exit 0
"""

# E-MailRelay 2.6.1's record for the three sessions of `_sessions`, normalised.
EMAILRELAY_RECORD = [
    ["KIND=verifier", "ARGC=6", "ARG=[x@y.z]", "ARG=[a@b.c]", "ARG=[127.0.0.1:PORT]",
     "ARG=[intake.test]", "ARG=[plain]", "ARG=[alice]", "CWD=CWD", "ENV=IFS= \t~",
     "ENV=PATH=/usr/bin:/bin", "ENV=PWD=CWD", "STDIN=/dev/null"],
    ["KIND=filter", "ARGC=2", "ARG=[SPOOL/ID.content]", "ARG=[SPOOL/ID.envelope.new]",
     "CWD=CWD", "ENV=IFS= \t~", "ENV=PATH=/usr/bin:/bin", "ENV=PWD=CWD", "STDIN=/dev/null"],
    ["KIND=verifier", "ARGC=6", "ARG=[x@y.z]", "ARG=[a@b.c]", "ARG=[127.0.0.1:PORT]",
     "ARG=[intake.test]", "ARG=[login]", "ARG=[alice]", "CWD=CWD", "ENV=IFS= \t~",
     "ENV=PATH=/usr/bin:/bin", "ENV=PWD=CWD", "STDIN=/dev/null"],
    ["KIND=filter", "ARGC=2", "ARG=[SPOOL/ID.content]", "ARG=[SPOOL/ID.envelope.new]",
     "CWD=CWD", "ENV=IFS= \t~", "ENV=PATH=/usr/bin:/bin", "ENV=PWD=CWD", "STDIN=/dev/null"],
    ["KIND=verifier", "ARGC=6", "ARG=[x2@y.z]", "ARG=[]", "ARG=[127.0.0.2:PORT]",
     "ARG=[intake.test]", "ARG=[none]", "ARG=[trustkw]", "CWD=CWD", "ENV=IFS= \t~",
     "ENV=PATH=/usr/bin:/bin", "ENV=PWD=CWD", "STDIN=/dev/null"],
    ["KIND=filter", "ARGC=2", "ARG=[SPOOL/ID.content]", "ARG=[SPOOL/ID.envelope.new]",
     "CWD=CWD", "ENV=IFS= \t~", "ENV=PATH=/usr/bin:/bin", "ENV=PWD=CWD", "STDIN=/dev/null"],
]


def _script(path: Path, text: str) -> Path:
    """*text* as an executable script at *path*."""
    path.write_text(text)
    path.chmod(0o755)
    return path


def _setup(work: Path) -> tuple[Path, Path, Path, Path]:
    records = work / "records"
    records.mkdir()
    programs = [_script(work / name, RECORDER.format(dir=records))
                for name in ("filter", "verifier")]
    secrets = work / "secrets"
    secrets.write_text("server plain alice secret\nserver none 127.0.0.2 trustkw\n")
    return records, programs[0], programs[1], secrets


def _sessions(port: int) -> None:
    """AUTH PLAIN, AUTH LOGIN, then a trusted client (127.0.0.2) without AUTH."""
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
            smtp.ehlo()
            smtp.user, smtp.password = "alice", "secret"
            smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"),
                      initial_response_ok=mechanism == "PLAIN")
            smtp.sendmail("a@b.c", ["x@y.z"], MESSAGE)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10,
                      source_address=("127.0.0.2", 0)) as smtp:
        smtp.sendmail("", ["x2@y.z"], MESSAGE)


def _read(records: Path, spool: Path, cwd: Path) -> list[list[str]]:
    found = []
    for path in sorted(records.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        text = path.read_text()
        text = text.replace(str(spool), "SPOOL").replace(str(cwd), "CWD")
        text = re.sub(r"emailrelay\.\d+\.\d+\.\d+", "ID", text)
        text = re.sub(r"(127\.0\.0\.\d):\d+", r"\1:PORT", text)
        found.append(text.splitlines())
    return found


def _relay_record(work: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    records, filter_, verifier, secrets = _setup(work)
    spool = spool_in(work)
    monkeypatch.chdir(work)
    with IntakeThread(spool, "--filter", str(filter_), "--address-verifier", str(verifier),
                      "--server-auth", str(secrets), "--server-auth-insecure") as intake:
        _sessions(intake.port)
    return _read(records, spool, work)


def test_relay_passes_what_emailrelay_passes(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Arguments (mechanism `plain`/`login`/`none` in lower case), environment, cwd, stdin."""
    assert _relay_record(tmp_path, monkeypatch) == EMAILRELAY_RECORD


@pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK), reason="no E-MailRelay binary here")
def test_the_kept_record_is_what_emailrelay_does_today(tmp_path: Path) -> None:
    """The real E-MailRelay, run the same way, makes the record kept in this file."""
    records, filter_, verifier, secrets = _setup(tmp_path)
    spool = spool_in(tmp_path)
    with EmailRelayServer(tmp_path, spool, "--filter", str(filter_), "--address-verifier",
                            str(verifier), "--server-auth", str(secrets),
                            "--domain", "intake.test") as server:
        port = server.port
        _sessions(port)
    assert _read(records, spool, tmp_path) == EMAILRELAY_RECORD


# (exit code, output) -> what E-MailRelay 2.6.1 answered and whether it kept the message
# (a run of the real binary; the same cases run against it below when it is here). relay
# answers the same, word for word: no enhanced code is added to a filter's text.
FILTER_CASES = [
    (0, "", (250, True)),
    (101, "", (250, True)),
    (103, "", (250, True)),
    (100, "", (250, True)),  # abandoned, but the files it left are committed
    (102, "", (250, True)),
    (1, "<<554 5.7.1 no>>", (554, "5.7.1 no", False)),
    (99, "noise\n<<550 5.7.1 refused>>\n<<the reason>>", (550, "5.7.1 refused", False)),
    (104, "<<554 5.7.1 no>>", (554, "5.7.1 no", False)),
    (120, "<<451 4.3.0 later>>", (451, "4.3.0 later", False)),
    (1, "not at the start <<550 x>>", (452, "rejected", False)),
    (1, "", (452, "rejected", False)),
    (1, "<<no>>", (452, "no", False)),
    (1, "[[550 square]]", (550, "square", False)),
    (1, "<<554>>", (554, "", False)),
    (1, "<<>>\n<<a reason>>", (452, "rejected", False)),
    (1, "<<4.7.1 enhanced only>>", (452, "4.7.1 enhanced only", False)),
    (1, "<<250 not a refusal code>>", (452, "250 not a refusal code", False)),
    (104, "", (452, "rejected", False)),
]

CASE_FILTER = """#!/bin/sh
printf '%b' "$(cat {dir}/output)"
exit $(cat {dir}/code)
"""


def _filter_outcomes(port: int, spool: Path, control: Path) -> list[tuple[object, ...]]:
    found: list[tuple[object, ...]] = []
    for code, output, _expected in FILTER_CASES:
        (control / "code").write_text(str(code))
        (control / "output").write_text(output.replace("\n", "\\n"))
        before = {p.name for p in spool.glob("*.envelope")}
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
            try:
                smtp.sendmail("a@b.c", ["x@y.z"], b"Subject: t\r\n\r\nhi\r\n")
                reply: tuple[object, ...] = (250,)
            except smtplib.SMTPDataError as error:
                reply = (error.smtp_code, error.smtp_error.decode())
        kept = bool({p.name for p in spool.glob("*.envelope")} - before)
        found.append((*reply, kept))
    return found


def _expected() -> list[tuple[object, ...]]:
    return [expected for _code, _output, expected in FILTER_CASES]


def _filter_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    control = tmp_path / "control"
    control.mkdir()
    script = _script(tmp_path / "case-filter", CASE_FILTER.format(dir=control))
    return control, script, spool_in(tmp_path)


def test_filter_exits_answer_as_emailrelay(tmp_path: Path) -> None:
    """Every exit-code class and <<...>> form: the reply and whether the message is kept."""
    control, script, spool = _filter_setup(tmp_path)
    with IntakeThread(spool, "--filter", str(script)) as intake:
        assert _filter_outcomes(intake.port, spool, control) == _expected()


@pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK), reason="no E-MailRelay binary here")
def test_the_kept_filter_answers_are_what_emailrelay_does_today(tmp_path: Path) -> None:
    """The real E-MailRelay gives the answers kept in FILTER_CASES."""
    control, script, spool = _filter_setup(tmp_path)
    with EmailRelayServer(tmp_path, spool, "--filter", str(script)) as server:
        port = server.port
        assert _filter_outcomes(port, spool, control) == _expected()


# (exit code, output) -> E-MailRelay 2.6.1's reply to RCPT (a run of the real binary).
VERIFIER_CASES = [
    (0, "Full Name\\nbob", "250"),
    (1, "\\nx@other.test", "250"),
    (0, "", "550 mailbox unavailable"),
    (1, "only one line", "550 only one line"),
    (2, "", "550 mailbox unavailable"),
    (2, "no such user\\nthe reason", "550 no such user"),
    (3, "try later\\nthe reason", "450 try later"),
    (3, "", "450 mailbox unavailable"),
    (4, "odd", "550 odd"),
    (-1, "", "450 timeout"),  # -1: the verifier sleeps past --filter-timeout
]

CASE_VERIFIER = """#!/bin/sh
[ "$(cat {dir}/code)" = -1 ] && sleep 30
printf '%b' "$(cat {dir}/output)"
exit $(cat {dir}/code)
"""


def _verifier_replies(port: int, control: Path) -> list[str]:
    found = []
    for code, output, _expected in VERIFIER_CASES:
        (control / "code").write_text(str(code))
        (control / "output").write_text(output)
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as smtp:
            smtp.ehlo()
            smtp.mail("a@b.c")
            reply_code, text = smtp.rcpt("x@y.z")
            found.append("250" if reply_code == 250 else f"{reply_code} {text.decode()}")
    return found


def _verifier_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    control = tmp_path / "control"
    control.mkdir()
    script = _script(tmp_path / "case-verifier", CASE_VERIFIER.format(dir=control))
    return control, script, spool_in(tmp_path)


def test_verifier_replies_are_emailrelays(tmp_path: Path) -> None:
    """Every verifier exit's RCPT reply is E-MailRelay's text, word for word."""
    control, script, spool = _verifier_setup(tmp_path)
    with IntakeThread(spool, "--address-verifier", str(script), "--filter-timeout", "1") as intake:
        assert _verifier_replies(intake.port, control) == [c[2] for c in VERIFIER_CASES]


@pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK), reason="no E-MailRelay binary here")
def test_the_kept_verifier_replies_are_what_emailrelay_does_today(tmp_path: Path) -> None:
    """The real E-MailRelay gives the RCPT replies kept in VERIFIER_CASES."""
    control, script, spool = _verifier_setup(tmp_path)
    with EmailRelayServer(tmp_path, spool, "--address-verifier", str(script),
                            "--filter-timeout", "1") as server:
        port = server.port
        assert _verifier_replies(port, control) == [c[2] for c in VERIFIER_CASES]


TIMEOUT_FILTER = "#!/bin/sh\nsleep 30\n"


def _timed_out_reply(port: int) -> tuple[int, bytes]:
    with (smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as smtp,
          pytest.raises(smtplib.SMTPDataError) as error):
        smtp.sendmail("a@b.c", ["x@y.z"], MESSAGE)
    return error.value.smtp_code, error.value.smtp_error


def test_a_timed_out_filter_is_answered_as_emailrelay(tmp_path: Path) -> None:
    """A filter past --filter-timeout: `452 error` (E-MailRelay's words), nothing kept."""
    script = _script(tmp_path / "slow-filter", TIMEOUT_FILTER)
    spool = spool_in(tmp_path)
    with IntakeThread(spool, "--filter", str(script), "--filter-timeout", "1") as intake:
        assert _timed_out_reply(intake.port) == (452, b"error")
    assert not list(spool.glob("*.envelope"))


@pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK), reason="no E-MailRelay binary here")
def test_emailrelay_answers_a_timed_out_filter_452_error(tmp_path: Path) -> None:
    """The real E-MailRelay's answer to a timed-out filter is `452 error`."""
    script = _script(tmp_path / "slow-filter", TIMEOUT_FILTER)
    spool = spool_in(tmp_path)
    with EmailRelayServer(tmp_path, spool, "--filter", str(script),
                            "--filter-timeout", "1") as server:
        port = server.port
        assert _timed_out_reply(port) == (452, b"error")
    assert not list(spool.glob("*.envelope"))


# A client filter's (exit code, output) -> sent?, what is left, and the .bad Reason
# (E-MailRelay 2.6.1 --as-client, a run of the real binary); -1 sleeps past the timeout.
CLIENT_FILTER_CASES = [
    (0, "", (True, None, None)),
    (1, "<<no>>", (False, "bad", "no")),
    (1, "", (False, "bad", "rejected")),
    (99, "<<550 5.7.1 x>>", (False, "bad", "5.7.1 x")),
    (1, "<<resp>>\\n<<why>>", (False, "bad", "why")),
    (100, "", (False, "ready", None)),
    (102, "", (True, None, None)),
    (104, "", (False, "ready", None)),
    (105, "<<r>>", (False, "bad", "r")),
    (120, "", (False, "bad", "rejected")),
    (-1, "", (False, "bad", "timeout")),
]

CASE_CLIENT_FILTER = """#!/bin/sh
[ "$(cat {dir}/code)" = -1 ] && sleep 30
printf '%b' "$(cat {dir}/output)"
exit $(cat {dir}/code)
"""


def _client_filter_outcomes(tmp_path: Path, sink: Sink, run: Callable[[Path, Path], None],
                            ) -> list[tuple[object, ...]]:
    control = tmp_path / "control"
    control.mkdir()
    script = _script(tmp_path / "case-client-filter", CASE_CLIENT_FILTER.format(dir=control))
    found: list[tuple[object, ...]] = []
    for number, (code, output, _expected) in enumerate(CLIENT_FILTER_CASES):
        (control / "code").write_text(str(code))
        (control / "output").write_text(output)
        (tmp_path / f"spool{number}").mkdir(mode=0o700)
        spool = Spool(tmp_path / f"spool{number}")
        message_id = spool.store([MESSAGE], Envelope(sender="a@b.c", to_remote=("x@y.z",)))
        before = len(sink.messages)
        run(spool.path, script)
        bad = spool.envelope_path(message_id, State.BAD)
        left = ("bad" if bad.exists() else
                "ready" if spool.envelope_path(message_id, State.READY).exists() else None)
        reason = parse_envelope(bad.read_bytes()).reasons[0] if bad.exists() else None
        found.append((len(sink.messages) > before, left, reason))
    return found


def test_client_filter_outcomes_are_emailrelays(tmp_path: Path, sink: Sink) -> None:
    """Every client filter exit: sent or not, kept or .bad, and the Reason E-MailRelay writes."""
    def run(spool: Path, script: Path) -> None:
        deliver_main(["--once", "--spool-dir", str(spool), "--forward-to", sink.address,
                      "--client-filter", str(script), "--filter-timeout", "1"])
    assert _client_filter_outcomes(tmp_path, sink, run) == [c[2] for c in CLIENT_FILTER_CASES]


@pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK), reason="no E-MailRelay binary here")
def test_the_kept_client_filter_outcomes_are_what_emailrelay_does_today(
        tmp_path: Path, sink: Sink) -> None:
    """The real E-MailRelay --as-client gives the outcomes kept in CLIENT_FILTER_CASES."""
    def run(spool: Path, script: Path) -> None:
        argv = [str(EMAILRELAY), "--as-client", sink.address, "--spool-dir", str(spool),
                "--client-filter", str(script), "--filter-timeout", "1"]
        if os.geteuid() == 0:
            argv += ["--user", "root"]
        subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=60, check=False)
    assert _client_filter_outcomes(tmp_path, sink, run) == [c[2] for c in CLIENT_FILTER_CASES]
