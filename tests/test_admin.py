"""relay's admin interface (`relay --admin PORT`) against E-MailRelay 2.6.1's: the same
commands give the same bytes back from both, and flush, forward, unfail-all and terminate do
their work on a real spool with real processes."""

from __future__ import annotations

import os
import socket
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
from support.foreground import foreground
from support.programs import program_env
from support.sink import Sink, free_port
from support.system import wait_until
from support.tools import CONTENT, emailrelay_envelope, failures_of

from tools.admin import PROMPT, is_local


def drop(spool_dir: Path, message_id: str, suffix: str, envelope: bytes,
         due: float | None = None) -> None:
    """A message pair, content first; *due*: the envelope arrives already deferred until
    then (its mtime set before it takes its name, so a running deliver never sees it due)."""
    stage = spool_dir.parent / "stage"
    stage.mkdir(exist_ok=True)
    for name, data in ((f"{message_id}.content", CONTENT), (f"{message_id}{suffix}", envelope)):
        (stage / name).write_bytes(data)
        os.chmod(stage / name, 0o600)
        if due is not None and name.endswith(suffix):
            os.utime(stage / name, (due, due))
        os.rename(stage / name, spool_dir / name)


def fill(spool_dir: Path, due: float | None = None) -> None:
    """Two waiting messages (deferred until *due*, if given), one failed one, one held one
    (invisible to E-MailRelay)."""
    drop(spool_dir, "emailrelay.1.1700000000.2", ".envelope", emailrelay_envelope(), due)
    drop(spool_dir, "emailrelay.1.1700000000.1", ".envelope", emailrelay_envelope(), due)
    drop(spool_dir, "emailrelay.1.1700000000.3", ".envelope.bad",
         emailrelay_envelope(failures=failures_of(1)))
    drop(spool_dir, "emailrelay.1.1700000000.4", ".envelope.held", emailrelay_envelope())


