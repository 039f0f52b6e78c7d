"""The admin interface's `notify` (`relay --admin PORT`): after it, a client reads E-MailRelay
2.6.1's `EVENT:` lines while mail goes through relay's real intake and deliver (the events
travel the supervisor's event pipe), a client that did not ask reads none, and a client that
asked and then never reads holds up no mail."""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.admin import (
    EMAILRELAY,
    FOREGROUND,
    RELAY,
    WAIT,
    connect,
    relay_with_admin,
    start,
    stop,
)
from support.sink import Behaviour, Sink, free_port

from tools.admin import PROMPT

EVENT = re.compile(rb"\r\nEVENT: ([^\r\n]*?)  ")


class Watcher:
    """An admin client that sent `notify`: everything it has read, and the events in it
    (each without `EVENT: ` and its two trailing spaces)."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.data = b""
        self.sock.sendall(b"notify\r\npid\r\n")  # the pid's reply: notify was taken
        self.wait_for_data(PROMPT.encode())

    @property
    def events(self) -> list[bytes]:
        return [match.group(1) for match in EVENT.finditer(self.data)]

    def wait_for_data(self, ending: bytes, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while ending not in self.data:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {ending!r} in {self.data!r}")
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            assert chunk, self.data
            self.data += chunk

    def wait_for(self, event: bytes, timeout: float = WAIT) -> list[bytes]:
        """All events so far, once *event* is among them."""
        self.wait_for_data(b"\r\nEVENT: " + event + b"  ", timeout)
        return self.events


def send_mail(port: int, count: int = 1) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
        for number in range(count):
            client.sendmail("sender@example.com", ["rcpt@example.net"],
                            f"Subject: {number}\r\n\r\nbody\r\n".encode())


@pytest.fixture
def proxy(tmp_path: Path, sink: Sink) -> Iterator[tuple[int, int, Path]]:
    """relay --as-proxy to the sink with --admin: (SMTP port, admin port, its log file)."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    log = tmp_path / "relay.log"
    with log.open("wb") as stderr, relay_with_admin(
            spool_dir, "--as-proxy", sink.address, "--poll", "3600",
            stderr=stderr) as (smtp_port, admin_port, _process):
        yield smtp_port, admin_port, log


def test_notify_shows_a_message_going_through(proxy: tuple[int, int, Path], sink: Sink) -> None:
    """After notify, one message through relay gives E-MailRelay's events, as E-MailRelay
    spells them (line end first, `EVENT: `, the words joined by `: `, two spaces): the SMTP
    connection in, the forwarding pass with its reason, connecting and connected to the
    smarthost, sending and sent with the message's id, the pass's end. A second admin
    client that did not ask gets plain replies only."""
    smtp_port, admin_port, _spool = proxy
    watcher = Watcher(admin_port)
    assert watcher.events == []
    other = connect(admin_port)
    other.sendall(b"pid\r\n")
    pid_reply = other.recv(1000)
    # the other client's connection is itself an event for the watcher
    assert watcher.wait_for(b"network: in: start") == [b"network: in: start"]
    send_mail(smtp_port)
    events = watcher.wait_for(b"client: forward: end")
    sink.wait_for(1)
    smarthost = f"127.0.0.1:{sink.port}".encode()
    sending = [e for e in events if e.startswith(b"client: sending: ")]
    assert len(sending) == 1
    message_id = sending[0].removeprefix(b"client: sending: ")
    assert re.fullmatch(rb"emailrelay\.\d+\.\d+\.\d+", message_id)
    expected = [b"network: in: start", b"client: forward: start: new message",
                b"client: sending: " + message_id, b"network: out: start",
                b"client: connecting: " + smarthost, b"client: connected: " + smarthost,
                b"client: sent: " + message_id, b"client: forward: end"]
    assert [e for e in events[1:] if e in expected] == expected, events
    assert watcher.wait_for(b"network: in: stop").count(b"network: in: stop") == 1
    other.sendall(b"list\r\n")
    assert other.recv(1000) == b"<none>\r\n" + PROMPT.encode()
    assert pid_reply.endswith(PROMPT.encode()) and b"EVENT" not in pid_reply
    watcher.sock.close()
    other.close()


