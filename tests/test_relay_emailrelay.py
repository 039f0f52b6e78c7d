"""`relay` run as E-MailRelay is run: real daemons, pid files, signals, users, a real sink.

Every test starts `relay` itself (the console script) from a working directory that holds
folders named spool, intake, deliver, tools and common, which must shadow nothing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import alive, children, command_line
from support.programs import BIN, program_env
from support.sink import Sink, free_port
from support.spool import spool_files
from support.system import wait_until

RELAY = str(BIN / "relay")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (--user)")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A working directory (world-readable, for --user tests) with decoy package folders."""
    base = Path(tempfile.mkdtemp(prefix="rl-er-", dir="/tmp"))
    base.chmod(0o755)
    for name in ("spool", "intake", "deliver", "tools", "common"):
        (base / name).mkdir()
        (base / name / "__init__.py").write_text("raise ImportError('the wrong package')\n")
    (base / "queue").mkdir(mode=0o770)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def relay(workdir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `relay ARGS` in *workdir*; returns when it does (a daemon: once it is ready)."""
    return subprocess.run([RELAY, *args], cwd=workdir, env=program_env(), text=True,
                          capture_output=True, timeout=timeout, check=False)


def send(port: int, number: int = 1) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.net"],
                        f"Subject: relay {number}\r\n\r\nbody {number}\r\n".encode())


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


class Daemon:
    """A `relay` daemon started in a test: stopped by its pid file at the end."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.pid_file = workdir / "relay.pid"
        self.port = free_port()
        started = time.monotonic()
        self.done = relay(workdir, "-p", str(self.port), "--pid-file", str(self.pid_file),
                          *args)
        self.start_seconds = time.monotonic() - started
        assert self.done.returncode == 0, self.done.stderr
        self.pid = read_pid(self.pid_file)

    def program(self, module: str) -> int:
        return next(p for p in children(self.pid) if f"-m {module}" in command_line(p))

    def stop(self) -> None:
        if alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            assert wait_until(lambda: not alive(self.pid), 45)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    running: list[Daemon] = []
    yield running
    for daemon in running:
        daemon.stop()


def test_daemon_returns_once_listening_and_stops_by_its_pid_file(
        workdir: Path, sink: Sink, daemons: list[Daemon]) -> None:
    """relay --as-server forks, the parent exits 0 only once the port answers and the pid file
    is written; the daemon leads its own session; kill $(cat pidfile) stops every program and
    removes the pid file."""
    daemon = Daemon(workdir, "--as-server", "-u", "root", "-s", str(workdir / "queue"))
    daemons.append(daemon)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=2):
        pass  # no wait: it was listening when relay returned
    assert os.getsid(daemon.pid) == daemon.pid
    assert daemon.pid_file.stat().st_mode & 0o777 == 0o644
    intake = daemon.program("intake.main")
    os.kill(daemon.pid, signal.SIGTERM)
    assert wait_until(lambda: not alive(daemon.pid) and not alive(intake), 45)
    assert not daemon.pid_file.exists()


def test_no_daemon_stays_in_the_foreground(workdir: Path, sink: Sink) -> None:
    """--no-daemon: relay runs in the foreground and exits 0 after SIGTERM."""
    port = free_port()
    process = subprocess.Popen([RELAY, "-d", "-t", "-u", "root", "-p", str(port), "-s",
                                str(workdir / "queue")], cwd=workdir, env=program_env(),
                               stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: _listening(port), 30)
        assert process.poll() is None
    finally:
        process.terminate()
        assert process.wait(45) == 0


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_as_server_with_forward_to_and_poll_forwards(workdir: Path, sink: Sink,
                                                     daemons: list[Daemon]) -> None:
    """relay --as-server --forward-to H --poll 1 forwards what it stores within the period
    (and not before a poll: no --forward-on-disconnect)."""
    daemon = Daemon(workdir, "--as-server", "-u", "root", "-s", str(workdir / "queue"),
                    "--forward-to", sink.address, "--poll", "1")
    daemons.append(daemon)
    send(daemon.port)
    assert [m.data.endswith(b"\r\nbody 1\r\n") for m in sink.wait_for(1, timeout=10)] == [True]
    assert wait_until(lambda: spool_files(workdir / "queue") == [], 10)