class Admin:
    """A client of an admin port: send a line, read until the prompt (or a quiet moment)."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.sock.settimeout(30)

    def until_closed(self, line: bytes) -> bytes:
        """Send *line*, then read until relay closes the connection (quit, terminate)."""
        self.sock.sendall(line)
        self.sock.settimeout(WAIT)
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def ask(self, line: bytes, timeout: float = 30.0) -> bytes:
        """Send *line*; what comes back up to the prompt (or the end of the connection)."""
        self.sock.sendall(line)
        data = b""
        self.sock.settimeout(timeout)
        while not data.endswith(PROMPT.encode()):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def relay_admin(tmp_path: Path, sink: Sink) -> Iterator[tuple[Path, int, subprocess.Popen[bytes]]]:
    """relay --as-proxy to the sink, with --admin and --admin-terminate, on a filled spool."""
    spool_dir = tmp_path / "relay-spool"
    spool_dir.mkdir(mode=0o700)
    with relay_with_admin(spool_dir, "--as-proxy", sink.address, "--admin-terminate", "--poll",
                          "3600", stderr=subprocess.PIPE) as (_smtp_port, port, process):
        yield spool_dir, port, process


COMPARED = [b"\r\n", b"LIST\r\n", b"failures\r\n", b"bogus thing\r\n", b"  \r\n",
            b"flush\r\n"]


def test_same_replies_as_emailrelay(tmp_path: Path) -> None:
    """Byte for byte the same as E-MailRelay 2.6.1 for the same spool: an empty line, LIST
    (any case), failures, an unknown command, a blank line, flush without --forward-to;
    then LF-only line ends are answered with LF; unfail-all; list with nothing left."""
    if not EMAILRELAY.exists():
        pytest.skip("E-MailRelay 2.6.1 is not built here")
    replies: dict[str, list[bytes]] = {}
    for name in ("emailrelay", "relay"):
        spool_dir = tmp_path / name
        spool_dir.mkdir(mode=0o700)
        fill(spool_dir)
        port = free_port()
        if name == "emailrelay":
            command = [str(EMAILRELAY), "--as-server", "--no-daemon", "--port", str(free_port()),
                       "--interface", "127.0.0.1", "--spool-dir", str(spool_dir),
                       "--admin", str(port), "--no-syslog"]
        else:
            command = [RELAY, *FOREGROUND, "--as-server", "--port", str(free_port()),
                       "--spool-dir", str(spool_dir), "--admin", str(port)]
        process = start(command)
        try:
            client = Admin(port)
            answers = [client.ask(line) for line in COMPARED]
            client.close()
            lf = Admin(port)
            answers.append(lf.ask(b"list\n"))
            answers.append(lf.ask(b"unfail-all\n"))
            answers.append(lf.ask(b"failures\n"))
            for message_id in ("emailrelay.1.1700000000.1", "emailrelay.1.1700000000.2",
                               "emailrelay.1.1700000000.3"):
                for path in spool_dir.glob(f"{message_id}.*"):
                    path.unlink()
            answers.append(lf.ask(b"list\n"))
            lf.close()
        finally:
            stop(process)
        replies[name] = answers
    assert replies["relay"] == replies["emailrelay"]
    first = replies["relay"]
    assert first[1] == (b"emailrelay.1.1700000000.1\r\r\nemailrelay.1.1700000000.2\r\n"
                        + PROMPT.encode())
    assert first[5] == b"error: no remote server configured: use --forward-to\r\nE-MailRelay> "
    assert replies["relay"][-1] == b"<none>\nE-MailRelay> "


def _listen_lines(reply: bytes) -> list[bytes]:
    return [line for line in reply.split(b"\r\r\n") if line.startswith(b"LISTEN: ")]


def test_status_lists_the_smtp_ports_as_emailrelay(tmp_path: Path) -> None:
    """status lists the admin port, then each SMTP address (IPv6 as ::1.PORT), as E-MailRelay
    2.6.1 does for the same --interface list and ports."""
    if not EMAILRELAY.exists():
        pytest.skip("E-MailRelay 2.6.1 is not built here")
    smtp_port, admin_port = free_port(), free_port()
    listed: dict[str, list[bytes]] = {}
    for name in ("emailrelay", "relay"):
        spool_dir = tmp_path / name
        spool_dir.mkdir(mode=0o700)
        switches = ["--as-server", "--port", str(smtp_port), "--interface", "127.0.0.1,::1",
                    "--spool-dir", str(spool_dir), "--admin", str(admin_port)]
        command = ([str(EMAILRELAY), "--no-daemon", "--no-syslog", *switches]
                   if name == "emailrelay" else [RELAY, *FOREGROUND, *switches])
        process = start(command)
        try:
            client = Admin(admin_port)
            listed[name] = _listen_lines(client.ask(b"status\r\n"))
            client.close()
        finally:
            stop(process)
    smtp = {f"LISTEN: 127.0.0.1:{smtp_port}".encode(), f"LISTEN: ::1.{smtp_port}".encode()}
    assert listed["relay"][0] == f"LISTEN: 127.0.0.1:{admin_port}".encode()
    assert set(listed["relay"][-2:]) == smtp
    assert set(listed["relay"]) == set(listed["emailrelay"])


def test_flush_forwards_deferred_mail_now(relay_admin: tuple[Path, int, subprocess.Popen[bytes]],
                                          sink: Sink) -> None:
    """flush makes waiting mail due now (deferred for an hour included): the running deliver
    forwards it at once; held and failed mail stay; flush on an empty queue says so."""
    spool_dir, port, _process = relay_admin
    client = Admin(port)
    fill(spool_dir, due=time.time() + 3600)
    time.sleep(1.0)  # the watch has seen them: still nothing is sent before the flush
    assert sink.messages == []
    assert client.ask(b"flush\r\n") == b"OK\r\n" + PROMPT.encode()
    sink.wait_for(2)
    deadline = time.monotonic() + 10
    while list(spool_dir.glob("*.envelope")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.ask(b"list\r\n") == b"<none>\r\n" + PROMPT.encode()
    assert client.ask(b"flush\r\n") == b"error: no messages to send\r\n" + PROMPT.encode()
    assert client.ask(b"failures\r\n") == b"emailrelay.1.1700000000.3\r\n" + PROMPT.encode()
    assert (spool_dir / "emailrelay.1.1700000000.4.envelope.held").exists()
    assert client.ask(b"unfail-all\r\n") == PROMPT.encode()
    sink.wait_for(3)
    assert client.ask(b"forward\r\n") == b"OK\r\n" + PROMPT.encode()
    client.close()


def test_pid_help_info_status_quit(relay_admin: tuple[Path, int, subprocess.Popen[bytes]]) -> None:
    """pid is relay's own; help lists terminate when enabled; info and status answer; quit
    closes the connection."""
    _spool_dir, port, process = relay_admin
    client = Admin(port)
    assert client.ask(b"pid\r\n") == f"{process.pid}\r\n".encode() + PROMPT.encode()
    help_text = client.ask(b"help\r\n").decode()
    assert help_text.startswith("commands: failures, flush, forward, help, info, list")
    assert "terminate, unfail-all" in help_text
    assert client.ask(b"info\r\n").startswith(b"usage: info {copyright|credit|version|warranty}")
    assert b"LISTEN: 127.0.0.1:" in client.ask(b"status\r\n")
    # notify answers nothing: the next command's reply comes alone (no mail flows here)
    client.sock.sendall(b"notify\r\n")
    assert client.ask(b"pid\r\n") == f"{process.pid}\r\n".encode() + PROMPT.encode()
    assert client.until_closed(b"quit\r\n") == b""
    client.close()


def test_terminate_stops_relay(relay_admin: tuple[Path, int, subprocess.Popen[bytes]]) -> None:
    """terminate (with --admin-terminate) stops relay cleanly: the connection is closed
    with no reply, relay exits 0 and its admin port no longer takes connections."""
    _spool_dir, port, process = relay_admin
    client = Admin(port)
    assert client.ask(b"pid\r\n") == f"{process.pid}\r\n".encode() + PROMPT.encode()
    assert client.until_closed(b"terminate\r\n") == b""
    assert process.wait(WAIT) == 0
    client.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_terminate_needs_admin_terminate(tmp_path: Path) -> None:
    """Without --admin-terminate, terminate is an unrecognised command and relay runs on;
    30 unrecognised commands end the connection, as in E-MailRelay."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    port = free_port()
    process = start([RELAY, *FOREGROUND, "--as-server", "--port", str(free_port()), "--spool-dir",
                     str(spool_dir), "--admin", str(port)])
    try:
        client = Admin(port)
        assert client.ask(b"terminate\r\n") == b"error: unrecognised command\r\n" + \
            PROMPT.encode()
        assert b"terminate" not in client.ask(b"help\r\n")
        for _ in range(28):
            client.ask(b"nonsense\r\n")
        assert client.until_closed(b"nonsense\r\n") == (b"error: unrecognised command\r\n"
                                                         + PROMPT.encode())
        assert process.poll() is None
    finally:
        stop(process)


