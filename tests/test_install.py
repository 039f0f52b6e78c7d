"""`make install` into a temporary PREFIX: the installed programs start (under the installed
supervisord configuration) and relay mail; man pages, units and the spool are there with the
right modes; a second install keeps relay.toml; `make uninstall` removes what install wrote
and keeps the configuration and the spool; DESTDIR stages everything without leaking into
the installed paths."""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from support.programs import program_env
from support.sink import Sink, free_port

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = ("relay", "relay-intake", "relay-deliver", "relay-queue", "mailq", "relay-resubmit",
            "relay-notify", "relay-submit", "relay-passwd")


def make(target: str, root: Path, *extra: str,
         user: str | None = None) -> subprocess.CompletedProcess[str]:
    user = user or pwd.getpwuid(os.getuid()).pw_name
    variables = [f"PREFIX={root}/opt/relay", f"SYSCONFDIR={root}/etc/relay",
                 f"SPOOL_DIR={root}/var/spool/relay", f"UNITDIR={root}/etc/systemd/system",
                 f"LOGDIR={root}/var/log/relay", f"RUNDIR={root}/run/relay",
                 f"RELAY_USER={user}", *extra]
    done = subprocess.run(["make", "--no-print-directory", target, *variables], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=program_env(),
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def wait_for_status(supervisorctl: list[str], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run([*supervisorctl, "status"], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.stdout.count("RUNNING") == 2 or time.monotonic() > deadline:
            return done.stdout
        time.sleep(0.2)


# Two whole installs, a virtualenv and a pip install each: the test takes ~40 s on a quiet
# 2-CPU machine and ~80 s with its CPUs busy, too close to the suite's 120 s for a slow CI
# machine (it timed out once under load); 600 s, as long as one make may take.
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_install_start_reinstall_uninstall(tmp_path: Path, sink: Sink) -> None:
    """Install, point relay.toml at a free port, start the installed programs through the
    installed supervisord.conf, relay one message to the sink; reinstall keeps relay.toml;
    uninstall removes programs, man pages, units and supervisord.conf and the empty
    directories install made (even after the reinstall found them there), keeps the rest
    and a directory that was there before."""
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)  # there before: RUNDIR's parent, not install's
    output = make("install", root, f"FORWARD_TO={sink.address}").stdout
    prefix = root / "opt" / "relay"
    assert "9 programs in" in output
    for program in PROGRAMS:
        assert (prefix / "bin" / program).exists(), program
        page = prefix / "share" / "man" / "man1" / f"{program}.1"
        assert page.read_text().startswith(".TH"), program
        if shutil.which("man"):
            shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                                   env={**os.environ, "MANWIDTH": "80"}, timeout=30)
            assert shown.returncode == 0 and "SYNOPSIS" in shown.stdout, program
    deliver_page = (prefix / "share" / "man" / "man1" / "relay-deliver.1").read_text()
    assert "\\-\\-metrics" in deliver_page and "\\-\\-check" in deliver_page
    spool = root / "var" / "spool" / "relay"
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert spool.stat().st_uid == os.getuid()
    config = root / "etc" / "relay" / "relay.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    unit = (root / "etc" / "systemd" / "system" / "relay-intake.service").read_text()
    assert f"ExecStart={prefix}/bin/relay-intake" in unit
    assert f"ExecStartPre={prefix}/bin/relay-intake --check" in unit
    assert f"ReadWritePaths={spool}" in unit and f"RELAY_CONFIG={config}" in unit
    port = free_port()
    config.write_text(config.read_text().replace("port = 25", f"port = {port}"))
    for program in ("relay-intake", "relay-deliver"):
        checked = subprocess.run([str(prefix / "bin" / program), "--config", str(config),
                                  "--check"], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
    conf = root / "etc" / "relay" / "supervisord.conf"
    supervisorctl = [str(prefix / "venv" / "bin" / "supervisorctl"), "-c", str(conf)]
    supervisord = subprocess.Popen([str(prefix / "venv" / "bin" / "supervisord"), "-n", "-c",
                                    str(conf)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    try:
        status = wait_for_status(supervisorctl)
        assert "relay:intake" in status and "relay:deliver" in status, status
        assert status.count("RUNNING") == 2, status
        deadline = time.monotonic() + 20
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with client:
            client.sendmail("a@a.test", ["b@b.test"], b"Subject: installed\r\n\r\nhi\r\n")
        received = sink.wait_for(1, timeout=30)
        assert b"Subject: installed" in received[0].data
    finally:
        subprocess.run([*supervisorctl, "shutdown"], capture_output=True, timeout=60)
        try:
            supervisord.wait(30)
        except subprocess.TimeoutExpired:
            supervisord.kill()
            supervisord.wait()
    assert "relay.toml exists: kept as it is" in make("install", root).stdout
    assert f"port = {port}" in config.read_text()
    output = make("uninstall", root).stdout
    assert "kept" in output
    assert not prefix.exists()
    assert not (root / "etc" / "systemd" / "system" / "relay-intake.service").exists()
    assert not conf.exists()
    assert config.exists() and spool.is_dir()
    assert not (root / "run" / "relay").exists() and (root / "run").is_dir()
    assert not (root / "etc" / "systemd").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_destdir_stages_everything(tmp_path: Path) -> None:
    """DESTDIR=stage: every file lands under stage, and the installed scripts and units name
    the final paths (no stage prefix in them); the spool is 0700 and the relay user's."""
    stage = tmp_path / "stage"
    owner = "nobody" if os.geteuid() == 0 else None  # root can give the spool to another user
    make("install", Path("/opt/example"), f"DESTDIR={stage}", user=owner)
    prefix = stage / "opt" / "example" / "opt" / "relay"
    script = (prefix / "venv" / "bin" / "relay-intake").read_text()
    assert script.startswith("#!/opt/example/opt/relay/venv/bin/python")
    assert str(stage) not in script
    unit = (stage / "opt" / "example" / "etc" / "systemd" / "system" /
            "relay-deliver.service").read_text()
    assert str(stage) not in unit and "ExecStart=/opt/example/opt/relay/bin/relay-deliver" in unit
    assert os.readlink(prefix / "bin" / "relay-queue") == \
        "/opt/example/opt/relay/venv/bin/relay-queue"
    assert not Path("/opt/example").exists()
    spool = stage / "opt" / "example" / "var" / "spool" / "relay"
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    if owner is not None:
        assert spool.stat().st_uid == pwd.getpwnam(owner).pw_uid
        assert f"User={owner}" in unit


def privileged_free_port() -> int:
    """A port below 1024 that nothing listens on (root may bind it)."""
    for port in range(990, 900, -1):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and util-linux's setpriv")
def test_supervisord_intake_may_bind_port_25_as_the_relay_user(tmp_path: Path) -> None:
    """Installed by root for another user, supervisord's intake is started through setpriv as
    that user with CAP_NET_BIND_SERVICE only: that exact command line, run as nobody, binds
    a port below 1024 (a program started with user= could not); the unit takes the port from
    relay.toml, not a --port 25 of its own."""
    stage = tmp_path / "stage"
    make("install", Path("/opt/example"), f"DESTDIR={stage}", user="nobody")
    etc = stage / "opt" / "example" / "etc"
    conf = (etc / "relay" / "supervisord.conf").read_text()
    intake = conf[conf.index("[program:intake]"):conf.index("[program:deliver]")]
    command = next(line for line in intake.splitlines() if line.startswith("command="))
    words = command.removeprefix("command=").split()
    assert words[-1] == "/opt/example/opt/relay/bin/relay-intake"
    assert "--reuid=nobody" in words and "--ambient-caps=+net_bind_service" in words
    assert "\nuser=" not in intake
    deliver = conf[conf.index("[program:deliver]"):]
    assert "\nuser=nobody\n" in deliver
    port = privileged_free_port()
    probe = (f"import os, socket; s = socket.socket(); s.bind(('127.0.0.1', {port}));"
             " print(os.getuid(), os.geteuid())")
    done = subprocess.run([*words[:-1], "/usr/bin/python3", "-c", probe], capture_output=True,
                          text=True, timeout=60, check=False)
    nobody = pwd.getpwnam("nobody").pw_uid
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(nobody), str(nobody)]
    unit = (etc / "systemd" / "system" / "relay-intake.service").read_text()
    assert "ExecStart=/opt/example/opt/relay/bin/relay-intake\n" in unit
    assert "--port" not in unit
    toml = (etc / "relay" / "relay.toml").read_text()
    assert "port = 25" in toml
