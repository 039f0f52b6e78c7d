"""common.compat_aiosmtplib: the aiosmtplib internals relay relies on are there and behave.

Each test fails naming the internal or the behaviour when an aiosmtplib release changes it:
the protocol's lock, reply flag, write, reply reading and flow control that `send_data`
drives; that `send_data` waits in flow control and gives up on a smarthost that stops
reading; and that aiosmtplib refuses an address it cannot send (`<>` as a recipient) with a
ValueError before writing anything, which deliver counts as a permanent refusal; the
connection internals `GreetingSMTP` replaces (`SMTP._create_connection`), and that it goes on
without a greeting; that `send_pipelined` gets each reply of commands written at once, the
ones that came in one read included, and those read while an earlier one still waited to
be taken, each within a timeout of its own; that `mail_command` and `rcpt_command` are the
lines `SMTP.mail()` and `SMTP.rcpt()` write; and `send_bdat`. Against a real aiosmtpd sink,
a raw-socket smarthost and a real listening socket on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Iterator

import aiosmtplib
import pytest
from aiosmtplib.protocol import SMTPProtocol
from support.sink import Behaviour, Sink
from support.smarthost import Script, ScriptedSmarthost

from common.compat_aiosmtplib import (
    PROTOCOL_INTERNALS,
    SMTP_INTERNALS,
    GreetingSMTP,
    mail_command,
    rcpt_command,
    send_bdat,
    send_data,
    send_pipelined,
    wire_address,
)


async def _connected(port: int) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5, start_tls=False,
                           local_hostname="client.test")
    await smtp.connect()
    await smtp.ehlo()
    return smtp


def test_the_protocol_internals_are_there(sink: Sink) -> None:
    """SMTP.protocol and each internal send_data uses exist, with the type relay expects."""

    async def check() -> None:
        smtp = await _connected(sink.port)
        protocol = smtp.protocol
        assert protocol is not None, "aiosmtplib.SMTP.protocol is gone"
        missing = [name for name in PROTOCOL_INTERNALS if not hasattr(protocol, name)]
        assert missing == [], f"aiosmtplib's SMTPProtocol lost {missing}"
        assert isinstance(protocol._command_lock, asyncio.Lock), "_command_lock changed"
        assert isinstance(protocol._response_pending, bool), "_response_pending changed"
        assert isinstance(protocol._paused, bool), "_paused (flow control) changed"
        assert inspect.iscoroutinefunction(protocol._drain_helper), "_drain_helper changed"
        assert inspect.iscoroutinefunction(protocol.read_response), "read_response changed"
        assert list(inspect.signature(protocol.write).parameters) == ["data"], "write changed"
        assert isinstance(protocol._buffer, bytearray), "_buffer changed"
        assert protocol._read_response_from_buffer() is None, "_read_response_from_buffer"
        await smtp.quit()

    asyncio.run(check())


def test_send_data_sends_pieces_and_returns_the_reply(sink: Sink) -> None:
    """DATA, the pieces, the dot: the sink gets the content, the reply is the 250 after it."""

    async def send() -> aiosmtplib.SMTPResponse:
        smtp = await _connected(sink.port)
        await smtp.mail("a@example.com")
        await smtp.rcpt("b@example.com")
        response = await send_data(smtp, [b"Subject: x\r\n", b"\r\nbody\r\n", b".\r\n"],
                                   timeout=5, final_timeout=5)
        await smtp.quit()
        return response

    response = asyncio.run(send())
    assert (response.code, response.message) == (250, "OK queued")
    assert [m.data for m in sink.messages] == [b"Subject: x\r\n\r\nbody\r\n"]


def test_send_data_raises_the_reply_code() -> None:
    """A 554 after the dot is an SMTPDataError with .code 554 (deliver classifies by it)."""
    with Sink(Behaviour(data_reply="554 5.6.0 content refused")) as refusing:

        async def send() -> None:
            smtp = await _connected(refusing.port)
            await smtp.mail("a@example.com")
            await smtp.rcpt("b@example.com")
            await send_data(smtp, [b"x\r\n.\r\n"], timeout=5, final_timeout=5)

        with pytest.raises(aiosmtplib.SMTPDataError) as raised:
            asyncio.run(send())
    assert raised.value.code == 554 and "content refused" in raised.value.message


@pytest.fixture
def deaf_server() -> Iterator[int]:
    """A server that answers up to DATA's 354 and then never reads another byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.sendall(b"220 deaf ESMTP\r\n")
            for reply in (b"250 deaf\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
                connection.recv(1024)
                connection.sendall(reply)
            stop.wait(30)  # the client's data fills the socket buffers, then it must wait

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_send_data_waits_in_flow_control_then_gives_up(deaf_server: int) -> None:
    """A smarthost that stops reading: send_data waits (bounded memory), times out, closes."""
    slices_taken = 0

    def pieces() -> Iterator[bytes]:
        nonlocal slices_taken
        for _ in range(1000):  # 256 MiB if it were all taken: far beyond any socket buffer
            slices_taken += 1
            yield b"x" * (256 * 1024)

    async def send() -> aiosmtplib.SMTP:
        smtp = await _connected(deaf_server)
        await smtp.mail("a@example.com")
        await smtp.rcpt("b@example.com")
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await send_data(smtp, pieces(), timeout=1.0, final_timeout=5)
        return smtp

    smtp = asyncio.run(send())
    assert not smtp.is_connected, "the connection must be closed after the timeout"
    assert slices_taken < 100, f"{slices_taken} slices taken: flow control did not hold"


def test_an_unsendable_address_is_refused_before_anything_is_written(sink: Sink) -> None:
    """aiosmtplib raises ValueError for RCPT TO:<> (and wire_address with it) and writes
    nothing: the next RCPT and DATA on the same connection still work."""

    async def send() -> None:
        smtp = await _connected(sink.port)
        await smtp.mail("a@example.com")
        for unsendable, encoding in (("<>", "ascii"), ("a b@example.com", "ascii"),
                                     ("jos\u00e9@example.com", "ascii")):
            with pytest.raises(ValueError):
                wire_address(unsendable, encoding)
            with pytest.raises(ValueError):
                await smtp.rcpt(unsendable, encoding=encoding)
        await smtp.rcpt("b@example.com")
        await send_data(smtp, [b"x\r\n.\r\n"], timeout=5, final_timeout=5)
        await smtp.quit()

    asyncio.run(send())
    assert [(m.rcpt_tos, m.data) for m in sink.messages] == [(["b@example.com"], b"x\r\n")]


def test_wire_address_is_what_mail_and_rcpt_send(sink: Sink) -> None:
    """aiosmtplib sends wire_address's path, which for some addresses is another address
    (deliver refuses those): the sink sees exactly it."""
    rewritten = 'c"d@example.com'
    assert wire_address(rewritten, "ascii") == b"<c>"
    assert wire_address("", "ascii") == b"<>"
    assert wire_address("b@example.com", "ascii") == b"<b@example.com>"

    async def send() -> None:
        smtp = await _connected(sink.port)
        await smtp.mail("a@example.com")
        await smtp.rcpt("b@example.com")
        await smtp.rcpt(rewritten)
        await send_data(smtp, [b"x\r\n.\r\n"], timeout=5, final_timeout=5)
        await smtp.quit()

    asyncio.run(send())
    assert sink.messages[0].rcpt_tos == ["b@example.com", "c"]


def test_the_connection_internals_greeting_smtp_replaces_are_there() -> None:
    """SMTP._create_connection(timeout) (what connect() calls), _on_connection_lost(protocol),
    _get_tls_context() and SMTPProtocol(loop, connection_lost_callback) as GreetingSMTP
    builds the connection."""
    missing = [name for name in SMTP_INTERNALS if not hasattr(aiosmtplib.SMTP, name)]
    assert missing == [], f"aiosmtplib.SMTP lost {missing}"
    create = aiosmtplib.SMTP._create_connection
    assert inspect.iscoroutinefunction(create), "_create_connection is not a coroutine"
    assert list(inspect.signature(create).parameters) == ["self", "timeout"], \
        "_create_connection(timeout) changed"
    assert "_create_connection(" in inspect.getsource(aiosmtplib.SMTP.connect), \
        "connect() no longer calls _create_connection"
    assert inspect.iscoroutinefunction(aiosmtplib.SMTP._get_tls_context), "_get_tls_context"
    lost = inspect.signature(aiosmtplib.SMTP._on_connection_lost)
    assert list(lost.parameters) == ["self", "protocol"], "_on_connection_lost changed"
    init = inspect.signature(SMTPProtocol.__init__).parameters
    assert {"loop", "connection_lost_callback"} <= set(init), "SMTPProtocol() changed"


def test_greeting_smtp_goes_on_without_a_greeting() -> None:
    """A smarthost that never greets: connect() returns after greeting_timeout with
    greeting_missed, EHLO and a message go through; with go_on=False it is a timeout."""
    with ScriptedSmarthost(Script(greeting=None)) as smarthost:

        async def talk(go_on: bool) -> tuple[bool, int]:
            smtp = GreetingSMTP(hostname="127.0.0.1", port=smarthost.port, timeout=5,
                                start_tls=False, local_hostname="client.test",
                                greeting_timeout=0.5, go_on=go_on)
            await smtp.connect(timeout=5)
            missed = smtp.greeting_missed
            response = await smtp.ehlo()
            await smtp.quit()
            return missed, response.code

        assert asyncio.run(talk(True)) == (True, 250)
        with pytest.raises(aiosmtplib.SMTPConnectTimeoutError):
            asyncio.run(talk(False))
    assert smarthost.commands[:2] == [b"EHLO client.test", b"QUIT"]


def test_greeting_smtp_reads_a_greeting_as_aiosmtplib(sink: Sink) -> None:
    """A smarthost that greets: connect() returns its 220, greeting_missed stays False."""

    async def talk() -> tuple[int, bool]:
        smtp = GreetingSMTP(hostname="127.0.0.1", port=sink.port, timeout=5, start_tls=False,
                            local_hostname="client.test", greeting_timeout=5)
        response = await smtp.connect(timeout=5)
        await smtp.quit()
        return response.code, smtp.greeting_missed

    assert asyncio.run(talk()) == (220, False)


def test_a_late_greeting_as_the_reply_to_ehlo_closes_the_connection() -> None:
    """The 220 coming after the greeting timeout, as EHLO's reply: an SMTP error with code
    220 and the connection closed (never a reply one behind)."""
    with ScriptedSmarthost(Script(delay_at={"GREETING": 1.5})) as smarthost:

        async def talk() -> aiosmtplib.SMTP:
            smtp = GreetingSMTP(hostname="127.0.0.1", port=smarthost.port, timeout=5,
                                start_tls=False, local_hostname="client.test",
                                greeting_timeout=0.3)
            await smtp.connect(timeout=5)
            with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
                await smtp.ehlo()
            assert refused.value.code == 220 and "--prompt-timeout" in refused.value.message
            return smtp

        assert not asyncio.run(talk()).is_connected


def test_mail_and_rcpt_command_are_what_aiosmtplib_writes() -> None:
    """The lines SMTP.mail() and SMTP.rcpt() write, byte for byte, and the same refusals."""
    with ScriptedSmarthost() as smarthost:

        async def talk() -> None:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=smarthost.port, timeout=5,
                                   start_tls=False, local_hostname="client.test")
            await smtp.connect()
            await smtp.mail("\u00e4@x.test", options=["SIZE=10", "BODY=8BITMIME"],
                            encoding="utf-8")
            await smtp.rcpt("b@y.test")
            await smtp.quit()

        asyncio.run(talk())
    assert smarthost.commands[1:3] == [
        mail_command("\u00e4@x.test", ["SIZE=10", "BODY=8BITMIME"], "utf-8")[:-2],
        rcpt_command("b@y.test", "ascii")[:-2]]
    with pytest.raises(ValueError, match="prohibited"):
        mail_command("a@x.test", ["SIZE=1\r\nRSET"], "ascii")
    for unsendable in ("<>", "a b@y.test"):
        with pytest.raises(ValueError):
            rcpt_command(unsendable, "ascii")


