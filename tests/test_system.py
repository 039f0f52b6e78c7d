"""End to end: the shipped supervisord.conf running relay:intake and relay:deliver, and the
`relay` command's E-MailRelay modes, with real processes, sockets and spools."""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.programs import BIN, program_env
from support.sink import Sink, free_port
from support.spool import spool_files, strip_received
from support.system import System, wait_until


def make_message(number: int) -> bytes:
    """A distinct message with a few header and body lines, CRLF line ends."""
    return (
        f"From: sender{number}@example.org\r\nTo: rcpt@example.com\r\n"
        f"Subject: message {number}\r\nMessage-ID: <m{number}@example.org>\r\n\r\n"
        f"Body of message {number}.\r\n..a line that starts with a dot\r\n"
    ).encode()


def send(port: int, messages: dict[int, list[str]]) -> None:
    """Send each numbered message to its recipients over one SMTP connection."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for number, recipients in messages.items():
            client.sendmail(f"sender{number}@example.org", recipients, make_message(number))


@pytest.fixture
def system(sink: Sink) -> Iterator[System]:
    running = System(sink.address, RELAY_POLL="2").start()
    try:
        yield running
    finally:
        running.stop()


def test_supervisord_runs_relay_end_to_end(system: System, sink: Sink) -> None:
    """100 messages through relay:* arrive byte-identical; with deliver stopped they wait."""
    batch = {n: [f"r{n}@example.com"] + ([f"s{n}@example.net"] if n % 5 == 0 else [])
             for n in range(100)}
    send(system.port, batch)
    received = sink.wait_for(100, timeout=60)
    by_subject = {}
    for message in received:
        body = strip_received(message.data)
        number = int(body.split(b"Subject: message ")[1].split(b"\r\n")[0])
        assert body == make_message(number)
        assert sorted(message.rcpt_tos) == sorted(batch[number])
        by_subject[number] = message
    assert sorted(by_subject) == list(range(100))
    assert wait_until(lambda: spool_files(system.spool) == [], 10)

    assert system.ctl("status").returncode == 0
    assert system.ctl("stop", "relay:deliver").returncode == 0
    status = system.ctl("status")
    assert status.returncode != 0 and "STOPPED" in status.stdout
    send(system.port, {n: ["late@example.com"] for n in range(100, 105)})
    waiting = [name for name in spool_files(system.spool) if name.endswith(".envelope")]
    assert len(waiting) == 5
    assert len(sink.messages) == 100
    assert system.ctl("start", "relay:deliver").returncode == 0
    sink.wait_for(105, timeout=30)
    assert wait_until(lambda: spool_files(system.spool) == [], 10)
    assert system.ctl("status").returncode == 0


def test_usr1_through_supervisorctl_makes_deliver_scan(sink: Sink) -> None:
    """A hand-dropped message that watchdog cannot see is found when USR1 asks for a scan."""
    system = System(sink.address, RELAY_POLL="3600").start()
    try:
        # Written as .new then renamed: a rename into place is the documented way to drop
        # mail by hand; to be sure only USR1 finds it, it is planted while deliver is stopped
        # and its scan-at-start is over, then deliver is told to look.
        assert system.ctl("stop", "relay:deliver").returncode == 0
        assert system.ctl("start", "relay:deliver").returncode == 0
        system.wait_running(["relay:deliver"])
        spool = system.spool
        (spool / "byhand.content").write_bytes(make_message(7))
        envelope = (
            "X-MailRelay-Format: #2821.8\r\nX-MailRelay-Content: 7bit\r\n"
            "X-MailRelay-From: sender7@example.org\r\nX-MailRelay-ToCount: 1\r\n"
            "X-MailRelay-To-Remote: hand@example.com\r\nX-MailRelay-Authentication: \r\n"
            "X-MailRelay-Client: 127.0.0.1\r\nX-MailRelay-ClientCertificate: \r\n"
            "X-MailRelay-MailFromAuthIn: \r\nX-MailRelay-MailFromAuthOut: \r\n"
            "X-MailRelay-ForwardTo: \r\nX-MailRelay-ForwardToAddress: \r\n"
            "X-MailRelay-ClientAccountSelector: \r\nX-MailRelay-Utf8MailboxNames: 0\r\n"
            "X-MailRelay-End: 1\r\n"
        )
        (spool / "byhand.envelope").write_text(envelope, newline="")
        # Watchdog may well see it anyway; USR1 must make it go in any case.
        assert system.ctl("signal", "USR1", "relay:deliver").returncode == 0
        received = sink.wait_for(1, timeout=15)
        assert received[0].data == make_message(7)
        assert received[0].rcpt_tos == ["hand@example.com"]
    finally:
        system.stop()


def run_relay(args: list[str], spool: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "relay"), *args], env=program_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    def ready() -> bool:
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as client:
                client.noop()
            return True
        except OSError:
            return False

    assert wait_until(ready, 20, 0.1)


def test_relay_as_proxy_with_filter(sink: Sink, spool_dir: Path, tmp_path: Path) -> None:
    """relay --as-proxy runs intake (with an E-MailRelay filter) and deliver together."""
    marker = tmp_path / "filtered"
    script = tmp_path / "mark.sh"
    script.write_text(f'#!/bin/sh\necho "$1" >> {marker}\nexit 0\n')
    script.chmod(0o755)
    port = free_port()
    process = run_relay(["--as-proxy", sink.address, "--port", str(port), "--spool-dir",
                         str(spool_dir), "--filter", str(script), "--no-daemon", "--log",
                         "--poll", "60", "--user", "root"], spool_dir)
    try:
        wait_listening(port, process)
        send(port, {n: [f"p{n}@example.com"] for n in range(10)})
        received = sink.wait_for(10, timeout=20)
        assert sorted(strip_received(m.data) for m in received) == sorted(
            make_message(n) for n in range(10))
        assert len(marker.read_text().splitlines()) == 10
        assert wait_until(lambda: spool_files(spool_dir) == [], 10)
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()[-2000:]


def test_relay_as_server_then_as_client(sink: Sink, spool_dir: Path) -> None:
    """relay --as-server spools mail; relay --as-client forwards it all and exits 0."""
    port = free_port()
    server = run_relay(["--as-server", "--no-daemon", "-p", str(port), "-s", str(spool_dir),
                        "-u", "root"], spool_dir)
    try:
        wait_listening(port, server)
        send(port, {n: ["c@example.com", "d@example.com"] for n in range(5)})
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert server.returncode == 0
    assert len([n for n in spool_files(spool_dir) if n.endswith(".envelope")]) == 5
    assert sink.messages == []
    client = subprocess.run([str(BIN / "relay"), "--as-client", sink.address, "--spool-dir",
                             str(spool_dir), "-u", "root"], env=program_env(),
                            capture_output=True, timeout=60)
    assert client.returncode == 0, client.stderr.decode()[-2000:]
    assert len(sink.messages) == 5
    assert all(m.rcpt_tos == ["c@example.com", "d@example.com"] for m in sink.messages)
    assert spool_files(spool_dir) == []


def test_relay_unknown_switch_and_help() -> None:
    """An unknown switch is a clear error with exit 1 (emailrelay's); --help --verbose lists
    every switch."""
    bad = subprocess.run([str(BIN / "relay"), "--as-server", "--frobnicate"],
                         env=program_env(), capture_output=True, text=True)
    assert bad.returncode == 1
    assert "unknown switch --frobnicate" in bad.stderr
    short = subprocess.run([str(BIN / "relay"), "--help"], env=program_env(),
                           capture_output=True, text=True)
    full = subprocess.run([str(BIN / "relay"), "--help", "--verbose"], env=program_env(),
                          capture_output=True, text=True)
    assert short.returncode == full.returncode == 0
    def listed(switch: str, text: str) -> bool:
        return re.search(rf"^  (-\S, |    ){switch}\b", text, re.MULTILINE) is not None

    for switch in ("--remote-clients", "--server-auth", "--client-auth", "--client-filter",
                   "--poll", "--no-syslog", "--pid-file", "--no-daemon", "--log"):
        assert listed(switch, full.stdout)
        assert not listed(switch, short.stdout)
    assert listed("--as-proxy", short.stdout)
