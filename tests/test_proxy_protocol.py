"""intake.proxy_protocol: HAProxy's PROXY headers v1 and v2, parsed and read from real sockets.

Headers are built here byte by byte from the specification; reading them goes through a
real `asyncio.StreamReader` on a socket pair, fed in random pieces, and must leave the
bytes after the header in the stream.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intake.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse_v1,
    parse_v2,
    read_header,
)


def v2(command: int, family: int, protocol: int, addresses: bytes, tlvs: bytes = b"",
       version: int = 2) -> bytes:
    """A v2 header: signature, version/command, family/protocol, length, block."""
    block = addresses + tlvs
    return (V2_SIGNATURE + bytes([(version << 4) | command, (family << 4) | protocol])
            + struct.pack("!H", len(block)) + block)


def inet(source: str, destination: str, sport: int, dport: int) -> bytes:
    return (ipaddress.ip_address(source).packed + ipaddress.ip_address(destination).packed
            + struct.pack("!HH", sport, dport))


def test_v1_tcp4() -> None:
    """A v1 TCP4 line gives the client's address and port and the address it connected to."""
    header = parse_v1(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n")
    assert header == ProxyHeader(1, ("192.0.2.7", 56324), ("198.51.100.1", 25))


def test_v1_tcp6_is_normalised() -> None:
    """A v1 TCP6 line's addresses come back in their compressed form."""
    header = parse_v1(b"PROXY TCP6 2001:db8:0:0:0:0:0:7 2001:db8::1 4000 25\r\n")
    assert header.source == ("2001:db8::7", 4000)


def test_v1_unknown_keeps_the_connection_address() -> None:
    """UNKNOWN (with or without addresses after it) names no client."""
    assert parse_v1(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, None)
    assert parse_v1(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").source is None


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\n",  # no CR
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",  # a port missing
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25 1\r\n",  # a field too many
    b"PROXY TCP4  192.0.2.7 198.51.100.1 56324 25\r\n",  # two spaces
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",  # port out of range
    b"PROXY TCP4 192.0.2.7 198.51.100.1 0080 25\r\n",  # leading zero
    b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n",
    b"PROXY TCP4 2001:db8::7 198.51.100.1 1 25\r\n",  # IPv6 under TCP4
    b"PROXY TCP6 192.0.2.7 2001:db8::1 1 25\r\n",  # IPv4 under TCP6
    b"PROXY TCP4 192.0.2.007 198.51.100.1 1 25\r\n",  # leading zeros in an octet
    b"PROXY TCP4 example.org 198.51.100.1 1 25\r\n",
    b"PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n",
    b"PROXY TCP4 192.0.2.7\r\n198.51.100.1 1 25\r\n",  # a line end inside
    b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\rx\r\n",
    b"proxy TCP4 192.0.2.7 198.51.100.1 1 25\r\n",
    b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n",  # longer than 107 bytes
])
def test_v1_refuses_malformed_lines(line: bytes) -> None:
    """Every deviation from the specification's v1 grammar is an error, not a guess."""
    with pytest.raises(ProxyProtocolError):
        parse_v1(line)


def test_v2_inet_with_tlvs() -> None:
    """A v2 PROXY/INET/STREAM header gives the client; TLVs after the addresses are skipped."""
    tlvs = b"\x04\x00\x02ab" + b"\x05\x00\x03xyz"  # NOOP and UNIQUE_ID
    header = parse_v2(v2(1, 1, 1, inet("192.0.2.7", "198.51.100.1", 56324, 25), tlvs))
    assert header == ProxyHeader(2, ("192.0.2.7", 56324), ("198.51.100.1", 25))


def test_v2_inet6_and_mapped_ipv4() -> None:
    """INET6 addresses are given compressed; an IPv4-mapped one as the IPv4 address."""
    assert parse_v2(v2(1, 2, 1, inet("2001:db8::7", "2001:db8::1", 1, 25))).source == (
        "2001:db8::7", 1)
    assert parse_v2(v2(1, 2, 1, inet("::ffff:192.0.2.9", "2001:db8::1", 2, 25))).source == (
        "192.0.2.9", 2)


