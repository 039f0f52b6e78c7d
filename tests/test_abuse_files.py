"""Hostile data against the file system and programs: addresses full of path and shell
metacharacters through intake, its filter and verifier, deliver's client filter, resubmit
and notify (nothing executed, nothing written outside the spool); and spool hardening (a
spool writable by others, or a symlink planted where relay is about to create a file)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.intake import IntakeProcess, IntakeThread, RawClient
from support.programs import BIN, deliver_once, program_env
from support.sink import Sink
from support.smarthost import Script, ScriptedSmarthost
from support.spool import accepted, spool_files

from spool import Envelope, Spool, State, entries, read_envelope
from spool.scan import SpoolEntry

_OUR_NAME = re.compile(r"^emailrelay\.\d+\.\d+\.\d+\.(content|envelope(\.bad)?)$")


def recorder(path: Path, record: Path, exit_code: int, echo: bool = False) -> Path:
    """An executable that appends its argv (JSON, one line a run) to *record*."""
    lines = [f"#!{sys.executable}", "import json, sys",
             f"with open({str(record)!r}, 'a') as out:",
             "    out.write(json.dumps(sys.argv[1:]) + '\\n')"]
    if echo:  # an address verifier: line 1 text, line 2 the address to store
        lines.append("print('checked'); print(sys.argv[1])")
    lines.append(f"sys.exit({exit_code})")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def records(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree(root: Path, *skip: Path) -> set[str]:
    """Every path under *root*, those under *skip* left out."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not any(path == s or s in path.parents for s in skip):
                found.add(str(path.relative_to(root)))
    return found


def hostile(canary: Path) -> list[str]:
    """Addresses (as written after RCPT TO:/MAIL FROM:) that a shell or a path join would
    misread; each tries to create *canary*."""
    return [
        '"../../escaped"@d.example',
        f'"`touch {canary}`"@d.example',
        "a`id`b@d.example",
        f'"$(touch {canary})"@d.example',
        f'"a;touch {canary}"@d.example',
        f'"|touch {canary}"@d.example',
        "-oQ/tmp/relay-abuse-queue@d.example",
        "--help@d.example",
    ]