def test_as_server_without_poll_forwards_only_when_told(workdir: Path, sink: Sink,
                                                        daemons: list[Daemon]) -> None:
    """--as-server --forward-to H: stored mail waits; SIGUSR1 to relay forwards it."""
    daemon = Daemon(workdir, "--as-server", "-u", "root", "-s", str(workdir / "queue"),
                    "--forward-to", sink.address)
    daemons.append(daemon)
    send(daemon.port)
    time.sleep(1.5)
    assert sink.messages == [] and len(spool_files(workdir / "queue")) == 2
    os.kill(daemon.pid, signal.SIGUSR1)
    sink.wait_for(1)


def _deferred(queue: Path, count: int) -> bool:
    """Exactly `count` envelopes wait in `queue`, each with its next try over 10 s away.

    An envelope can be claimed (renamed) between the listing and its stat: that round
    counts as not yet, and the caller's wait_until asks again."""
    envelopes = [n for n in spool_files(queue) if n.endswith(".envelope")]
    try:
        later = [(queue / n).stat().st_mtime > time.time() + 10 for n in envelopes]
    except FileNotFoundError:
        return False
    return len(envelopes) == count and all(later)


def test_ip_up_hook_sends_mail_deferred_during_the_outage(workdir: Path, sink: Sink,
                                                          daemons: list[Daemon]) -> None:
    """A proxy whose smarthost refused (451: deferred, next try in a minute) sends it all at
    once on the network-up hook's `relay --as-client`, and on SIGUSR1 to the daemon."""
    sink.behaviour.mail_reply = "451 link down"
    queue = workdir / "queue"
    daemon = Daemon(workdir, "--as-proxy", sink.address, "-u", "root", "-s", str(queue))
    daemons.append(daemon)
    send(daemon.port, 1)
    send(daemon.port, 2)
    assert wait_until(lambda: _deferred(queue, 2), 15)
    sink.behaviour.mail_reply = None
    hook = relay(workdir, "--as-client", sink.address, "--spool-dir", str(queue), "-u", "root")
    assert hook.returncode == 0, hook.stderr
    assert len(sink.messages) == 2 and spool_files(queue) == []
    sink.behaviour.mail_reply = "451 link down again"
    send(daemon.port, 3)
    assert wait_until(lambda: _deferred(queue, 1), 15)
    sink.behaviour.mail_reply = None
    os.kill(daemon.pid, signal.SIGUSR1)
    assert len(sink.wait_for(3)) == 3


def test_a_missing_client_filter_stops_the_start(workdir: Path, sink: Sink) -> None:
    """-Y with a typo: relay exits 1 at start (nothing listens; relay-intake's 78 as
    emailrelay's failure code), not every message to .bad."""
    port = free_port()
    done = relay(workdir, "--as-proxy", sink.address, "-p", str(port), "-u", "root",
                 "-s", str(workdir / "queue"), "-Y", "./no-such-filter")
    assert done.returncode == 1, done.stderr
    assert "no-such-filter is not an executable file" in done.stderr
    assert not _listening(port)


def test_refused_switch_exits_64_with_one_line(workdir: Path) -> None:
    """--pop exits 64 with one line saying why."""
    done = relay(workdir, "--pop", "-d")
    assert done.returncode == 64
    assert done.stderr.count("\n") == 1 and "POP" in done.stderr


def test_init_script_command_line(workdir: Path, sink: Sink) -> None:
    """The Debian init script's `emailrelay --as-server --syslog=mail --pid-file P CONFIG`,
    with the config file's forward-to and poll: starts, forwards, stops by the pid file."""
    port = free_port()
    pid_file = workdir / "run" / "emailrelay.pid"  # its directory is made
    config = workdir / "emailrelay.conf"
    config.write_text(f"# emailrelay.conf\nspool-dir {workdir / 'queue'}\nport {port}\n"
                      f"forward-to {sink.address}\npoll 1\nuser root\nlog-time\n")
    done = relay(workdir, "--as-server", "--syslog=mail", "--pid-file", str(pid_file),
                 str(config))
    assert done.returncode == 0, done.stderr
    pid = read_pid(pid_file)
    try:
        send(port)
        sink.wait_for(1)
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not alive(pid), 45) and not pid_file.exists()