def test_as_server_flush_runs_a_delivery(tmp_path: Path, sink: Sink) -> None:
    """relay --as-server --forward-to --admin: flush forwards in the foreground (no deliver
    runs), then answers OK, as E-MailRelay's flush does."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    fill(spool_dir)
    port = free_port()
    process = start([RELAY, *FOREGROUND, "--as-server", "--port", str(free_port()), "--spool-dir",
                     str(spool_dir), "--admin", str(port), "--forward-to", sink.address])
    try:
        client = Admin(port)
        assert client.ask(b"flush\r\n", timeout=60) == b"OK\r\n" + PROMPT.encode()
        assert len(sink.messages) == 2
        client.close()
    finally:
        stop(process)


def test_admin_port_in_use_and_bad_port(tmp_path: Path) -> None:
    """--admin on a port in use: exit 2 (emailrelay's 'socket bind error'); not a port:
    exit 1; a clear message, nothing started."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([RELAY, *FOREGROUND, "--as-server", "--port", str(free_port()),
                               "--spool-dir", str(spool_dir), "--admin", str(port)],
                              capture_output=True,
                              text=True, timeout=30, env=program_env())
    assert done.returncode == 2
    assert f"admin: cannot listen on 127.0.0.1 port {port}" in done.stderr
    bad = subprocess.run([RELAY, *FOREGROUND, "--as-server", "--spool-dir", str(spool_dir),
                          "--admin", "x"],
                         capture_output=True, text=True, timeout=30, env=program_env())
    assert bad.returncode == 1 and "not a port number" in bad.stderr


