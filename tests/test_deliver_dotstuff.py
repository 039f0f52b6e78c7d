"""deliver.dotstuff: the DATA form of stored content, slice by slice, against a whole-message
reference; and what intake stores, sent on by deliver, read back as a smarthost reads it.

The reference does at once what RFC 5321 asks (every bare CR or LF as CRLF, a CRLF at the
end if missing, a `.` before every line that starts with one, the final dot line); the
encoder must give the same bytes however the content is cut, also when a cut falls right
before a line that starts with `.` or between the CR and the LF of a line end.
"""

from __future__ import annotations

import re
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from deliver.dotstuff import DataEncoder, data_size
from intake.data import DataCollector

_LINE_END = re.compile(rb"\r\n|\r|\n")


def reference(content: bytes) -> bytes:
    """The DATA for *content*, computed on the whole message at once."""
    normal = _LINE_END.sub(b"\r\n", content)
    if normal and not normal.endswith(b"\r\n"):
        normal += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", normal) + b".\r\n"


def encode(content: bytes, cuts: list[int]) -> bytes:
    """The DATA for *content* given to the encoder in the slices between *cuts*."""
    encoder = DataEncoder()
    out: list[bytes] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(content)]:
        out.extend(encoder.encode(content[start:cut]))
        start = cut
    out.extend(encoder.finish())
    return b"".join(out)


def read_as_smarthost(wire: bytes) -> tuple[bytes, bytes]:
    """(unstuffed content, bytes after the end line), reading CRLF lines as RFC 5321 does."""
    position, lines = 0, []
    while True:
        end = wire.index(b"\r\n", position) + 2
        line = wire[position:end]
        position = end
        if line == b".\r\n":
            return b"".join(lines), wire[position:]
        lines.append(line[1:] if line.startswith(b".") else line)


_PIECES = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"x", b"abc", b"\r\n.",
                           b".\r\n", b"\r\n.\r", b"\n.", b"\xc3\xa9\xff", b"y" * 300,
                           b"\r\n..\r\n", b"\r\n.\r\n"])
_CONTENT = st.lists(_PIECES, max_size=40).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(content=_CONTENT, cut_fractions=st.lists(st.floats(0, 1), max_size=12))
def test_any_content_cut_anywhere_encodes_as_the_whole(content: bytes,
                                                       cut_fractions: list[float]) -> None:
    """Any bytes, any cuts: the same DATA as the whole-message reference."""
    cuts = [int(fraction * len(content)) for fraction in cut_fractions]
    assert encode(content, cuts) == reference(content)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.sampled_from([b".", b"..", b".x", b"x", b"", b"x.", b"\xe2\x82\xac"]),
                      min_size=1, max_size=30),
       last_without_crlf=st.booleans())
def test_a_cut_before_every_dot_line(lines: list[bytes], last_without_crlf: bool) -> None:
    """Every line (many starting with '.') begins a slice of its own: each is stuffed once."""
    content = b"".join(line + b"\r\n" for line in lines)
    if last_without_crlf:
        content = content[:-2]
    starts, position = [], 0
    for line in lines:
        starts.append(position)
        position += len(line) + 2
    wire = encode(content, starts)
    assert wire == reference(content)
    unstuffed, after = read_as_smarthost(wire)
    assert after == b""
    assert unstuffed == content + (b"" if content.endswith(b"\r\n") or not content else b"\r\n")


@settings(max_examples=1000, deadline=None)
@given(content=_CONTENT, cut_fractions=st.lists(st.floats(0, 1), max_size=12))
def test_data_size_is_the_size_the_smarthost_reads(content: bytes,
                                                   cut_fractions: list[float]) -> None:
    """data_size (SIZE=) of any content cut anywhere: the length of the message the
    smarthost reads from the DATA, its dots of transparency taken off."""
    cuts = [int(fraction * len(content)) for fraction in cut_fractions]
    received, _after = read_as_smarthost(encode(content, cuts))
    assert data_size(cut(content, cuts)) == len(received)


def cut(content: bytes, cuts: list[int]) -> list[bytes]:
    """*content* in the slices between *cuts*."""
    bounds = [0, *sorted(set(cuts)), len(content)]
    return [content[start:end] for start, end in pairwise(bounds)]


def test_examples() -> None:
    """The edge cases by name: empty, no final CRLF, a lone CR at the end, CR|LF split."""
    assert encode(b"", []) == b".\r\n"
    assert encode(b"a", []) == b"a\r\n.\r\n"
    assert encode(b"a\r", []) == b"a\r\n.\r\n"
    assert encode(b".\r\n", []) == b"..\r\n.\r\n"
    assert encode(b"a\r\n.b\r\n", [2]) == b"a\r\n..b\r\n.\r\n"  # cut between CR and LF
    assert encode(b"a\r\n.b\r\n", [3]) == b"a\r\n..b\r\n.\r\n"  # cut right before the dot
    assert encode(b"a\nb\rc\r\n", [1, 2, 4]) == b"a\r\nb\r\nc\r\n.\r\n"
    assert data_size([b"a\r", b"\nb"]) == 6 and data_size([b""]) == 0  # CR|LF split; empty


def test_a_clean_slice_is_sent_as_it_is() -> None:
    """A slice with no bare line end and no line starting with '.' is not copied."""
    encoder = DataEncoder()
    piece = b"Subject: x\r\n\r\n" + b"text.\r\n" * 1000
    (out,) = encoder.encode(piece)
    assert out is piece
    assert encoder.finish() == [b".\r\n"]
    assert encoder.normalised == 0


def test_bare_line_ends_are_counted() -> None:
    """`normalised` counts each bare CR and bare LF rewritten, a held-back final CR too."""
    encoder = DataEncoder()
    encoder.encode(b"a\nb\r")
    encoder.encode(b"c\r\n")
    encoder.encode(b"d\r")
    encoder.finish()
    assert encoder.normalised == 3


_CLIENT_PIECES = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"x", b"\r\n.", b"\n.\n",
                                  b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r\n..\r\n", b"\xf0"])


@settings(max_examples=500, deadline=None)
@given(body=st.lists(_CLIENT_PIECES, max_size=30).map(b"".join),
       read_cuts=st.lists(st.floats(0, 1), max_size=6),
       send_cuts=st.lists(st.floats(0, 1), max_size=6))
def test_what_intake_stores_reaches_the_smarthost_as_one_message(
    body: bytes, read_cuts: list[float], send_cuts: list[float]
) -> None:
    """Any DATA a client sends (bare CR and LF included): intake's reader stores it, deliver
    sends it on, and the smarthost reads exactly one message, whose content is the stored
    one with only its bare line ends made CRLF; no bare CR or LF is ever on deliver's wire."""
    client_wire = body + (b"" if body == b"" or body.endswith(b"\r\n") else b"\r\n")
    collector = DataCollector(None)
    start = 0
    for cut in [*sorted({int(f * len(client_wire)) for f in read_cuts}), len(client_wire)]:
        collector.add(client_wire[start:cut])
        start = cut
    stored = collector.content()
    wire = encode(stored, [int(f * len(stored)) for f in send_cuts])
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
    received, after = read_as_smarthost(wire)
    assert after == b""
    assert received == _LINE_END.sub(b"\r\n", stored)
