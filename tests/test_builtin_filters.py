"""E-MailRelay's built-in specs: `exit:N`, `net:` filters and verifiers, `account:`, bad specs.

`net:` is spoken with a small line server of this file's own (TCP and a unix socket), run in
a thread; intake and deliver are the real ones. spamd has tests of its own
(test_spamd_filters.py).
"""

from __future__ import annotations

import os
import pwd
import smtplib
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.deliver import run_once
from support.intake import MESSAGE, IntakeThread, RawClient
from support.sink import Sink
from support.spool import accepted, spool_files

from deliver.main import main as deliver_main
from intake.main import main as intake_main
from spool import Envelope, Spool
from spool.envelope import parse_envelope


class LineServer:
    """A `net:` server: answers each line with *answer(line)*; counts connections."""

    def __init__(self, answer: Callable[[str], str], unix_path: Path | None = None) -> None:
        outer = self
        self.answer = answer
        self.requests: list[str] = []
        self.connections = 0

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                for raw in self.rfile:
                    line = raw.decode().rstrip("\n")
                    outer.requests.append(line)
                    self.wfile.write((outer.answer(line) + "\n").encode())

        server: socketserver.BaseServer
        if unix_path is not None:
            server = socketserver.ThreadingUnixStreamServer(str(unix_path), Handler)
            self.address = str(unix_path)
        else:
            server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
            self.address = f"127.0.0.1:{server.server_address[1]}"
        server.daemon_threads = True
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def line_server() -> Iterator[Callable[..., LineServer]]:
    servers: list[LineServer] = []

    def start(answer: Callable[[str], str], unix_path: Path | None = None) -> LineServer:
        servers.append(LineServer(answer, unix_path))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def send(intake: IntakeThread, to: str = "b@example.com") -> None:
    with intake.smtp() as client:
        client.sendmail("a@example.org", [to], MESSAGE)


@pytest.mark.parametrize(("spec", "stored", "reply"), [
    ("exit:0", 1, None), ("exit:100", 1, None), ("exit:1", 0, "452 rejected"),
])
def test_exit_filter(spool_dir: Path, spec: str, stored: int, reply: str | None) -> None:
    """`exit:N` acts as a program that exits N at once."""
    with IntakeThread(spool_dir, "--filter", spec) as intake:
        if reply is None:
            send(intake)
        else:
            with pytest.raises(smtplib.SMTPDataError) as error:
                send(intake)
            assert f"{error.value.smtp_code} {error.value.smtp_error.decode()}" == reply
    assert len(accepted(spool_dir)) == stored


def content_name(line: str) -> str:
    return Path(line).name


@pytest.mark.parametrize("unix", [False, True])
def test_net_filter_over_tcp_and_unix(spool_dir: Path, tmp_path: Path, unix: bool,
                                      line_server: Callable[..., LineServer]) -> None:
    """`net:` sends the content path; `ok` accepts, `CODE text<tab>reason` refuses."""
    def answer(path: str) -> str:
        text = Path(path).read_bytes()
        return "550 5.7.1 no thanks\tbad word" if b"badword" in text else "ok"

    server = line_server(answer, tmp_path / "filter.sock" if unix else None)
    with IntakeThread(spool_dir, "--filter", f"net:{server.address}") as intake:
        send(intake)
        with intake.smtp() as client, pytest.raises(smtplib.SMTPDataError) as error:
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE + b"badword\r\n")
        assert (error.value.smtp_code, error.value.smtp_error) == (550, b"5.7.1 no thanks")
        send(intake)
    assert len(accepted(spool_dir)) == 2
    assert len(server.requests) == 3 and all(r.endswith(".content") for r in server.requests)
    assert server.connections == 1  # kept open from one message to the next


def test_net_filter_down_is_a_temporary_refusal(spool_dir: Path) -> None:
    """A `net:` filter that cannot be reached: 452, nothing stored."""
    with IntakeThread(spool_dir, "--filter", "net:127.0.0.1:9") as intake:
        with pytest.raises(smtplib.SMTPDataError) as error:
            send(intake)
        assert error.value.smtp_code == 452
    assert spool_files(spool_dir) == []