def test_notify_shows_the_smarthost_refusal(tmp_path: Path) -> None:
    """A message the smarthost refuses: `client: sent: ID: 5.7.1 go away`, the reply's text
    without its code, as E-MailRelay 2.6.1 writes it; the message is in `.bad`."""
    with Sink(Behaviour(data_reply="550 5.7.1 go away")) as refusing:
        spool_dir = tmp_path / "spool"
        spool_dir.mkdir(mode=0o700)
        with relay_with_admin(spool_dir, "--as-proxy",
                              refusing.address) as (smtp_port, admin_port, _process):
            watcher = Watcher(admin_port)
            send_mail(smtp_port)
            events = watcher.wait_for(b"client: forward: end")
            sent = [e for e in events if e.startswith(b"client: sent: ")]
            assert len(sent) == 1 and sent[0].endswith(b": 5.7.1 go away"), events
            assert len(list(spool_dir.glob("*.envelope.bad"))) == 1
            watcher.sock.close()


def test_a_notify_client_that_never_reads_holds_up_no_mail(proxy: tuple[int, int, Path],
                                                          sink: Sink) -> None:
    """An admin client asks for events and then never reads (a tiny receive buffer): 300
    messages still go through intake and deliver to the smarthost, and the admin port still
    answers another client. (What becomes of its events: tests/test_admin_server.py.)"""
    smtp_port, admin_port, log = proxy
    deaf = connect(admin_port, rcvbuf=1024)
    deaf.sendall(b"notify\r\n")
    started = time.monotonic()
    for _ in range(6):
        send_mail(smtp_port, 50)
    sink.wait_for(300, timeout=240)
    assert len(sink.messages) == 300
    other = connect(admin_port)
    other.settimeout(10)
    other.sendall(b"list\r\n")
    reply = b""
    while not reply.endswith(PROMPT.encode()):
        chunk = other.recv(1000)
        assert chunk
        reply += chunk
    assert time.monotonic() - started < 240
    assert b"event=admin_connection" in log.read_bytes()
    other.close()
    deaf.close()


def test_same_events_as_emailrelay(tmp_path: Path, sink: Sink) -> None:
    """Against E-MailRelay 2.6.1 --as-proxy with the same message: the same event lines,
    byte for byte in their framing, for the connection in, connecting and connected to the
    smarthost, sending and sent (the id is each program's own) and the end of the pass."""
    if not EMAILRELAY.exists():
        pytest.skip("E-MailRelay 2.6.1 is not built here (EMAILRELAY_BIN)")
    seen: dict[str, list[bytes]] = {}
    for name in ("emailrelay", "relay"):
        spool_dir = tmp_path / name
        spool_dir.mkdir(mode=0o700)
        smtp_port, admin_port = free_port(), free_port()
        switches = ["--as-proxy", sink.address, "--port", str(smtp_port), "--spool-dir",
                    str(spool_dir), "--admin", str(admin_port)]
        command = ([str(EMAILRELAY), "--no-daemon", "--no-syslog", "--interface", "127.0.0.1",
                    *switches] if name == "emailrelay"
                   else [RELAY, *FOREGROUND, *switches])
        process = start(command, subprocess.DEVNULL)
        try:
            watcher = Watcher(admin_port)
            send_mail(smtp_port)
            events = watcher.wait_for(b"client: forward: end")
            seen[name] = [re.sub(rb"emailrelay\.\d+\.\d+\.\d+", b"ID", e) for e in events]
            watcher.sock.close()
        finally:
            stop(process)
        shutil.rmtree(spool_dir, ignore_errors=True)
    smarthost = f"127.0.0.1:{sink.port}".encode()
    common = [b"network: in: start", b"network: out: start",
              b"client: connecting: " + smarthost, b"client: connected: " + smarthost,
              b"client: sending: ID", b"client: sent: ID", b"client: forward: end"]
    for name, events in seen.items():
        assert set(common) <= set(events), (name, events)
