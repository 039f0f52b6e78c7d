"""The admin interface's connections (tools.admin_server) and the event pipe (common.events),
with real sockets and pipes: the cap on connections, clients that never read, events that
cannot wait, and E-MailRelay's spelling of an event."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from support.programs import program_env
from support.sink import free_port

from common import events
from spool import Spool
from tools.admin import PROMPT, AdminSettings, Session
from tools.admin_server import MAX_CONNECTIONS, TOO_MANY, AdminServer, Hub

RELAY = str(Path(sys.executable).with_name("relay"))
WAIT = 60.0


def wait_until(condition: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def ask(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    data = b""
    sock.settimeout(WAIT)
    while not data.endswith(PROMPT.encode()):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(WAIT)
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture
def hub_server(tmp_path: Path) -> Iterator[tuple[Hub, AdminServer]]:
    """An admin server on a free port with a cap of 3 and a 1 s write limit."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    settings = AdminSettings(spool=Spool(str(spool_dir)), forward_to=None)
    hub = Hub(lambda: Session(settings), lambda _peer: True, structlog.get_logger("test"),
              max_connections=3, send_timeout=1.0)
    server = AdminServer(0, hub, ("127.0.0.1",), settings.listening)
    yield hub, server
    server.stop()


def client(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    return sock


def test_connections_over_the_cap_are_refused_with_a_line(
        hub_server: tuple[Hub, AdminServer]) -> None:
    """With 3 clients served, a 4th gets `error: too many connections` and is closed; once
    one leaves, a new client is served again."""
    hub, server = hub_server
    served = [client(server.port) for _ in range(3)]
    for sock in served:
        assert ask(sock, b"pid\r\n") == f"{os.getpid()}\r\n".encode() + PROMPT.encode()
    extra = client(server.port)
    assert read_to_end(extra) == TOO_MANY
    extra.close()
    served.pop().close()
    wait_until(lambda: len(hub.connections) == 2)
    again = client(server.port)
    assert ask(again, b"pid\r\n").endswith(PROMPT.encode())
    for sock in [*served, again]:
        sock.close()


def test_a_client_that_never_reads_is_dropped(hub_server: tuple[Hub, AdminServer]) -> None:
    """A client that sends command after command and reads no reply: once a write to it
    has waited the write limit (1 s here), it is dropped, and meanwhile another client is
    answered at once."""
    hub, server = hub_server
    deaf = client(server.port, rcvbuf=1024)
    deaf.sendall(b"help\r\n" * 20000)  # ~2 MB of replies it will never read
    other = client(server.port)
    started = time.monotonic()
    assert ask(other, b"pid\r\n").endswith(PROMPT.encode())
    assert time.monotonic() - started < 5
    wait_until(lambda: len(hub.connections) == 1)  # the deaf one is gone
    assert ask(other, b"pid\r\n").endswith(PROMPT.encode())
    other.close()
    deaf.close()


def test_events_for_a_client_that_never_reads_are_dropped(
        hub_server: tuple[Hub, AdminServer]) -> None:
    """Publishing 50,000 events never waits for a notify client that does not read: they
    are dropped for it (counted) once its queue is full; a client that reads gets events
    in E-MailRelay's spelling meanwhile."""
    hub, server = hub_server
    deaf = client(server.port, rcvbuf=1024)
    deaf.sendall(b"notify\r\npid\r\n")
    reader = client(server.port)
    reader.sendall(b"notify\r\n")
    assert ask(reader, b"pid\r\n").endswith(PROMPT.encode())
    wait_until(lambda: sum(1 for c in hub.connections if c.session.notifying) == 2)
    started = time.monotonic()
    for number in range(50_000):
        server.publish(("client", "sent", f"emailrelay.1.2.{number}", ""))
    assert time.monotonic() - started < 20  # ~ a few microseconds each
    deaf_connection = next(c for c in hub.connections
                           if c.session.notifying and c.dropped > 0)
    assert deaf_connection.dropped > 40_000
    reader.settimeout(WAIT)
    data = b""
    while b"emailrelay.1.2." not in data:
        data += reader.recv(65536)
    assert data.startswith(b"\r\nEVENT: client: sent: emailrelay.1.2.")
    reader.close()
    deaf.close()


def test_the_event_pipe_never_blocks_the_writer() -> None:
    """A program's emit on a pipe nobody reads: it returns at once each time, drops what
    does not fit, and every line in the pipe is one whole event."""
    read_end, write_end = os.pipe()
    try:
        pipe = events.EventPipe(write_end)
        started = time.monotonic()
        for number in range(20_000):
            pipe.emit("client", "sending", f"emailrelay.1.2.{number}")
        assert time.monotonic() - started < 10
        assert pipe.dropped > 0
        os.set_blocking(read_end, False)
        data = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except BlockingIOError:
                break
            data += chunk
        reader = events.EventReader()
        got = reader.feed(data)
        assert len(got) == 20_000 - pipe.dropped
        assert got[0] == ("client", "sending", "emailrelay.1.2.0")
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_event_pipe_survives_its_reader() -> None:
    """When the reading end has gone (EPIPE), emit stops writing and never raises."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    pipe = events.EventPipe(write_end)
    pipe.emit("network", "in", "start")
    pipe.emit("network", "in", "stop")
    assert pipe.fd is None
    os.close(write_end)


def test_event_framing_skips_what_is_not_an_event() -> None:
    """The reader takes whole lines across reads, skips a line that is not 1 to 4 strings
    in a JSON array, and skips a line longer than PIPE_BUF whole."""
    reader = events.EventReader()
    assert reader.feed(b'["network", "in"') == []
    assert reader.feed(b', "start"]\n["a"') == [("network", "in", "start")]
    assert reader.feed(b']\nnot json\n[1, 2]\n["a","b","c","d","e"]\n{}\n[]\n') == [("a",)]
    assert reader.feed(b"x" * (events.MAX_LINE + 1)) == []
    assert reader.feed(b'"]\n["after"]\n') == [("after",)]


def test_event_text_is_emailrelays(spool: Spool) -> None:
    """An event is the line end, `EVENT: `, the non-empty words joined with `: `, and two
    spaces; control characters are escaped as E-MailRelay's printable() does."""
    session = Session(AdminSettings(spool=spool, forward_to=None))
    session.line(b"pid\n")
    assert session.event_text(("client", "forward", "end", "")) == \
        "\nEVENT: client: forward: end  "
    assert session.event_text(("client", "sent", "id", "a\tb\\c\x01\x7f\u00e9")) == \
        "\nEVENT: client: sent: id: a\\tb\\\\c\\x01\\x7f\u00e9  "
    assert Session(session.settings).event_text(("network", "in", "start")) == \
        "\r\nEVENT: network: in: start  "


def test_relay_caps_its_admin_connections(tmp_path: Path) -> None:
    """relay --admin serves at most MAX_CONNECTIONS admin clients at once: the next one is
    told `error: too many connections` and closed, while relay and the served ones go on."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    port = free_port()
    process = subprocess.Popen(
        [RELAY, "--no-daemon", "--user", "root", "--as-server", "--port", str(free_port()),
         "--spool-dir", str(spool_dir), "--admin", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=program_env())
    served: list[socket.socket] = []
    try:
        deadline = time.monotonic() + WAIT
        while not served:
            try:
                served.append(client(port))
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        served += [client(port) for _ in range(MAX_CONNECTIONS - 1)]
        for sock in served:
            assert ask(sock, b"pid\r\n") == f"{process.pid}\r\n".encode() + PROMPT.encode()
        extra = client(port)
        assert read_to_end(extra) == TOO_MANY
        extra.close()
        assert ask(served[0], b"list\r\n") == b"<none>\r\n" + PROMPT.encode()
        assert process.poll() is None
    finally:
        for sock in served:
            sock.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0