def remote_address(family: socket.AddressFamily) -> str | None:
    """This host's address of *family* that is not loopback (None when it has none)."""
    probe_to = "192.0.2.1" if family == socket.AF_INET else "2001:db8::1"
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((probe_to, 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if is_local(address) or address in ("0.0.0.0", "::") else address


def test_remote_clients_are_served_over_ipv4_and_ipv6(tmp_path: Path) -> None:
    """--remote-clients: the admin port listens on every IPv4 and IPv6 address, and a client
    from a non-loopback address of each family gets its replies; without it, such a client
    cannot even connect. (--interface smtp=: an address without a qualifier would be the
    admin server's too, as in E-MailRelay.)"""
    addresses = [a for a in (remote_address(socket.AF_INET), remote_address(socket.AF_INET6))
                 if a is not None]
    if not addresses:
        pytest.skip("this host has no non-loopback address to appear as a remote client")
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    fill(spool_dir)
    for remote in (True, False):
        port = free_port()
        switches = ["--remote-clients"] if remote else []
        process = start([RELAY, *FOREGROUND, "--as-server", "--port", str(free_port()),
                         "--interface", "smtp=127.0.0.1", "--spool-dir", str(spool_dir),
                         "--admin", str(port), *switches])
        try:
            Admin(port).close()  # up (over loopback)
            for address in addresses:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                with socket.socket(family) as client:
                    client.settimeout(5)
                    client.bind((address, 0))
                    if not remote:
                        assert client.connect_ex((address, port)) != 0, address
                        continue
                    client.connect((address, port))
                    client.sendall(b"failures\r\n")
                    reply = b""
                    while not reply.endswith(PROMPT.encode()):
                        chunk = client.recv(4096)
                        assert chunk, reply
                        reply += chunk
                    assert reply == b"emailrelay.1.1700000000.3\r\n" + PROMPT.encode(), address
        finally:
            stop(process)


def test_only_loopback_is_local() -> None:
    """Loopback (IPv4, IPv6, IPv4-mapped) is local; anything else is not."""
    assert is_local("127.0.0.1") and is_local("::1") and is_local("::ffff:127.0.0.1")
    assert not is_local("192.0.2.1") and not is_local("::ffff:192.0.2.1")
    assert not is_local("not an address")


@pytest.mark.parametrize("prefix", ["", "in-"], ids=["unnamed", "named"])
def test_the_admin_interface_logs_where_it_listens(tmp_path: Path, prefix: str) -> None:
    """With --log, relay says where its admin interface listens (`admin_started`, with
    `unit=in` for an instance named in), as emailrelay 2.6.1 says "admin server on" (with
    `[in]`) for the same switches."""
    smtp_port, admin_port = free_port(), free_port()
    programs = [RELAY, *([str(EMAILRELAY)] if EMAILRELAY.exists() else [])]
    for program in programs:
        spool_dir = tmp_path / Path(program).name
        spool_dir.mkdir(mode=0o700)
        switches = [f"--{prefix}spool-dir", str(spool_dir), f"--{prefix}port", str(smtp_port),
                    f"--{prefix}interface", "127.0.0.1", f"--{prefix}admin", str(admin_port),
                    f"--{prefix}forward-to", "127.0.0.1:9"]
        with foreground(program, "--log", "--no-syslog", *switches, cwd=tmp_path,
                        ports=[smtp_port, admin_port]) as log:
            if program == RELAY:
                unit = "unit=in " if prefix else ""
                line = f"{unit}event=admin_started listen=['127.0.0.1:{admin_port}']"
            else:
                unit = "[in] " if prefix else ""
                line = f"info: {unit}admin server on 127.0.0.1:{admin_port}"
            assert wait_until(lambda line=line: line in log(), 30), log()
