"""intake.engine on real connections: lines answered in order however they arrive, the
limits of aiosmtpd's loop kept, a client that floods or hangs up while a message is being
stored, and the stream-like reads (DATA, AUTH) on the same buffer.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import threading
import time
from pathlib import Path
from typing import Any

from support.intake import IntakeThread, RawClient

from intake.engine import Engine

MESSAGE = b"Subject: engine\r\n\r\nbody\r\n.\r\n"


def replies(raw: RawClient, count: int) -> list[str]:
    return [raw.reply() for _ in range(count)]


def test_pipelined_lines_are_answered_in_order_whatever_the_pieces(spool_dir: Path) -> None:
    """Fifty commands in one send, then a transaction sent a byte at a time: every reply,
    in order, and the message stored once."""
    with IntakeThread(spool_dir) as intake, RawClient(intake.port) as raw:
        assert raw.command(b"EHLO client.test")[:3] == "250"
        raw.send(b"NOOP\r\n" * 50)
        assert [r[:3] for r in replies(raw, 50)] == ["250"] * 50
        for byte in b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n":
            raw.send(bytes([byte]))
        assert [r[:3] for r in replies(raw, 2)] == ["250", "250"]
        assert raw.command(b"DATA")[:3] == "354"
        raw.send(MESSAGE[:5])
        time.sleep(0.05)
        raw.send(MESSAGE[5:])
        assert raw.reply()[:3] == "250"
        assert raw.command(b"QUIT")[:3] == "221"
    assert len(list(spool_dir.glob("*.envelope"))) == 1


def test_a_line_longer_than_the_buffer_is_one_500_and_the_session_goes_on(
        spool_dir: Path) -> None:
    """100 kB without a line end (more than the buffer holds), then its end: one 500
    Command line too long, and the next command is answered."""
    with IntakeThread(spool_dir) as intake, RawClient(intake.port) as raw:
        raw.send(b"NOOP " + b"x" * 100_000)
        time.sleep(0.1)
        raw.send(b"\r\nNOOP\r\n")
        assert raw.reply() == "500 Command line too long"
        assert raw.reply()[:3] == "250"


def test_aiosmtpd_s_line_checks_and_replies_are_kept(spool_dir: Path) -> None:
    """An empty line, a non-ASCII command and argument, an unknown command: aiosmtpd's
    replies; the fifth unknown command closes the connection with 502."""
    with IntakeThread(spool_dir) as intake, RawClient(intake.port) as raw:
        assert raw.command(b"") == "500 Error: bad syntax"
        assert raw.command("NÖOP".encode()) == "500 Error: bad syntax"
        assert raw.command(b"BOGUS") == '500 Error: command "BOGUS" not recognized'
        for _ in range(3):
            assert raw.command(b"BOGUS")[:3] == "500"
        assert raw.command(b"BOGUS") == "502 5.5.1 Too many unrecognized commands, goodbye."
        assert raw.closed()


def test_commands_after_quit_in_the_same_send_are_not_answered(spool_dir: Path) -> None:
    """QUIT ends the session: what the client pipelined after it gets no reply."""
    with IntakeThread(spool_dir) as intake, RawClient(intake.port) as raw:
        raw.send(b"NOOP\r\nQUIT\r\nNOOP\r\nNOOP\r\n")
        assert raw.reply()[:3] == "250"
        assert raw.reply()[:3] == "221"
        assert raw.reply() == ""  # closed, nothing more


def test_a_client_that_never_reads_its_replies_is_held_back(spool_dir: Path) -> None:
    """A client that pipelines NOOPs and never reads: once its replies fill the socket the
    server stops reading it (the client's send blocks) instead of buffering without end;
    what it holds stays within its limit, and the replies then all come, in order."""
    with IntakeThread(spool_dir) as intake:
        small = socket.socket()  # small socket buffers: they fill after a few thousand NOOPs
        small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        small.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        small.connect(("127.0.0.1", intake.port))
        raw = RawClient.__new__(RawClient)
        raw.sock, raw.buffer = small, b""
        assert raw.reply()[:3] == "220"
        assert intake.server is not None
        (session,) = intake.server.sessions
        raw.sock.setblocking(False)
        chunk = b"NOOP\r\n" * 10_000
        sent = 0
        last_progress = time.monotonic()
        most_held = 0
        while time.monotonic() - last_progress < 0.5 and sent < 256 * 1024 * 1024:
            try:
                sent += raw.sock.send(chunk[sent % len(chunk):])  # a partial send goes on
                last_progress = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
            most_held = max(most_held, len(session.buffered))
        assert sent < 256 * 1024 * 1024, "the server read everything: it is not holding back"
        assert most_held <= 2 * session.line_length_limit + 256 * 1024
        raw.sock.setblocking(True)
        raw.sock.settimeout(30)
        received = 0
        expected = sent // 6 * len(b"250 OK\r\n")
        while received < expected:
            data = raw.sock.recv(1 << 20)
            assert data, "the connection closed before every NOOP was answered"
            received += len(data)
        assert received == expected
        raw.close()


def test_a_client_gone_in_the_middle_of_data_leaves_nothing(spool_dir: Path) -> None:
    """Half a message, then the connection closes: nothing stored, the server serves the
    next client."""
    with IntakeThread(spool_dir) as intake:
        with RawClient(intake.port) as raw:
            raw.start_data()
            raw.send(b"Subject: half\r\n\r\nno end")
            raw.sock.shutdown(socket.SHUT_WR)
            assert raw.closed()
        with RawClient(intake.port) as again:
            assert again.command(b"NOOP")[:3] == "250"
        assert intake.server is not None
        for _ in range(100):
            if not intake.server.sessions:
                break
            time.sleep(0.02)
        assert not intake.server.sessions
    assert list(spool_dir.glob("*.envelope")) == []


def test_auth_reads_its_answer_from_the_same_buffer(spool_dir: Path, tmp_path: Path) -> None:
    """AUTH LOGIN's two answers (aiosmtpd reads them with the engine's readline), the
    second pipelined with the first: 235."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice s3cret\n")
    with IntakeThread(spool_dir, "--server-auth", str(secrets),
                      "--server-auth-insecure") as intake, RawClient(intake.port) as raw:
        assert raw.command(b"EHLO client.test")[:3] == "250"
        assert raw.command(b"AUTH LOGIN")[:3] == "334"
        raw.send(base64.b64encode(b"alice") + b"\r\n")
        assert raw.reply()[:3] == "334"
        assert raw.command(base64.b64encode(b"s3cret"))[:3] == "235"


