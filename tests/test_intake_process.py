"""The real `relay-intake` console script as a subprocess: signals, exit codes, the pid
file, configuration sources, and storage faults injected with spool.testhooks."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.intake import MESSAGE, IntakeProcess, RawClient
from support.programs import INTAKE, program_env
from support.sink import free_port
from support.spool import accepted, spool_files


@pytest.fixture
def processes() -> Iterator[list[IntakeProcess]]:
    started: list[IntakeProcess] = []
    yield started
    for item in started:
        item.close()


def test_sigterm_finishes_the_open_transaction_then_exits_0(
        spool_dir: Path, tmp_path: Path, processes: list[IntakeProcess]) -> None:
    """SIGTERM: the pid file is there while running and removed after; an open transaction
    still completes (250), idle sessions get 421, new connections are refused; exit 0."""
    pid_file = tmp_path / "intake.pid"
    intake = IntakeProcess(spool_dir, "--pid-file", str(pid_file))
    processes.append(intake)
    assert pid_file.read_text().strip() == str(intake.process.pid)
    busy, idle = RawClient(intake.port), RawClient(intake.port)
    busy.command(b"EHLO client.test")
    idle.command(b"EHLO client.test")
    assert busy.command(b"MAIL FROM:<a@example.org>")[:3] == "250"
    intake.process.send_signal(signal.SIGTERM)
    assert idle.reply().startswith("421")
    assert busy.command(b"RCPT TO:<b@example.com>")[:3] == "250"
    assert busy.command(b"DATA")[:3] == "354"
    busy.send(b"Subject: last\r\n\r\nstill stored\r\n.\r\n")
    assert busy.reply()[:3] == "250"
    assert busy.closed()
    assert intake.process.wait(timeout=20) == 0, intake.finish()
    assert not pid_file.exists()
    assert len(accepted(spool_dir)) == 1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", intake.port), timeout=2)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_port_in_use_exits_2(spool_dir: Path, processes: str) -> None:
    """A port that cannot be bound: exit 2 and a message naming it, said once (one process
    or several)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run([INTAKE, "--spool-dir", str(spool_dir), "--port", str(port),
                                 "--processes", processes],
                                env=program_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count(f"cannot listen on 127.0.0.1 port {port}") == 1, result.stderr


@pytest.mark.parametrize("problem", ["missing", "world-writable", "bad-size", "bad-filter",
                                     "unknown-key", "tls-key-alone"])
def test_bad_spool_or_configuration_exits_78(tmp_path: Path, spool_dir: Path,
                                             problem: str) -> None:
    """An unusable spool directory or a bad setting: exit 78 with a clear one-line reason."""
    args = ["--spool-dir", str(spool_dir), "--port", str(free_port())]
    env: dict[str, str] = {}
    expected = {"missing": "does not exist", "world-writable": "writable by others",
                "bad-size": "not a size", "bad-filter": "not an executable file",
                "unknown-key": "unknown key", "tls-key-alone": "need --server-tls-certificate"}
    if problem == "missing":
        args[1] = str(tmp_path / "nowhere")
    elif problem == "world-writable":
        spool_dir.chmod(0o777)
    elif problem == "bad-size":
        env["RELAY_SIZE"] = "lots"
    elif problem == "bad-filter":
        args += ["--filter", str(tmp_path / "no-such-filter")]
    elif problem == "unknown-key":
        config = tmp_path / "relay.toml"
        config.write_text("[intake]\nport = 10025\nfrobnicate = 1\n")
        args += ["--config", str(config)]
    else:
        args += ["--server-tls-key", str(tmp_path / "key.pem")]
    result = subprocess.run([INTAKE, *args], env=program_env(**env), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 78, result.stderr
    assert expected[problem] in result.stderr


def test_settings_from_config_file_and_environment(
        spool_dir: Path, tmp_path: Path, processes: list[IntakeProcess]) -> None:
    """[intake] keys in the config file and RELAY_* variables both take effect."""
    config = tmp_path / "relay.toml"
    config.write_text(f'spool-dir = "{spool_dir}"\n[intake]\nmax-recipients = 2\n'
                      'domain = "from-file.test"\n')
    port = free_port()
    process = subprocess.Popen([INTAKE, "--config", str(config)],
                               env=program_env(RELAY_PORT=str(port), RELAY_SIZE="1M"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, local_hostname="c.test", timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
        _code, banner = client.ehlo()
        assert banner.startswith(b"from-file.test")
        assert client.esmtp_features["size"] == str(1024 * 1024)
        refused = client.sendmail("a@example.org", ["1@x.test", "2@x.test", "3@x.test"], MESSAGE)
        assert list(refused) == ["3@x.test"]
        client.quit()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


def test_open_relay_configuration_warns_at_start(spool_dir: Path,
                                                 processes: list[IntakeProcess]) -> None:
    """--remote-clients without --server-auth or a verifier starts but warns of an open relay."""
    intake = IntakeProcess(spool_dir, "--remote-clients")
    processes.append(intake)
    err = intake.finish(signal.SIGINT)
    assert intake.process.returncode == 0
    assert "open_relay_risk" in err and "open relay" in err


@pytest.mark.parametrize("sync", ["syncfs", "fsync"])
@pytest.mark.parametrize(("fault", "code"), [
    ("fsync_content:ENOSPC", 452),
    ("content_written:EDQUOT", 452),
    ("fsync_envelope:EIO", 451),
    ("envelope_written:ENOSPC", 452),
    ("rename_envelope:EIO", 451),
    ("fsync_directory:EIO", 451),
])
def test_storage_failure_answers_4xx_and_leaves_nothing(
        spool_dir: Path, processes: list[IntakeProcess], fault: str, code: int,
        sync: str) -> None:
    """An injected storage error, in either --sync mode: 452 (no space) or 451, never 5xx;
    no files are left."""
    intake = IntakeProcess(spool_dir, env={"RELAY_TEST_FAIL_AT": fault, "RELAY_SYNC": sync})
    processes.append(intake)
    with smtplib.SMTP("127.0.0.1", intake.port, local_hostname="c.test", timeout=10) as client:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPDataError) as error:
                client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
            assert error.value.smtp_code == code
    assert spool_files(spool_dir) == []
    err = intake.finish(signal.SIGTERM)
    assert intake.process.returncode == 0
    assert "store_failed" in err


@pytest.mark.parametrize(("point", "stored"), [("data_received", False),
                                               ("content_synced", False),
                                               ("before_reply", True)])
def test_crash_points(spool_dir: Path, processes: list[IntakeProcess], point: str,
                      stored: bool) -> None:
    """SIGKILL at a step: before the commit no .envelope exists; at the reply it is complete."""
    intake = IntakeProcess(spool_dir, env={"RELAY_TEST_CRASH_AT": point})
    processes.append(intake)
    with smtplib.SMTP("127.0.0.1", intake.port, local_hostname="c.test", timeout=10) as client, \
            pytest.raises(smtplib.SMTPServerDisconnected):
        client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    intake.process.wait(timeout=10)
    assert intake.process.returncode == -signal.SIGKILL
    envelopes = [(e, c) for e, c in accepted(spool_dir)]
    assert len(envelopes) == (1 if stored else 0)
    if stored:
        assert envelopes[0][0].to_remote == ("b@example.com",)
    assert os.path.isdir(spool_dir)
