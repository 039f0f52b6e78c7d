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
import time
from pathlib import Path

import pytest
from support.intake import IntakeThread
from support.sink import free_port

EMAILRELAY = Path(os.environ.get("EMAILRELAY_BIN", "/work/scratch/emailrelay-bin/emailrelay"))
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


def _setup(work: Path) -> tuple[Path, Path, Path, Path]:
    records = work / "records"
    records.mkdir()
    programs = []
    for name in ("filter", "verifier"):
        path = work / name
        path.write_text(RECORDER.format(dir=records))
        path.chmod(0o755)
        programs.append(path)
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
    spool = work / "spool"
    spool.mkdir(mode=0o700)
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
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    port = free_port()
    argv = [str(EMAILRELAY), "--as-server", "--no-daemon", "--port", str(port),
            "--interface", "127.0.0.1", "--spool-dir", str(spool), "--filter", str(filter_),
            "--address-verifier", str(verifier), "--server-auth", str(secrets),
            "--domain", "intake.test", "--pid-file", str(tmp_path / "pid")]
    if os.geteuid() == 0:
        argv += ["--user", "root"]
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=2).quit()
                break
            except OSError:
                assert time.monotonic() < deadline, "emailrelay did not start"
                time.sleep(0.1)
        _sessions(port)
    finally:
        process.terminate()
        process.wait(10)
    assert _read(records, spool, tmp_path) == EMAILRELAY_RECORD


# (exit code, output) -> what E-MailRelay 2.6.1 answered and whether it kept the message
# (a run of the real binary; the same cases run against it below when it is here).
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
    (1, "not at the start <<550 x>>", (452, None, False)),
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


def _expected(relay: bool) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for _code, _output, expected in FILTER_CASES:
        if expected[0] == 250:
            rows.append(expected)
        elif expected[1] is None:  # no reply text of the filter's: relay adds 4.7.1
            rows.append((expected[0], "4.7.1 rejected" if relay else "rejected", expected[2]))
        else:
            rows.append(expected)
    return rows


def test_filter_exits_answer_as_emailrelay(tmp_path: Path) -> None:
    """Every exit-code class and <<...>> form: the reply and whether the message is kept."""
    control = tmp_path / "control"
    control.mkdir()
    script = tmp_path / "case-filter"
    script.write_text(CASE_FILTER.format(dir=control))
    script.chmod(0o755)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    with IntakeThread(spool, "--filter", str(script)) as intake:
        assert _filter_outcomes(intake.port, spool, control) == _expected(relay=True)


@pytest.mark.skipif(not os.access(EMAILRELAY, os.X_OK), reason="no E-MailRelay binary here")
def test_the_kept_filter_answers_are_what_emailrelay_does_today(tmp_path: Path) -> None:
    """The real E-MailRelay gives the answers kept in FILTER_CASES."""
    control = tmp_path / "control"
    control.mkdir()
    script = tmp_path / "case-filter"
    script.write_text(CASE_FILTER.format(dir=control))
    script.chmod(0o755)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    port = free_port()
    argv = [str(EMAILRELAY), "--as-server", "--no-daemon", "--port", str(port), "--interface",
            "127.0.0.1", "--spool-dir", str(spool), "--filter", str(script),
            "--pid-file", str(tmp_path / "pid")]
    if os.geteuid() == 0:
        argv += ["--user", "root"]
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=2).quit()
                break
            except OSError:
                assert time.monotonic() < deadline, "emailrelay did not start"
                time.sleep(0.1)
        assert _filter_outcomes(port, spool, control) == _expected(relay=False)
    finally:
        process.terminate()
        process.wait(10)