def test_hostile_addresses_execute_nothing_and_write_only_inside_the_spool(
        tmp_path: Path) -> None:
    """Metacharacter addresses through intake (filter, verifier), deliver (client filter),
    resubmit and notify: programs get them as one argument or not at all, no canary appears,
    every file created is in the spool under relay's own name."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    canary = tmp_path / "pwned"
    work = tmp_path / "work"
    work.mkdir()
    filter_log, verifier_log, client_filter_log = (work / n for n in ("f", "v", "c"))
    server_filter = recorder(work / "filter", filter_log, 0)
    verifier = recorder(work / "verifier", verifier_log, 1, echo=True)
    client_filter = recorder(work / "client-filter", client_filter_log, 0)
    before = tree(tmp_path, spool_dir, work)
    addresses = hostile(canary)
    with IntakeThread(spool_dir, "--filter", str(server_filter), "--address-verifier",
                      str(verifier)) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        for address in addresses:
            assert raw.command(f"MAIL FROM:<{address}>".encode())[:3] == "250", address
            assert raw.command(f"RCPT TO:<{address}>".encode())[:3] == "250", address
            assert raw.command(b"DATA")[:3] == "354"
            assert raw.command(b"Subject: hostile\r\n\r\nbody\r\n.")[:3] == "250", address
        raw.command(b"QUIT")
    # Each is kept as one recipient, exactly as written (quotes and all, as E-MailRelay
    # stores it: "../../escaped"@d stays quoted).
    parsed = sorted(addresses)
    addresses = parsed
    assert sorted(e.to_remote[0] for e, _ in accepted(spool_dir)) == parsed
    assert sorted(e.sender for e, _ in accepted(spool_dir)) == parsed
    for argv in records(verifier_log):
        assert len(argv) == 6 and argv[0] in parsed and argv[1] in parsed
    filter_runs = records(filter_log)
    assert len(filter_runs) == len(addresses)
    for content, envelope in filter_runs:
        assert Path(content).parent == spool_dir and Path(envelope).parent == spool_dir
        assert content.endswith(".content") and envelope.endswith(".envelope.new")

    smarthost_script = Script(replies={"RCPT": b"550 5.1.1 no such user"})
    for _round in range(2):  # fail, resubmit, fail again
        with ScriptedSmarthost(smarthost_script) as smarthost:
            done = deliver_once(spool_dir, smarthost.address, "--client-filter",
                                str(client_filter))
            assert done.returncode == 0, done.stderr
        assert {e.state for e in entries_of(spool_dir)} == {State.BAD}
        if _round == 0:
            resubmit = run_tool("relay-resubmit", spool_dir, cwd=work)
            assert resubmit.returncode == 0, resubmit.stderr
            assert {e.state for e in entries_of(spool_dir)} == {State.READY}
    for content, envelope in records(client_filter_log):
        assert Path(content).parent == spool_dir and envelope.endswith(".envelope.busy")

    notify = run_tool("relay-notify", spool_dir, "--max-retries", "2", "--domain",
                      "relay.test", cwd=work)
    assert notify.returncode == 0, notify.stderr
    notifications = [read_envelope_any(spool_dir, e.message_id) for e in entries_of(spool_dir)]
    assert sorted(n.to_remote[0] for n in notifications) == sorted(addresses)
    assert all(n.sender == "" for n in notifications)
    with Sink() as sink:
        done = deliver_once(spool_dir, sink.address)
        assert done.returncode == 0, done.stderr
        # The sink is aiosmtpd, whose parser drops the quotes deliver sent around
        # "../../escaped" (tests/test_intake_quoted_paths.py checks the wire itself).
        as_sink_parses = [a.replace('"../../escaped"', "../../escaped") for a in addresses]
        assert sorted(m.rcpt_tos[0] for m in sink.messages) == sorted(as_sink_parses)
        assert all(m.mail_from == "<>" for m in sink.messages)

    assert not canary.exists()
    assert not Path("/tmp/relay-abuse-queue").exists()
    assert tree(tmp_path, spool_dir, work) == before  # nothing written outside the spool
    assert all(_OUR_NAME.match(name) for name in spool_files(spool_dir))
    assert sorted(os.listdir(work)) == ["c", "client-filter", "f", "filter", "v", "verifier"]


def entries_of(spool_dir: Path) -> list[SpoolEntry]:
    return [e for e in entries(Spool(spool_dir)) if e.state is not None]


def read_envelope_any(spool_dir: Path, message_id: str) -> Envelope:
    return read_envelope(Spool(spool_dir), message_id, State.READY)


def run_tool(name: str, spool_dir: Path, *args: str,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), "--spool-dir", str(spool_dir), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=program_env())


# -- spool hardening ------------------------------------------------------------------------

PROGRAMS = {
    "relay-intake": ["--port", "0"],
    "relay-deliver": ["--once", "--forward-to", "127.0.0.1:9"],
    "relay-resubmit": [],
    "relay-notify": [],
    "relay-submit": ["b@example.com"],
}


@pytest.mark.parametrize("program", list(PROGRAMS))
@pytest.mark.parametrize("unsafe", ["world-writable", "sticky-world-writable", "symlink"])
def test_every_program_refuses_an_unsafe_spool(tmp_path: Path, program: str,
                                               unsafe: str) -> None:
    """A spool writable by others (or a symlink to one) is refused: exit 78, a clear reason,
    and nothing written into it."""
    real = tmp_path / "real"
    real.mkdir()
    if unsafe == "symlink":
        real.chmod(0o700)
        spool_dir = tmp_path / "link"
        spool_dir.symlink_to(real)
        expected = "symbolic link"
    else:
        real.chmod(0o1777 if unsafe.startswith("sticky") else 0o777)
        spool_dir = real
        expected = "writable by others"
    done = subprocess.run([str(BIN / program), "--spool-dir", str(spool_dir),
                           *PROGRAMS[program]], input="Subject: x\n\nx\n", capture_output=True,
                          text=True, timeout=30, env=program_env())
    assert done.returncode == os.EX_CONFIG, done.stderr
    assert expected in done.stderr and str(spool_dir) in done.stderr
    assert os.listdir(real) == []


def test_symlinks_planted_at_intakes_next_file_names_are_never_followed(
        spool_dir: Path, tmp_path: Path, sink: Sink) -> None:
    """Symlinks at the names intake will pick next (the writer's pid, the clock, the next
    seq): a .content clash moves on to the next name; an .envelope.new clash is a 451; the
    target stays untouched, and the stored messages are delivered intact."""
    target = tmp_path / "target"
    target.write_bytes(b"precious\n")
    # One worker: the names planted are those of its one storage process.
    with IntakeProcess(spool_dir, "--processes", "1") as intake:
        with intake.smtp() as client:
            client.sendmail("a@example.org", ["b@example.com"], b"Subject: zero\r\n\r\nfirst\r\n")
        (first,) = spool_dir.glob("*.envelope")
        # emailrelay.<pid>.<time>.<seq>: the pid of whichever process writes the files.
        _, pid, _, seq_text = first.name.removesuffix(".envelope").split(".")
        seq = int(seq_text)
        now = int(time.time())
        seconds = range(now - 2, now + 30)
        planted = [spool_dir / f"emailrelay.{pid}.{second}.{n}.content"
                   for second in seconds for n in (seq + 1, seq + 2)]
        for link in planted:
            link.symlink_to(target)
        with intake.smtp() as client:
            client.sendmail("a@example.org", ["b@example.com"], b"Subject: one\r\n\r\nfine\r\n")
        assert target.read_bytes() == b"precious\n"
        for link in planted:
            link.unlink()
        names = sorted(p.name for p in spool_dir.glob("*.envelope"))
        assert len(names) == 2
        assert int(max(names, key=lambda n: int(n.split(".")[3])).split(".")[3]) == seq + 3
        # The content goes to the next free name, whose `.envelope.new` is already a symlink.
        for second in seconds:
            (spool_dir / f"emailrelay.{pid}.{second}.{seq + 4}.envelope.new").symlink_to(target)
        with intake.smtp() as client:
            client.ehlo()
            assert client.docmd("MAIL FROM:<a@example.org>")[0] == 250
            client.rcpt("b@example.com")
            reply = client.data(b"Subject: two\r\n\r\nrefused\r\n")
        assert reply[0] == 451
        assert target.read_bytes() == b"precious\n"
        assert "store_failed" in intake.log() and "File exists" in intake.log()
        assert len(accepted(spool_dir)) == 2
        assert intake.stop() == 0
    for link in spool_dir.glob("*.envelope.new"):
        link.unlink()
    done = deliver_once(spool_dir, sink.address)
    assert done.returncode == 0, done.stderr
    assert sorted(m.data.rsplit(b"\r\n", 2)[-2] for m in sink.messages) == [b"fine", b"first"]
    assert target.read_bytes() == b"precious\n"
    assert spool_files(spool_dir) == []