def test_net_verifier(spool_dir: Path, line_server: Callable[..., LineServer]) -> None:
    """`net:` verifier: six `|`-separated fields sent; 0/1/2/3/100 answers as a program's."""
    def answer(line: str) -> str:
        rcpt = line.split("|", maxsplit=1)[0]
        return {"local@x.test": "0|mbox|Local Person", "remote@x.test": "1|re@y.test",
                "nobody@x.test": "2|no such user|diag", "later@x.test": "3|busy"}.get(rcpt, "100")

    server = line_server(answer)
    with IntakeThread(spool_dir, "--address-verifier", f"net:{server.address}") as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        raw.command(b"MAIL FROM:<a@example.org>")
        assert raw.command(b"RCPT TO:<local@x.test>")[:3] == "250"
        assert raw.command(b"RCPT TO:<remote@x.test>")[:3] == "250"
        assert raw.command(b"RCPT TO:<nobody@x.test>") == "550 no such user"
        assert raw.command(b"RCPT TO:<later@x.test>") == "450 busy"
        assert raw.command(b"DATA")[:3] == "354"
        raw.send(MESSAGE + b".\r\n")
        assert raw.reply()[:3] == "250"
        raw.command(b"MAIL FROM:<a@example.org>")
        assert raw.command(b"RCPT TO:<drop@x.test>").startswith("421")
        assert raw.closed()
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.to_local == ("mbox",) and envelope.to_remote == ("re@y.test",)
    fields = server.requests[0].split("|")
    assert fields[:2] == ["local@x.test", "a@example.org"]
    assert fields[2].startswith("127.0.0.1:") and fields[3:] == ["intake.test", "none", ""]


def test_account_verifier(spool_dir: Path) -> None:
    """`account:RANGE`: a system account at --domain is a local mailbox; others 550."""
    uid = os.getuid()
    name = pwd.getpwuid(uid).pw_name
    with IntakeThread(spool_dir, "--address-verifier", f"account:{uid}-{uid}") as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        raw.command(b"MAIL FROM:<a@example.org>")
        assert raw.command(f"RCPT TO:<{name.upper()}@INTAKE.test>".encode())[:3] == "250"
        refused = raw.command(b"RCPT TO:<no-such-account-here@intake.test>")
        assert refused == "550 rejected"
        assert raw.command(f"RCPT TO:<{name}@elsewhere.test>".encode()) == "550 rejected"
        assert raw.command(b"DATA")[:3] == "354"
        raw.send(MESSAGE + b".\r\n")
        assert raw.reply()[:3] == "250"
    ((envelope, _),) = accepted(spool_dir)
    assert envelope.to_local == (name,) and envelope.to_remote == ()


@pytest.mark.parametrize("argv", [
    ["--filter", "exit:x"], ["--filter", "net:nowhere"], ["--filter", "msgid:"],
    ["--filter", "/no/such/filter"], ["--filter", "exit:0,/no/such/filter"],
    ["--address-verifier", "account:bogus"], ["--address-verifier", "spam:127.0.0.1:783"],
])
def test_bad_specs_stop_intake_with_78(spool_dir: Path, argv: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A spec relay cannot use is refused at start (exit 78), naming the option."""
    assert intake_main(["--spool-dir", str(spool_dir), "--port", "0", *argv]) == 78
    assert f"--{argv[0][2:]}" in capsys.readouterr().err


def test_bad_client_filter_stops_deliver_with_78(spool_dir: Path) -> None:
    """relay-deliver refuses a client filter it cannot run at start, not message by message."""
    assert deliver_main(["--once", "--spool-dir", str(spool_dir), "--forward-to",
                         "127.0.0.1:9", "--client-filter", "/no/such/filter"]) == 78


def test_net_client_filter(spool: Spool, sink: Sink,
                           line_server: Callable[..., LineServer]) -> None:
    """`net:` as a client filter: `ok` forwards, a refusal fails the message (.bad, 550)."""
    server = line_server(lambda path: "ok" if b"fine" in Path(path).read_bytes() else "no way")
    good = spool.store([b"Subject: fine\r\n\r\nfine\r\n"],
                       Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    bad = spool.store([b"Subject: other\r\n\r\nother\r\n"],
                      Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    assert run_once(spool, sink.address, "--client-filter", f"net:{server.address}") == 0
    assert [m.data.endswith(b"fine\r\n") for m in sink.messages] == [True]
    assert not spool.content_path(good).exists()
    failed = parse_envelope(spool.path.joinpath(f"{bad}.envelope.bad").read_bytes())
    assert failed.reasons == ["no way"] and failed.reason_codes == ["550"]
