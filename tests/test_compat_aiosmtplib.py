"""common.compat_aiosmtplib: the aiosmtplib internals relay relies on are there and behave.

Each test fails naming the internal or the behaviour when an aiosmtplib release changes it:
the protocol's lock, reply flag, write, reply reading and flow control that `send_data`
drives; that `send_data` waits in flow control and gives up on a smarthost that stops
reading; and that aiosmtplib refuses an address it cannot send (`<>` as a recipient) with a
ValueError before writing anything, which deliver counts as a permanent refusal.
Against a real aiosmtpd sink and a real listening socket on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from collections.abc import Iterator

import aiosmtplib
import pytest
from support.sink import Behaviour, Sink

from common.compat_aiosmtplib import PROTOCOL_INTERNALS, send_data, wire_address


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