def test_the_engine_alone_runs_aiosmtpd_s_own_data_and_replies() -> None:
    """An Engine with a plain aiosmtpd handler (bench.floor's `engine` server): aiosmtpd's
    own DATA reads the message line by line through the engine's readuntil, the replies
    go out through the engine's send_reply, the handler gets the message."""
    received: list[bytes] = []
    ready = threading.Event()
    holder: dict[str, Any] = {}

    class Collect:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.content)
            return "250 OK kept"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        handler = Collect()
        server = await loop.create_server(
            lambda: Engine(handler, stream_limit=32 * 1024, command_size_limit=512,
                           hostname="engine.test", ident="test", decode_data=False,
                           loop=loop), "127.0.0.1", 0)
        holder["port"] = server.sockets[0].getsockname()[1]
        holder["stop"] = stop = asyncio.Event()
        holder["loop"] = loop
        ready.set()
        await stop.wait()
        server.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        with smtplib.SMTP("127.0.0.1", holder["port"], timeout=10) as client:
            assert client.ehlo("client.test")[0] == 250
            body = b"Subject: alone\r\n\r\n" + b"line\r\n" * 2000 + b"..dot\r\n"
            assert client.sendmail("a@example.org", ["b@example.com"], body) == {}
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
    (content,) = received
    assert content.endswith(b"line\r\n..dot\r\n") and content.count(b"line\r\n") == 2000
