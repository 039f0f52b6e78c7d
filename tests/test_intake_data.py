"""intake's own DATA reader and SMTP shortcuts, against aiosmtpd's line-by-line semantics.

`intake.data` reads DATA in chunks; these tests feed a real `asyncio.StreamReader` the same
bytes in random pieces and compare with a line-by-line reference (what aiosmtpd does): the
same end of data, the same content after unstuffing, the same refusal, and the bytes after
the end left in the stream. `intake.transaction.simple_path`, the shortcut for everyday
paths, is compared with aiosmtpd's parser, and pipelined replies are checked on a real server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.intake import MESSAGE, IntakeThread, RawClient
from support.spool import accepted, strip_received

from common.compat_aiosmtpd import SMTPBase
from intake.data import LINE_LIMIT, DataCollector, DataProblem, read_data
from intake.transaction import simple_path

_END_LINE = b".\r\n"


def reference(wire: bytes, size_limit: int | None) -> tuple[DataProblem, bytes, bytes]:
    """Line by line, as RFC 5321 reads it: (refusal, unstuffed content, bytes after the end)."""
    position = total = 0
    problem = DataProblem.NONE
    lines = []
    while True:
        end = wire.index(b"\r\n", position) + 2
        line = wire[position:end]
        position = end
        if line == _END_LINE:
            break
        line_start, total = total, total + len(line)
        if problem is DataProblem.NONE:
            much_at = size_limit if size_limit and total > size_limit else None
            long_at = line_start + LINE_LIMIT - 2 if len(line) > LINE_LIMIT else None
            if long_at is not None and (much_at is None or long_at < much_at):
                problem = DataProblem.LINE_TOO_LONG
            elif much_at is not None:
                problem = DataProblem.TOO_MUCH
        lines.append(line[1:] if line.startswith(b".") else line)
    content = b"".join(lines) if problem is DataProblem.NONE else b""
    return problem, content, wire[position:]


async def read_in_pieces(wire: bytes, cuts: list[int], limit: int,
                         size_limit: int | None) -> tuple[DataProblem, bytes, bytes]:
    reader = asyncio.StreamReader(limit=limit)
    collector = DataCollector(size_limit)

    async def feed() -> None:
        start = 0
        for cut in [*sorted(set(cuts)), len(wire)]:
            reader.feed_data(wire[start:cut])
            start = cut
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    await read_data(reader, collector)
    await feeder
    rest = await reader.read()
    content = collector.content() if collector.problem is DataProblem.NONE else b""
    return collector.problem, content, rest


_PIECES = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"x", b"abc", b"\r\n.",
                           b".\r\n", b"\r\n.\r", b"y" * 400, b"z" * 997, b"\r\n..\r\n"])


@settings(max_examples=400, deadline=None)
@given(body=st.lists(_PIECES, max_size=30).map(b"".join),
       after=st.sampled_from([b"", b"QUIT\r\n", b".\r\n", b"MAIL FROM:<a@b>\r\n"]),
       cut_fractions=st.lists(st.floats(0, 1), max_size=8),
       limit=st.sampled_from([4, 16, 1024, 65536]),
       size_limit=st.sampled_from([None, 0, 10, 1000, 2000]))
def test_chunked_reader_matches_line_by_line_reading(body: bytes, after: bytes,
                                                     cut_fractions: list[float], limit: int,
                                                     size_limit: int | None) -> None:
    """Any data, cut anywhere, with any stream limit: the same result as reading by lines."""
    wire = body + (b"" if body == b"" or body.endswith(b"\r\n") else b"\r\n") + _END_LINE + after
    cuts = [int(fraction * len(wire)) for fraction in cut_fractions]
    assert asyncio.run(read_in_pieces(wire, cuts, limit, size_limit)) == reference(
        wire, size_limit)


@pytest.mark.parametrize(("text_length", "problem"), [
    (LINE_LIMIT - 2, DataProblem.NONE), (LINE_LIMIT - 1, DataProblem.LINE_TOO_LONG)])
def test_line_limit_boundary(text_length: int, problem: DataProblem) -> None:
    """999 octets of text + CRLF pass (1000 + a stuffed dot); one more is refused."""
    wire = b"a\r\n" + b"x" * text_length + b"\r\nb\r\n.\r\n"
    assert asyncio.run(read_in_pieces(wire, [500, 1003], 64, None))[0] is problem


def test_crlf_split_by_the_stream_limit_before_the_end_line() -> None:
    """A piece that ends between CR and LF, then the end line: the end is still found."""
    # With a limit of 4, the reader hands over "abcdefg\r" and keeps "\n." for the next read.
    wire = b"abcdefg\r\n.\r\nQUIT\r\n"
    assert asyncio.run(read_in_pieces(wire, [10], 4, None)) == (
        DataProblem.NONE, b"abcdefg\r\n", b"QUIT\r\n")
    collector = DataCollector(None)
    collector.add(b"x\r")
    assert not collector.at_line_start
    collector.add(b"\n")
    assert collector.at_line_start


@pytest.mark.parametrize(("size_limit", "problem"), [
    (LINE_LIMIT - 3, DataProblem.TOO_MUCH),  # the size limit is passed first
    (LINE_LIMIT - 2, DataProblem.TOO_MUCH),  # the same byte passes both: size wins
    (LINE_LIMIT - 1, DataProblem.LINE_TOO_LONG)])
def test_the_first_problem_decides_the_reply(size_limit: int, problem: DataProblem) -> None:
    """A long line that also passes the size limit: whichever limit's byte came first."""
    wire = b"y" * 1200 + b"\r\n.\r\n"
    assert reference(wire, size_limit)[0] is problem
    assert asyncio.run(read_in_pieces(wire, [300], 65536, size_limit))[0] is problem