def test_logrotate_hangup_reopens_the_log_and_delivery_goes_on(
        workdir: Path, sink: Sink, daemons: list[Daemon]) -> None:
    """logrotate moves the log file and sends SIGHUP: every program writes to a new file, and
    none stops (relay-deliver used to die of SIGHUP)."""
    log = workdir / "relay.log"
    daemon = Daemon(workdir, "--as-proxy", sink.address, "-u", "root", "-s",
                    str(workdir / "queue"), "--log-file", str(log), "--log-time")
    daemons.append(daemon)
    send(daemon.port, 1)
    sink.wait_for(1)
    assert wait_until(lambda: "message_forwarded" in log.read_text(), 10)
    log.rename(workdir / "relay.log.1")
    deliver = daemon.program("deliver.main")
    os.kill(daemon.pid, signal.SIGHUP)
    time.sleep(0.5)
    send(daemon.port, 2)
    sink.wait_for(2)
    assert wait_until(lambda: log.exists() and "message_forwarded" in log.read_text(), 10)
    assert "message_stored" in log.read_text()
    assert alive(deliver) and alive(daemon.pid)


def test_log_file_with_a_date(workdir: Path, sink: Sink, daemons: list[Daemon]) -> None:
    """--log-file NAME.%d writes to NAME.YYYYMMDD (today's date)."""
    daemon = Daemon(workdir, "-d", "-u", "root", "-s", str(workdir / "queue"),
                    "--log-file", str(workdir / "relay.%d"))
    daemons.append(daemon)
    today = workdir / f"relay.{time.strftime('%Y%m%d')}"
    assert wait_until(lambda: today.exists() and "intake_started" in today.read_text(), 10)


@as_root
def test_user_nobody_runs_every_program_and_filter_as_nobody(workdir: Path, sink: Sink,
                                                             daemons: list[Daemon]) -> None:
    """Started as root with --user nobody: intake's workers (after binding), their storage
    process, deliver and the filter all run as nobody (seen in /proc: real, effective,
    saved and file-system uid); spool files are 0660."""
    nobody = pwd.getpwnam("nobody")
    queue = workdir / "queue"
    os.chown(queue, nobody.pw_uid, nobody.pw_gid)
    filter_script = workdir / "filter.sh"
    filter_script.write_text(f"#!/bin/sh\nid -u > {workdir}/queue/filter-uid\nexit 0\n")
    filter_script.chmod(0o755)
    daemon = Daemon(workdir, "--as-proxy", sink.address, "--user", "nobody", "-s", str(queue),
                    "--filter", str(filter_script))
    daemons.append(daemon)
    intake = daemon.program("intake.main")
    # intake's workers (with --processes 1, intake itself) and the storage process (the
    # parent's child, shared by the workers; with --processes 1, intake's own)
    workers = [p for p in children(intake) if "-m intake.main" in command_line(p)] or [intake]
    storage = [p for owner in sorted({intake, *workers}) for p in children(owner)
               if "storage_process" in command_line(p)]
    assert storage

    def uids(pid: int) -> list[str]:
        status = Path(f"/proc/{pid}/status").read_text()
        return next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]

    # A storage process switches as its first step, before it reads a message: on a busy
    # machine that can be a moment after intake_started.
    for pid in (*workers, *storage, daemon.program("deliver.main")):
        assert wait_until(lambda pid=pid: uids(pid) == [str(nobody.pw_uid)] * 4, 10), \
            command_line(pid)
    sink.behaviour.mail_reply = "451 hold it"
    send(daemon.port)
    assert wait_until(lambda: (queue / "filter-uid").exists(), 10)
    assert (queue / "filter-uid").read_text().strip() == str(nobody.pw_uid)
    content = next(queue.glob("*.content"))
    assert content.stat().st_uid == nobody.pw_uid
    assert content.stat().st_mode & 0o777 == 0o660


def test_version_in_every_program(workdir: Path) -> None:
    """--version prints the version and exits 0 in every program; relay --version --verbose
    lists the build's features as E-MailRelay does."""
    for program in ("relay-intake", "relay-deliver", "relay-resubmit", "relay-notify",
                    "relay-submit", "relay-queue"):
        done = subprocess.run([str(BIN / program), "--version"], cwd=workdir,
                              env=program_env(), text=True, capture_output=True, timeout=30,
                              check=False)
        assert done.returncode == 0 and program in done.stdout, (program, done.stderr)
    verbose = relay(workdir, "--version", "--verbose")
    assert verbose.returncode == 0
    assert "TLS library: OpenSSL" in verbose.stdout and "POP server: disabled" in verbose.stdout