def test_send_pipelined_gets_every_reply_in_order(sink: Sink) -> None:
    """MAIL and three RCPTs written at once (their replies mostly in one read): four
    replies, each its command's, the 550 in its place; then DATA goes through."""
    sink.behaviour.rcpt_replies = {"no@y.test": "550 5.1.1 no such user"}

    async def send() -> list[int]:
        smtp = await _connected(sink.port)
        replies = await send_pipelined(smtp, [
            mail_command("a@x.test", [], "ascii"), rcpt_command("b@y.test", "ascii"),
            rcpt_command("no@y.test", "ascii"), rcpt_command("c@y.test", "ascii")], timeout=5)
        await send_data(smtp, [b"x\r\n.\r\n"], timeout=5, final_timeout=5)
        await smtp.quit()
        return [reply.code for reply in replies]

    assert asyncio.run(send()) == [250, 250, 550, 250]
    assert [m.rcpt_tos for m in sink.messages] == [["b@y.test", "c@y.test"]]


def test_send_bdat_sends_the_bytes_as_they_are() -> None:
    """BDAT <size> LAST and the bytes unchanged (a dot line, a bare LF); the reply is the
    smarthost's; a refusal is an SMTPDataError with its code."""
    body = b"a\n.\r\n\x00b"
    for reply, expected in ((b"250 2.0.0 ok", 250), (b"554 5.6.0 no", 554)):
        with ScriptedSmarthost(Script(replies={"DOT": reply})) as smarthost:

            async def send() -> int:
                smtp = await _connected(smarthost.port)
                await smtp.mail("a@x.test")
                await smtp.rcpt("b@y.test")
                try:
                    response = await send_bdat(smtp, [body[:3], body[3:]], len(body),
                                               timeout=5, final_timeout=5)
                except aiosmtplib.SMTPDataError as error:
                    return error.code
                await smtp.quit()
                return response.code

            assert asyncio.run(send()) == expected
        assert b"BDAT %d LAST" % len(body) in smarthost.commands
        assert smarthost.data == ([body] if expected == 250 else [])