def test_v2_local_unspec_and_unix_name_no_client() -> None:
    """LOCAL (a health check), UNSPEC and UNIX headers keep the connection's own address."""
    assert parse_v2(v2(0, 0, 0, b"")) == ProxyHeader(2, None)
    assert parse_v2(v2(0, 1, 1, inet("192.0.2.7", "198.51.100.1", 1, 2))).source is None
    assert parse_v2(v2(1, 0, 0, b"")).source is None
    assert parse_v2(v2(1, 3, 1, b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0"))
                    ).source is None


@pytest.mark.parametrize("header", [
    v2(1, 1, 1, inet("192.0.2.7", "198.51.100.1", 1, 2), version=1),  # version 1 in v2 form
    v2(2, 1, 1, inet("192.0.2.7", "198.51.100.1", 1, 2)),  # command 2
    v2(1, 1, 2, inet("192.0.2.7", "198.51.100.1", 1, 2)),  # DGRAM
    v2(1, 4, 1, inet("192.0.2.7", "198.51.100.1", 1, 2)),  # family 4
    v2(1, 1, 1, b"\x01" * 11),  # INET block too short
    v2(1, 2, 1, inet("192.0.2.7", "198.51.100.1", 1, 2)),  # INET6 block too short
    v2(1, 1, 1, inet("192.0.2.7", "198.51.100.1", 1, 2))[:-1],  # truncated
    b"\r\n\r\n\x00\r\nQUIX\n" + v2(1, 1, 1, inet("192.0.2.7", "198.51.100.1", 1, 2))[12:],
])
def test_v2_refuses_malformed_headers(header: bytes) -> None:
    """A bad signature, version, command, protocol, family or length is an error."""
    with pytest.raises(ProxyProtocolError):
        parse_v2(header)


async def _read_from_socket(pieces: list[bytes], extra_wait: float = 5.0, *, close: bool = False
                            ) -> tuple[ProxyHeader | ProxyProtocolError, bytes]:
    """Send *pieces* over a real socket pair (then end it, with *close*); (read_header's
    result, what stays buffered)."""
    ours, theirs = socket.socketpair()
    try:
        reader, writer = await asyncio.open_connection(sock=ours)
        for piece in pieces:
            theirs.sendall(piece)
            await asyncio.sleep(0)
        if close:
            theirs.shutdown(socket.SHUT_WR)
        result: ProxyHeader | ProxyProtocolError
        try:
            result = await asyncio.wait_for(read_header(reader), extra_wait)
        except ProxyProtocolError as error:
            result = error
        if not close:
            theirs.shutdown(socket.SHUT_WR)
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return result, rest
    finally:
        theirs.close()


def test_read_header_leaves_the_smtp_bytes() -> None:
    """After a header, whatever the client sent next stays in the stream for the session."""
    line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n"
    result, rest = asyncio.run(_read_from_socket([line + b"EHLO x\r\n"]))
    assert result == ProxyHeader(1, ("192.0.2.7", 56324), ("198.51.100.1", 25))
    assert rest == b"EHLO x\r\n"
    binary = v2(1, 1, 1, inet("192.0.2.8", "198.51.100.1", 7, 25), b"\x04\x00\x01z")
    result, rest = asyncio.run(_read_from_socket([binary, b"QUIT\r\n"]))
    assert isinstance(result, ProxyHeader) and result.source == ("192.0.2.8", 7)
    assert rest == b"QUIT\r\n"


def test_read_header_does_not_wait_after_the_shortest_header() -> None:
    """'PROXY UNKNOWN\\r\\n' and a LOCAL v2 header (16 bytes) alone are read without waiting."""
    for header in (b"PROXY UNKNOWN\r\n", v2(0, 0, 0, b"")):
        result, rest = asyncio.run(_read_from_socket([header], extra_wait=1.0))
        assert isinstance(result, ProxyHeader) and result.source is None
        assert rest == b""


@pytest.mark.parametrize("wire", [
    b"EHLO client.example\r\n",  # no header at all
    b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25",  # the connection closes mid-header
    b"PROXY UNKNOWN " + b"y" * 40_000 + b"\r\n",  # no line end within the stream limit
    V2_SIGNATURE + b"\x21\x11\x00\x0c" + b"\x00" * 4,  # shorter than its length
])
def test_read_header_refuses(wire: bytes) -> None:
    """No header, a truncated one, or an endless v1 line: ProxyProtocolError, never a hang."""
    result, _ = asyncio.run(_read_from_socket([wire], close=True))
    assert isinstance(result, ProxyProtocolError)


_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str).filter(
    lambda text: ipaddress.IPv6Address(text).ipv4_mapped is None)
_ports = st.integers(0, 65535)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(st.just(4), _ipv4, _ipv4), st.tuples(st.just(6), _ipv6, _ipv6)),
       _ports, _ports, st.integers(1, 40), st.booleans())
def test_round_trip_in_random_pieces(family: tuple[int, str, str], sport: int, dport: int,
                                     cut: int, binary: bool) -> None:
    """Any address and port, in either version, cut anywhere on the wire, reads back the same."""
    version, source, destination = family
    if binary:
        wire = v2(1, 1 if version == 4 else 2, 1, inet(source, destination, sport, dport))
    else:
        wire = f"PROXY TCP{version} {source} {destination} {sport} {dport}\r\n".encode()
    wire += b"EHLO a\r\n"
    result, rest = asyncio.run(_read_from_socket([wire[:cut], wire[cut:]]))
    assert isinstance(result, ProxyHeader)
    assert result.source == (source, sport) and result.destination == (destination, dport)
    assert rest == b"EHLO a\r\n"
