"""What relay-deliver puts on the wire, checked at a real aiosmtpd sink on 127.0.0.1.

The content arrives byte for byte (dot lines at every slice boundary, a message over 3 MB,
8-bit bytes, a last line without CRLF), and a big one is sent without a copy of it in
memory; a hand-dropped content file with bare LF or CR is sent with CRLF line ends; and an
address aiosmtplib cannot send as it is (`<>` as a recipient, a space, one it would
rewrite) fails to `.bad` on the first try, with code 553 and the reason, while the other
mail goes out.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.sink import Sink
from support.smarthost import Script, ScriptedSmarthost
from support.spool import by_state

from deliver.forward import SLICE_SIZE, ForwardSettings, Route, SmarthostConnection
from deliver.main import main
from deliver.outcome import Stage
from spool import Envelope, Spool, State, read_envelope

FAST = ["--retry-first", "30", "--response-timeout", "5", "--connection-timeout", "5",
        "--data-timeout", "10", "--content-grace", "0", "--log-format", "json"]


def run_once(spool: Spool, sink: Sink, *extra: str) -> int:
    return main(["--once", "--spool-dir", str(spool.path), "--forward-to", sink.address,
                 *FAST, *extra])


def cut(content: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for position in [*sorted(set(cuts)), len(content)]:
        yield content[start:position]
        start = position


_LINES = st.lists(st.sampled_from([b".", b"..", b".x", b"x", b"", b"a.b", b"\xc3\xa9", b"y" * 99]),
                  min_size=1, max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_LINES, every=st.integers(1, 5), final_crlf=st.booleans())
def test_dot_lines_at_every_slice_boundary_arrive_byte_for_byte(
    sink: Sink, lines: list[bytes], every: int, final_crlf: bool
) -> None:
    """Slices that start with a '.' line (every *every*-th line starts one): the sink's
    content is the stored content exactly (plus a CRLF if it had no final one)."""
    content = b"".join(line + b"\r\n" for line in lines)
    if not final_crlf:
        content = content[:-2]
    starts, position = [], 0
    for number, line in enumerate(lines):
        if number % every == 0:
            starts.append(position)
        position += len(line) + 2
    envelope = Envelope(sender="a@example.com", to_remote=("b@example.com",))
    connection = SmarthostConnection(ForwardSettings(local_hostname="deliver.test",
                                                     response_timeout=5), None)

    async def send() -> Stage:
        try:
            attempt = await connection.transact(Route("127.0.0.1", sink.port), envelope,
                                                cut(content, starts), len(content))
        finally:
            await connection.close()
        return attempt.stage

    before = len(sink.messages)
    assert asyncio.run(send()) is Stage.DONE
    expected = content if content.endswith(b"\r\n") or not content else content + b"\r\n"
    assert sink.messages[before].data == expected


def block(first: bytes, number: int) -> bytes:
    """SLICE_SIZE bytes of CRLF lines starting with *first*, some '..' and 8-bit lines inside."""
    lines, size, line_number = [first], len(first), 0
    while size < SLICE_SIZE - 200:
        line = (b".." if line_number % 401 == 0 else b"") + (
            f"{number:02d}.{line_number:05d} caf\u00e9 ".encode() + b"x" * (line_number % 70)
            + b"\r\n")
        lines.append(line)
        size += len(line)
        line_number += 1
    lines.append(b"p" * (SLICE_SIZE - size - 2) + b"\r\n")
    return b"".join(lines)


def big_message() -> bytes:
    """13 slices (3.4 MB); each slice after the first starts with a line starting with '.'."""
    head = block(b"Subject: big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", 0)
    return head + b"".join(block(f".{number} starts a slice\r\n".encode(), number)
                           for number in range(1, 13))


def test_a_big_message_arrives_byte_for_byte(spool: Spool, sink: Sink) -> None:
    """A 3+ MB 8-bit message with '.' lines at each 256 KiB slice boundary: exactly as stored."""
    content = big_message()
    assert len(content) > 3 * 1024 * 1024
    assert all(content[start:start + 1] == b"." for start in range(SLICE_SIZE, len(content),
                                                                   SLICE_SIZE))
    spool.store(content, Envelope(sender="a@example.com", to_remote=("b@example.com",),
                                  body_type="8bit"))
    assert run_once(spool, sink) == 0
    assert len(sink.messages) == 1 and sink.messages[0].data == content
    assert "BODY=8BITMIME" in sink.messages[0].mail_options
    assert os.listdir(spool.path) == []


def test_a_message_without_a_final_crlf_gets_one(spool: Spool, sink: Sink) -> None:
    """A content file whose last line has no CRLF: sent with one (the final dot needs it)."""
    spool.store(b"Subject: x\r\n\r\n.last line", Envelope(sender="a@example.com",
                                                        to_remote=("b@example.com",)))
    assert run_once(spool, sink) == 0
    assert [m.data for m in sink.messages] == [b"Subject: x\r\n\r\n.last line\r\n"]


def test_bare_line_ends_of_a_hand_dropped_file_are_sent_as_crlf(
    spool: Spool, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    """A content file with bare LF and CR (written by hand): the sink gets CRLF line ends,
    and one line_ends_normalised log line counts them."""
    message_id = spool.store(b"Subject: x\n\n.one\ntwo\rthree\r\n",
                             Envelope(sender="a@example.com", to_remote=("b@example.com",)))
    assert run_once(spool, sink) == 0
    assert [m.data for m in sink.messages] == [b"Subject: x\r\n\r\n.one\r\ntwo\r\nthree\r\n"]
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()
             if line.startswith("{")]
    assert [(line["msg_id"], line["count"]) for line in lines
            if line["event"] == "line_ends_normalised"] == [(message_id, 4)]


@pytest.mark.parametrize("content", [
    b"Subject: x\n\n.one\ntwo\rthree\r\n",  # bare LF and CR, a dot line
    b"Subject: x\r\n\r\nno final line end",
    b"Subject: x\r\n\r\n..two dots\r\n.\r\nlast\r",  # a bare CR at the very end
    b"Subject: x\r\n\r\nclean\r\n",
])
def test_size_is_the_size_of_what_is_sent(spool: Spool, sink: Sink, content: bytes) -> None:
    """MAIL FROM's SIZE= (RFC 1870: without the dots of transparency) is the number of bytes
    the sink received, also when bare line ends went out as CRLF or a CRLF was added."""
    spool.store(content, Envelope(sender="a@example.com", to_remote=("b@example.com",)))
    assert run_once(spool, sink) == 0
    (received,) = sink.messages
    assert f"SIZE={len(received.data)}" in received.mail_options, received.mail_options


def hand_written_envelope(path: Path, sender: str, *recipients: str) -> None:
    """An envelope as a person writes it (E-MailRelay's format, LF line ends)."""
    path.write_bytes(
        ("X-MailRelay-Format: #2821.8\nX-MailRelay-Content: 7bit\n"
         f"X-MailRelay-From: {sender}\nX-MailRelay-ToCount: {len(recipients)}\n"
         + "".join(f"X-MailRelay-To-Remote: {recipient}\n" for recipient in recipients)
         + "X-MailRelay-Authentication: \nX-MailRelay-Client: \n"
         "X-MailRelay-ClientCertificate: \nX-MailRelay-MailFromAuthIn: \n"
         "X-MailRelay-MailFromAuthOut: \nX-MailRelay-ForwardTo: \n"
         "X-MailRelay-ForwardToAddress: \nX-MailRelay-ClientAccountSelector: \n"
         "X-MailRelay-Utf8MailboxNames: 0\nX-MailRelay-End: 1\n").encode())


def test_an_empty_recipient_fails_at_once_and_the_probe_is_sent(spool: Spool, sink: Sink) -> None:
    """`To-Remote: <>` by hand: .bad on the first try (553, the reason), not retried; the
    probe message beside it is delivered and the sink never saw an RCPT for <>."""
    (spool.path / "empty.content").write_bytes(b"Subject: empty\r\n\r\nx\r\n")
    hand_written_envelope(spool.path / "empty.envelope", "a@example.com", "<>")
    spool.store(b"Subject: probe\r\n\r\np\r\n",
                        Envelope(sender="a@example.com", to_remote=("b@example.com",)))
    assert run_once(spool, sink) == 0  # 0: nothing left waiting, nothing to retry
    assert [m.data for m in sink.messages] == [b"Subject: probe\r\n\r\np\r\n"]
    assert by_state(spool) == {State.BAD: ["empty"]}
    failed = read_envelope(spool, "empty", State.BAD)
    assert failed.reason_codes == ["553"]
    assert "cannot send the recipient <>" in failed.reasons[0]
    assert "X-Relay-Deferred" not in failed.trailer


@pytest.mark.parametrize(("sender", "recipients", "words"), [
    ("a b@example.com", ("b@example.com",), "cannot send the sender a b@example.com"),
    ("a@example.com", ('a"b@example.com',), "would send it as <a>"),
    ("a@example.com", ("jos\u00e9@example.com",), "cannot send the recipient jos\u00e9"),
])
def test_addresses_the_client_library_cannot_send_fail_for_good(
    spool: Spool, sink: Sink, sender: str, recipients: tuple[str, ...], words: str
) -> None:
    """A sender with a space, a recipient aiosmtplib would rewrite, a non-ASCII one without
    SMTPUTF8: .bad with 553 and the reason, and nothing sent to the smarthost."""
    spool.store(b"Subject: x\r\n\r\nx\r\n", Envelope(sender=sender, to_remote=recipients))
    assert run_once(spool, sink) == 0
    assert sink.messages == [] and sink.data_attempts == 0
    (message_id,) = by_state(spool)[State.BAD]
    failed = read_envelope(spool, message_id, State.BAD)
    assert failed.reason_codes == ["553"] and words in failed.reasons[0]


def test_an_unsendable_recipient_is_split_off_and_the_rest_delivered(
    spool: Spool, sink: Sink
) -> None:
    """`<>` beside a good recipient: the good one gets the message, `<>` goes to .bad alone."""
    (spool.path / "mixed.content").write_bytes(b"Subject: mixed\r\n\r\nx\r\n")
    hand_written_envelope(spool.path / "mixed.envelope", "a@example.com", "<>",
                          "b@example.com")
    assert run_once(spool, sink) == 0
    assert [m.rcpt_tos for m in sink.messages] == [["b@example.com"]]
    (message_id,) = by_state(spool)[State.BAD]
    failed = read_envelope(spool, message_id, State.BAD)
    assert failed.to_remote == ("<>",) and failed.reason_codes == ["553"]


class _CountingSink:
    """A bare SMTP server in a thread that counts DATA bytes into one fixed buffer (it
    allocates nothing per message, so tracemalloc sees only the client's memory)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        buffer = bytearray(1 << 16)
        view = memoryview(buffer)
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 counting ESMTP\r\n")
            while line := lines.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    connection.sendall(b"354 go\r\n")
                    tail = b""
                    while not tail.endswith(b"\r\n.\r\n"):
                        got = connection.recv_into(view)
                        if got == 0:
                            return
                        self.received += got
                        tail = (tail + bytes(view[max(0, got - 5):got]))[-5:]
                    connection.sendall(b"250 counted\r\n")
                elif verb == b"QUIT":
                    connection.sendall(b"221 bye\r\n")
                    return
                else:
                    connection.sendall(b"250 ok\r\n")


def test_a_big_message_is_sent_without_a_whole_copy() -> None:
    """20 MiB from slices through a real connection: the client's peak allocation stays
    under 4 MiB (aiosmtplib's data() needed ~4.7 copies of the message)."""
    counting = _CountingSink()
    slice_bytes = (b"x" * 76 + b"\r\n") * (SLICE_SIZE // 78)
    slices = 20 * 1024 * 1024 // len(slice_bytes)

    def content() -> Iterator[bytes]:
        for _ in range(slices):
            yield bytes(slice_bytes)  # a fresh slice each time, as a file read gives

    envelope = Envelope(sender="a@example.com", to_remote=("b@example.com",))
    connection = SmarthostConnection(ForwardSettings(local_hostname="deliver.test",
                                                     response_timeout=10), None)

    async def send() -> Stage:
        try:
            attempt = await connection.transact(Route("127.0.0.1", counting.port), envelope,
                                                content(), slices * len(slice_bytes))
        finally:
            await connection.close()
        return attempt.stage

    tracemalloc.start()
    try:
        stage = asyncio.run(send())
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    counting.thread.join(10)
    assert stage is Stage.DONE
    assert counting.received == slices * len(slice_bytes) + len(b".\r\n")
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a 20 MiB message"


def test_verbose_shows_data_and_the_reply_after_the_dot(
    spool: Spool, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    """--verbose: `DATA (<size> bytes)` and the 250 after the dot are logged, the content never."""
    content = b"Subject: secret words\r\n\r\nnot for the log\r\n"
    spool.store(content, Envelope(sender="a@example.com", to_remote=("b@example.com",)))
    assert run_once(spool, sink, "--verbose") == 0
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    commands = [line["command"] for line in lines if line["event"] == "smtp_command"]
    assert f"DATA ({len(content)} bytes)" in commands
    replies = [line for line in lines if line["event"] == "smtp_reply"]
    assert (replies[-1]["code"], replies[-1]["text"]) in ((250, "OK queued"), (221, "Bye"))
    assert any(line["code"] == 250 and line["text"] == "OK queued" for line in replies)
    # (the sink runs in this process: aiosmtpd's own debug lines show the data it read)
    ours = [line for line in lines if line["event"].startswith(("smtp_", "message_"))]
    assert ours and not any("not for the log" in json.dumps(line) for line in ours)


def test_the_wire_bytes_are_stuffed_and_normalised_exactly(spool: Spool) -> None:
    """At a raw-socket smarthost: a '.' doubled at each line start, bare LF and CR as CRLF,
    the final CRLF added, and every other byte as stored."""
    content = b"Subject: x\r\n\r\n.a\r\n..b\nc\rd.\r\n\xff.e\r\n.\r\nlast"
    spool.store(content, Envelope(sender="a@example.com", to_remote=("b@example.com",)))
    with ScriptedSmarthost() as smarthost:
        assert main(["--once", "--spool-dir", str(spool.path), "--forward-to",
                     smarthost.address, *FAST]) == 0
    assert smarthost.data == [b"Subject: x\r\n\r\n..a\r\n...b\r\nc\r\nd.\r\n\xff.e\r\n..\r\n"
                              b"last\r\n"]


def test_a_smarthost_that_stops_reading_defers_the_message(spool: Spool) -> None:
    """A smarthost that stops reading in the middle of a 32 MiB DATA: after
    --response-timeout without progress the message is deferred (kept), not failed."""
    message_id = spool.store(b"Subject: big\r\n\r\n" + (b"x" * 1000 + b"\r\n") * 33_000,
                             Envelope(sender="a@example.com", to_remote=("b@example.com",)))
    with ScriptedSmarthost(Script(stall_in_data=100_000)) as smarthost:
        started = time.monotonic()
        assert main(["--once", "--spool-dir", str(spool.path), "--forward-to",
                     smarthost.address, *FAST, "--response-timeout", "1"]) == 75
        assert time.monotonic() - started < 30
    assert by_state(spool) == {State.READY: [message_id]}
    kept = read_envelope(spool, message_id, State.READY)
    assert "took no more of the message" in kept.trailer
