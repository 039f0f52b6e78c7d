"""--check in relay-intake, relay-deliver and relay: everything is loaded (configuration,
secrets, certificates, filters, the spool), what is wrong is said, exit 0 or 78, and
nothing starts: no port is opened and the spool is left as it was."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from support.programs import BIN, program_env
from support.sink import free_port

from spool import Envelope, Spool, State


def run(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / program), *args], capture_output=True, text=True,
                          timeout=60, env=program_env(), check=False)


def test_a_good_configuration_passes_and_nothing_starts(spool: Spool) -> None:
    """Exit 0 and one line saying what was loaded; the SMTP port stays closed; the spool
    is unchanged (its waiting message still waits)."""
    message_id = spool.store(b"Subject: x\r\n\r\ny\r\n",
                             Envelope(sender="a@a.test", to_remote=("b@b.test",)))
    before = sorted(os.listdir(spool.path))
    port = free_port()
    intake = run("relay-intake", "--spool-dir", str(spool.path), "--port", str(port), "--check")
    assert intake.returncode == 0, intake.stderr
    assert intake.stdout == (f"relay-intake: configuration OK: listen on 127.0.0.1:{port};"
                             f" spool {spool.path} (1 waiting)\n")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    deliver = run("relay-deliver", "--spool-dir", str(spool.path), "--forward-to",
                  "127.0.0.1:1", "--check")
    assert deliver.returncode == 0, deliver.stderr
    assert "relay-deliver: configuration OK: forward to 127.0.0.1:1" in deliver.stdout
    relay = run("relay", "--as-proxy", "127.0.0.1:1", "--spool-dir", str(spool.path),
                "--port", str(port), "--check")
    assert relay.returncode == 0, relay.stderr
    assert relay.stdout.count("configuration OK") == 2
    assert sorted(os.listdir(spool.path)) == before
    assert spool.envelope_path(message_id, State.READY).exists()


@pytest.mark.parametrize(("program", "args", "said"), [
    ("relay-intake", ["--spool-dir", "{missing}"], "spool directory {missing} does not exist"),
    ("relay-intake", ["--server-auth", "{bad_secrets}"], "line 1: too few fields"),
    ("relay-intake", ["--server-tls-certificate", "{not_pem}"],
     "--server-tls-certificate: {not_pem} is not a certificate"),
    ("relay-intake", ["--filter", "/nonexistent/filter"], "is not an executable file"),
    ("relay-deliver", ["--client-auth", "/nonexistent/secrets"], "No such file or directory"),
    ("relay-deliver", ["--client-filter", "/nonexistent/filter"], "is not an executable file"),
    ("relay-deliver", ["--client-tls-verify", "/nonexistent/ca.pem"], "no such file"),
    ("relay", ["--as-server", "--server-auth", "{bad_secrets}"], "too few fields"),
    ("relay-intake", ["--spool-dir", "{not_a_spool}"], "does not look like a spool directory"),
    ("relay-deliver", ["--spool-dir", "{not_a_spool}"], "no message files, but 2 other files"),
    ("relay-deliver", ["--spool-dir", "{open_spool}"], "writable by others (mode 777)"),
])
def test_what_is_wrong_is_said(spool: Spool, tmp_path: Path, program: str, args: list[str],
                               said: str) -> None:
    """Each broken setting: exit 78 and one line naming the setting and the problem."""
    bad_secrets = tmp_path / "secrets"
    bad_secrets.write_text("server plain\n")
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("not a certificate\n")
    not_a_spool = tmp_path / "etc"  # a directory of other files, as /etc would be
    not_a_spool.mkdir(mode=0o700)
    for name in ("passwd", "hosts"):
        (not_a_spool / name).write_text("root:x:0:0\n")
    open_spool = tmp_path / "open"
    open_spool.mkdir()
    open_spool.chmod(0o777)
    names = {"missing": str(tmp_path / "missing"), "bad_secrets": str(bad_secrets),
             "not_pem": str(not_pem), "not_a_spool": str(not_a_spool),
             "open_spool": str(open_spool)}
    args = [arg.format(**names) for arg in args]
    base = [] if "--spool-dir" in args else ["--spool-dir", str(spool.path)]
    if program == "relay-deliver":
        base += ["--forward-to", "127.0.0.1:1"]
    done = run(program, *base, *args, "--check")
    assert done.returncode == os.EX_CONFIG, done.stdout + done.stderr
    assert "configuration check failed" in done.stderr
    assert said.format(**names) in done.stderr
    assert done.stdout == ""