def test_a_domain_without_a_dot_says_ehlo_with_the_address(workdir: Path, sink: Sink) -> None:
    """--domain without a dot: the client says EHLO [127.0.0.1], as E-MailRelay's does;
    with a dot, the name."""
    queue = workdir / "queue"
    for domain, expected in (("nodot", "[127.0.0.1]"), ("relay.example.org",
                                                        "relay.example.org")):
        subprocess.run([str(BIN / "relay-submit"), "--spool-dir", str(queue), "b@x.test"],
                       input=b"Subject: s\n\nbody\n", env=program_env(), check=True,
                       timeout=30)
        done = relay(workdir, "--as-client", sink.address, "-s", str(queue), "-u", "root",
                     "--domain", domain)
        assert done.returncode == 0, done.stderr
        assert sink.messages[-1].ehlo == expected


def _submit(queue: Path, *recipients: str) -> None:
    subprocess.run([str(BIN / "relay-submit"), "--spool-dir", str(queue), *recipients],
                   input=b"Subject: s\n\nbody\n", env=program_env(), check=True, timeout=30)


def test_forward_to_all_by_default_and_forward_to_some(workdir: Path, sink: Sink) -> None:
    """One recipient refused with 550: by default (E-MailRelay's --forward-to-all) the message
    is not sent and goes to .bad whole; with --forward-to-some the others get it."""
    queue = workdir / "queue"
    sink.behaviour.rcpt_replies = {"no@x.test": "550 no such user"}
    _submit(queue, "yes@x.test", "no@x.test")
    done = relay(workdir, "--as-client", sink.address, "-s", str(queue), "-u", "root")
    assert done.returncode == 0, done.stderr
    assert sink.messages == []
    assert len(list(queue.glob("*.envelope.bad"))) == 1
    for bad in queue.glob("*.envelope.bad"):
        bad.unlink()
    for content in queue.glob("*.content"):
        content.unlink()
    _submit(queue, "yes@x.test", "no@x.test")
    done = relay(workdir, "--as-client", sink.address, "-s", str(queue), "-u", "root",
                 "--forward-to-some")
    assert done.returncode == 0, done.stderr
    assert [m.rcpt_tos for m in sink.messages] == [["yes@x.test"]]


def test_client_interface_binds_the_local_address(workdir: Path, sink: Sink) -> None:
    """--client-interface 127.0.0.2: the smarthost sees the connection come from 127.0.0.2."""
    queue = workdir / "queue"
    _submit(queue, "b@x.test")
    done = relay(workdir, "--as-client", sink.address, "-s", str(queue), "-u", "root",
                 "--client-interface", "127.0.0.2")
    assert done.returncode == 0, done.stderr
    assert sink.messages[0].peer[0] == "127.0.0.2"


def test_forward_at_start_with_no_smtp(workdir: Path, sink: Sink,
                                       daemons: list[Daemon]) -> None:
    """--no-smtp --forward -o H: no SMTP port, the queued mail goes out at start (-e: the
    daemon closes stderr, or the test would wait for it)."""
    queue = workdir / "queue"
    _submit(queue, "b@x.test")
    daemon = Daemon(workdir, "--no-smtp", "--forward", "-e", "-o", sink.address, "-u", "root",
                    "-s", str(queue))
    daemons.append(daemon)
    sink.wait_for(1)
    assert not _listening(daemon.port)


def test_dont_serve_without_forward_ends_at_once(workdir: Path) -> None:
    """--dont-serve and nothing to forward: relay exits 0 at once, as E-MailRelay."""
    done = relay(workdir, "--dont-serve", "-s", str(workdir / "queue"), "-u", "root")
    assert done.returncode == 0 and done.stderr == ""


def test_immediate_answers_the_client_with_the_smarthosts_reply(
        workdir: Path, sink: Sink, daemons: list[Daemon]) -> None:
    """--immediate: the message goes to the smarthost before the client's answer, which is
    the smarthost's: 250 (nothing spooled), its 550, its 451 (the client keeps the message)."""
    queue = workdir / "queue"
    daemon = Daemon(workdir, "--as-proxy", sink.address, "--immediate", "-u", "root",
                    "-s", str(queue))
    daemons.append(daemon)
    send(daemon.port, 1)
    assert len(sink.messages) == 1  # already there when the client got its 250
    assert spool_files(queue) == []
    for reply, code in (("550 5.1.1 no such user", 550), ("451 4.3.0 try later", 451)):
        sink.behaviour.rcpt_replies = {"b@example.net": reply}
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(daemon.port, 2)
        assert refused.value.smtp_code == code
        assert reply.split(" ", 2)[2].encode() in refused.value.smtp_error
        assert spool_files(queue) == [] and len(sink.messages) == 1