@pytest.mark.parametrize(("pieces", "content"), [
    ([b"a\r", b"\n.b\r\n"], b"a\r\nb\r\n"),  # CR | LF . : the dot starts a line
    ([b"a\r\n", b"..b\r\n"], b"a\r\n.b\r\n"),  # CRLF | . : likewise
    ([b"a", b".b\r\n"], b"a.b\r\n"),  # not at a line start: kept
    ([b"a\r", b".\n"], b"a\r.\n"),  # CR | . is no line start either
])
def test_unstuffing_across_pieces(pieces: list[bytes], content: bytes) -> None:
    """A stuffed dot right after a piece boundary is removed only at a line start."""
    collector = DataCollector(None)
    for piece in pieces:
        collector.add(piece)
    assert collector.content() == content


def test_refused_data_is_not_kept() -> None:
    """Once over the size limit, nothing more is held in memory."""
    collector = DataCollector(100)
    collector.add(b"x" * 90 + b"\r\n")
    collector.add(b"y" * 5000 + b"\r\n")
    assert collector.problem is DataProblem.TOO_MUCH
    assert collector.content() == b""


def _aiosmtpd_getaddr(arg: str, local_part_limit: int) -> tuple[str | None, str | None]:
    """aiosmtpd's parser (through the compatibility module; its failures on "<" and "+@["
    are malformed addresses, 553)."""
    server = object.__new__(SMTPBase)
    server.local_part_limit = local_part_limit
    return server.general_path(arg)


def _relay_getaddr(arg: str, local_part_limit: int) -> tuple[str | None, str | None]:
    """What the session does: the shortcut when it applies, else aiosmtpd's parser."""
    path = simple_path(arg, local_part_limit)
    return _aiosmtpd_getaddr(arg, local_part_limit) if path is None else path


_ADDRESS_PIECES = st.sampled_from(["<", ">", "a", "Bc", ".", "@", " ", "\t", "(", ")", '"',
                                   "x-y", "1", "[", "]", ":", ",", "+", "SIZE=1", "=", "é",
                                   "\\", "example.com", "_", "<>"])


@settings(max_examples=2000, deadline=None)
@given(arg=st.lists(_ADDRESS_PIECES, max_size=14).map("".join),
       local_part_limit=st.sampled_from([0, 3]))
def test_path_shortcut_agrees_with_aiosmtpd(arg: str, local_part_limit: int) -> None:
    """For every argument, relay's MAIL/RCPT path parsing answers exactly as aiosmtpd's."""
    assert _relay_getaddr(arg, local_part_limit) == _aiosmtpd_getaddr(arg, local_part_limit)