def _spaced_replies(replies: list[bytes], gap: float) -> tuple[int, threading.Thread]:
    """A server on a port of its own that answers EHLO, then, to MAIL and two RCPTs written
    at once, *replies*, *gap* seconds apart (and nothing more)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
        with conn:
            conn.sendall(b"220 spaced.test\r\n")
            data = b""
            while data.count(b"\r\n") < 1:
                data += conn.recv(4096)
            conn.sendall(b"250 spaced.test\r\n")
            data = b""
            while data.count(b"\r\n") < 3:
                data += conn.recv(4096)
            for reply in replies:
                time.sleep(gap)
                conn.sendall(reply)
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                conn.recv(4096)  # the close

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


async def _pipelined(port: int, busy: bool = False) -> list[tuple[int, str]]:
    """MAIL and two RCPTs pipelined to *port* (with *busy*, by a client busy after each
    read): their replies, as code and text."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5, start_tls=False,
                           local_hostname="client.test")
    await smtp.connect()
    await smtp.ehlo()
    if busy:
        assert smtp.protocol is not None
        smtp.protocol.__class__ = _BusyAfterEachRead
    replies = await send_pipelined(smtp, [
        mail_command("a@x.test", [], "ascii"), rcpt_command("b@y.test", "ascii"),
        rcpt_command("c@y.test", "ascii")], timeout=2)
    smtp.close()
    return [(reply.code, reply.message) for reply in replies]