def test_a_program_that_dies_stops_relay_and_says_so_in_the_log(
        workdir: Path, sink: Sink, daemons: list[Daemon]) -> None:
    """relay-deliver killed: relay stops intake, removes its pid file, exits, and its own
    log line (in the --log-file, stderr being closed) names the program and its end."""
    log = workdir / "relay.log"
    daemon = Daemon(workdir, "--as-proxy", sink.address, "-u", "root", "-s",
                    str(workdir / "queue"), "--log-file", str(log))
    daemons.append(daemon)
    intake = daemon.program("intake.main")
    os.kill(daemon.program("deliver.main"), signal.SIGKILL)
    assert wait_until(lambda: not alive(daemon.pid) and not alive(intake), 45)
    assert not daemon.pid_file.exists()
    text = log.read_text()
    assert "event=program_ended" in text and "program=relay-deliver" in text
    assert "code=-9" in text


def test_anonymous_says_less(workdir: Path, sink: Sink, daemons: list[Daemon]) -> None:
    """--anonymous: the greeting and EHLO name neither host nor software, VRFY says only that
    it cannot, and the stored message has no Received line (E-MailRelay's four scopes;
    --anonymous=content alone only drops the Received line)."""
    queue = workdir / "queue"
    daemon = Daemon(workdir, "-d", "-u", "root", "-s", str(queue), "--anonymous",
                    "--domain", "relay.example.org")
    daemons.append(daemon)
    with smtplib.SMTP() as client:
        code, greeting = client.connect("127.0.0.1", daemon.port)
        assert (code, greeting) == (220, b"greeting")  # E-MailRelay 2.6.1's words
        assert client.ehlo()[1].split(b"\n")[0] == b"smtp says hello"
        assert client.verify("x@example.net") == (252, b"2.5.2 Cannot VRFY")
        client.sendmail("a@example.com", ["b@example.net"], b"Subject: s\r\n\r\nbody\r\n")
    assert wait_until(lambda: any(queue.glob("*.envelope")), 10)
    assert next(queue.glob("*.content")).read_bytes() == b"Subject: s\r\n\r\nbody\r\n"
    daemon.stop()
    for path in queue.iterdir():
        path.unlink()
    partly = Daemon(workdir, "-d", "-u", "root", "-s", str(queue), "--anonymous=content",
                    "--domain", "relay.example.org")
    daemons.append(partly)
    with smtplib.SMTP() as client:
        code, greeting = client.connect("127.0.0.1", partly.port)
        assert greeting.startswith(b"relay.example.org ")
        client.sendmail("a@example.com", ["b@example.net"], b"Subject: s\r\n\r\nbody\r\n")
    assert wait_until(lambda: any(queue.glob("*.envelope")), 10)
    assert not next(queue.glob("*.content")).read_bytes().startswith(b"Received:")


def test_an_unknown_anonymous_scope_stops_intake(workdir: Path) -> None:
    """relay-intake --anonymous bogus: exit 78 naming the scope and the four there are."""
    done = subprocess.run([str(BIN / "relay-intake"), "--spool-dir", str(workdir / "queue"),
                           "--port", "0", "--anonymous", "server,bogus"], cwd=workdir,
                          env=program_env(), capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 78
    assert "unknown scope 'bogus'" in done.stderr and "vrfy, server, content" in done.stderr


def test_programs_stop_when_relay_is_killed(workdir: Path, sink: Sink,
                                            daemons: list[Daemon]) -> None:
    """kill -9 of the relay daemon: intake and deliver get SIGTERM and end (no orphan keeps
    the port or the spool)."""
    daemon = Daemon(workdir, "--as-proxy", sink.address, "-u", "root", "-s",
                    str(workdir / "queue"))
    daemons.append(daemon)
    programs = [daemon.program("intake.main"), daemon.program("deliver.main")]
    os.kill(daemon.pid, signal.SIGKILL)
    assert wait_until(lambda: not any(alive(pid) for pid in programs), 45)
    assert not _listening(daemon.port)