@pytest.mark.parametrize("arg", ["<a@example.com>", "<first.last+tag@mail.example.org> SIZE=4096",
                                 "<a@b> BODY=8BITMIME SMTPUTF8", "<>", "<x_y@[192.0.2.1]>",
                                 '<"quoted part"@example.com>', "<@relay:a@b>", "< a@b >",
                                 "<", "+@["])
def test_path_shortcut_examples(arg: str) -> None:
    """Everyday and unusual paths parse as aiosmtpd parses them."""
    assert _relay_getaddr(arg, 0) == _aiosmtpd_getaddr(arg, 0)


def test_paths_the_parser_chokes_on_get_553(spool_dir: Path) -> None:
    """Paths on which the standard library's parser fails are malformed, not local errors."""
    # Closed before intake stops: a session left in a transaction holds the stop 20 s.
    with IntakeThread(spool_dir) as intake, RawClient(intake.port) as raw:
        raw.command(b"EHLO client.test")
        assert raw.command(b"MAIL FROM:<")[:3] == "553"
        assert raw.command(b"MAIL FROM:+@[")[:3] == "553"
        assert raw.command(b"MAIL FROM:<a@example.org>")[:3] == "250"
        assert raw.command(b"RCPT TO:+@[")[:3] == "553"


def test_pipelined_group_with_rset_and_quit_gets_every_reply(spool_dir: Path) -> None:
    """Held MAIL/RCPT/RSET replies all arrive, in order, before the 354 and at QUIT."""
    with IntakeThread(spool_dir) as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        raw.send(b"MAIL FROM:<x@example.org>\r\nRSET\r\nMAIL FROM:<a@example.org>\r\n"
                 b"RCPT TO:<b@example.com>\r\nRCPT TO:<bad\x01@example.com>\r\nDATA\r\n")
        assert [raw.reply()[:3] for _ in range(6)] == ["250", "250", "250", "250", "553", "354"]
        raw.send(MESSAGE + b".\r\nMAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.com>\r\nQUIT\r\n")
        assert [raw.reply()[:3] for _ in range(4)] == ["250", "250", "250", "221"]
        assert raw.closed()
        ((envelope, content),) = accepted(spool_dir)
        assert envelope.to_remote == ("b@example.com",)
        assert strip_received(content) == MESSAGE.replace(b"\n..", b"\n.")


def test_client_that_sends_data_before_the_354_is_served(spool_dir: Path) -> None:
    """A client that does not wait for the 354 (against RFC 2920) still gets every reply."""
    # Closed before intake stops: a session left in a transaction holds the stop 20 s.
    with IntakeThread(spool_dir) as intake, RawClient(intake.port) as raw:
        raw.command(b"EHLO client.test")
        raw.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                 + MESSAGE + b".\r\n")
        assert [raw.reply()[:3] for _ in range(4)] == ["250", "250", "354", "250"]
        raw.send(b"MAIL FROM:<a@example.org>\r\n")  # a partial group, then silence
        assert raw.reply()[:3] == "250"
        assert len(accepted(spool_dir)) == 1


def test_data_dripped_a_byte_at_a_time(spool_dir: Path) -> None:
    """DATA arriving in one-byte writes (CRLF and the end line split) is read correctly."""
    with IntakeThread(spool_dir) as intake:
        raw = RawClient(intake.port)
        raw.start_data()
        for byte in MESSAGE + b".\r\n":
            raw.send(bytes([byte]))
        assert raw.reply()[:3] == "250"
        ((_, content),) = accepted(spool_dir)
        assert strip_received(content) == MESSAGE.replace(b"\n..", b"\n.")


def test_big_message_arrives_byte_for_byte(spool_dir: Path) -> None:
    """A 3 MiB message (read in pieces, handed to the storage process in slices) is exact."""
    lines = [f"{number:07d} ".encode() + b"x" * (number % 90) for number in range(60000)]
    lines[::997] = [b"." + line for line in lines[::997]]  # dot lines, stuffed by smtplib
    message = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    assert len(message) > 3 * 1024 * 1024
    with IntakeThread(spool_dir) as intake, intake.smtp() as client:
        client.sendmail("a@example.org", ["b@example.com"], message)
    ((_, content),) = accepted(spool_dir)
    assert strip_received(content) == message