def test_send_pipelined_takes_replies_that_came_in_one_read() -> None:
    """A server that answers MAIL and two RCPTs in one packet: all three replies, in order
    (the second and third from SMTPProtocol._buffer), none lost."""
    port, thread = _spaced_replies(
        [b"250 2.1.0 sender\r\n550 5.1.1 first\r\n251 2.1.5 second\r\n"], 0)
    assert asyncio.run(_pipelined(port)) == [(250, "2.1.0 sender"), (550, "5.1.1 first"),
                                             (251, "2.1.5 second")]
    thread.join(10)


class _BusyAfterEachRead(SMTPProtocol):
    """A client whose event loop is busy for a moment after each read (a loaded machine):
    what the server sends meanwhile is read before the task waiting for replies runs."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        time.sleep(0.2)


def test_send_pipelined_keeps_a_reply_read_before_the_waiting_task_ran() -> None:
    """A server that writes each reply on its own, to a client busy after each read: the
    replies that came in later reads while the first still waited to be taken are all
    there, in order (aiosmtplib's protocol alone drops them: the client timed out)."""
    port, thread = _spaced_replies(
        [b"250 2.1.0 sender\r\n", b"550 5.1.1 first\r\n", b"250 2.1.5 second\r\n"], 0.05)
    assert asyncio.run(_pipelined(port, busy=True)) == [
        (250, "2.1.0 sender"), (550, "5.1.1 first"), (250, "2.1.5 second")]
    thread.join(10)


def test_send_pipelined_gives_each_reply_the_timeout() -> None:
    """Replies 0.4 s apart with a timeout of 1 s: all three arrive (the timeout bounds each
    wait, not the whole exchange); a reply that never comes is a timeout that closes the
    connection."""

    async def send(port: int) -> tuple[list[int], bool]:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5, start_tls=False,
                               local_hostname="client.test")
        await smtp.connect()
        await smtp.ehlo()
        try:
            replies = await send_pipelined(smtp, [
                mail_command("a@x.test", [], "ascii"), rcpt_command("b@y.test", "ascii"),
                rcpt_command("c@y.test", "ascii")], timeout=1)
        except aiosmtplib.SMTPTimeoutError:
            return [], smtp.is_connected
        smtp.close()
        return [reply.code for reply in replies], True

    three = [b"250 sender\r\n", b"250 first\r\n", b"250 second\r\n"]
    port, thread = _spaced_replies(three, 0.4)
    assert asyncio.run(send(port)) == ([250, 250, 250], True)
    thread.join(10)
    port, thread = _spaced_replies(three[:2], 0.1)
    assert asyncio.run(send(port)) == ([], False)
    thread.join(10)
