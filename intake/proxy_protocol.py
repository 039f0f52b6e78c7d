"""The PROXY protocol (HAProxy's, versions 1 and 2): who the client behind a proxy really is.

A load balancer in front of relay-intake (HAProxy with `send-proxy` or `send-proxy-v2`)
opens its own connection to intake and, before anything else, sends one header naming the
client's address and port. This module parses that header: `parse_v1` (a text line, at
most 107 bytes), `parse_v2` (a binary block: a 12-byte signature, version and command,
family, length, addresses, then TLVs, which are skipped), and `read_header`, which reads
exactly one header from a stream and not a byte more (the SMTP dialogue that follows is
the session's). Pure parsing and stream reads only: which connections must send a header
(only those from configured proxy addresses) is decided by the listener, and nothing here
logs, replies or touches a file.

A header that says nothing about the client (v1 `UNKNOWN`, v2 `LOCAL` such as a proxy's
health check, or the v2 `UNSPEC` and `UNIX` families) gives `source=None`: the connection's
own addresses stand, as the specification says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from intake.engine import InputStream

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the longest v1 line the specification allows, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16  # signature, version/command, family/protocol, address length
V2_MAX_LENGTH = V2_FIXED_LENGTH + 65535
# The shortest header of either version ("PROXY UNKNOWN\r\n"): reading this many bytes
# first never takes a byte of the SMTP dialogue.
SHORTEST_HEADER = 15

_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY = 0x0, 0x1
_V2_FAMILY_UNSPEC, _V2_FAMILY_INET, _V2_FAMILY_INET6, _V2_FAMILY_UNIX = 0x0, 0x1, 0x2, 0x3
_V2_PROTOCOL_UNSPEC, _V2_PROTOCOL_STREAM = 0x0, 0x1
_V2_ADDRESS_LENGTHS = {_V2_FAMILY_INET: 12, _V2_FAMILY_INET6: 36, _V2_FAMILY_UNIX: 216}


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header (or the stream ended first)."""


@dataclass(frozen=True)
class ProxyHeader:
    """What one header said: the client (source) and the address it connected to."""

    version: int
    source: tuple[str, int] | None  # None: the header names no client; keep the connection's
    destination: tuple[str, int] | None = None


def _port(text: bytes) -> int:
    if not (1 <= len(text) <= 5 and text.isdigit()) or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyProtocolError(f"PROXY v1: bad port {text[:8]!r}")
    value = int(text)
    if value > 65535:
        raise ProxyProtocolError(f"PROXY v1: port {value} out of range")
    return value


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"PROXY v1: bad address {text[:48]!r}") from None
    if address.version != version:
        raise ProxyProtocolError(f"PROXY v1: {address} is not an IPv{version} address")
    return str(address)


def parse_v1(line: bytes) -> ProxyHeader:
    """A whole v1 header line, CRLF included: `PROXY TCP4 src dst sport dport\\r\\n`."""
    if len(line) > V1_MAX_LENGTH:
        raise ProxyProtocolError("PROXY v1: header longer than 107 bytes")
    if (not line.startswith(V1_PREFIX) or not line.endswith(b"\r\n")
            or b"\n" in line[:-1] or b"\r" in line[:-2]):
        raise ProxyProtocolError("PROXY v1: not a header line")
    fields = line[len(V1_PREFIX):-2].split(b" ")
    if fields[0] == b"UNKNOWN":  # anything may follow; the connection's addresses stand
        return ProxyHeader(1, None)
    if fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {fields[0][:16]!r}")
    if len(fields) != 5:
        raise ProxyProtocolError("PROXY v1: expected protocol, two addresses and two ports")
    version = 4 if fields[0] == b"TCP4" else 6
    source = (_v1_address(fields[1], version), _port(fields[3]))
    destination = (_v1_address(fields[2], version), _port(fields[4]))
    return ProxyHeader(1, source, destination)


def v2_length(fixed: bytes) -> int:
    """The whole length of a v2 header from its first 16 bytes (signature checked)."""
    if len(fixed) < V2_FIXED_LENGTH or not fixed.startswith(V2_SIGNATURE):
        raise ProxyProtocolError("PROXY v2: bad signature")
    if fixed[12] >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2: version {fixed[12] >> 4} is not 2")
    return V2_FIXED_LENGTH + int(struct.unpack_from("!H", fixed, 14)[0])


def parse_v2(header: bytes) -> ProxyHeader:
    """A whole v2 header: signature, version/command, family/protocol, length, addresses."""
    length = v2_length(header)
    if len(header) != length:
        raise ProxyProtocolError(f"PROXY v2: {len(header)} bytes for a header of {length}")
    command, family, protocol = header[12] & 0x0F, header[13] >> 4, header[13] & 0x0F
    if command == _V2_COMMAND_LOCAL:  # the proxy's own connection (a health check)
        return ProxyHeader(2, None)
    if command != _V2_COMMAND_PROXY:
        raise ProxyProtocolError(f"PROXY v2: unknown command {command}")
    if protocol not in (_V2_PROTOCOL_UNSPEC, _V2_PROTOCOL_STREAM):
        raise ProxyProtocolError("PROXY v2: not a stream connection")
    if family not in (_V2_FAMILY_UNSPEC, *_V2_ADDRESS_LENGTHS):
        raise ProxyProtocolError(f"PROXY v2: unknown address family {family}")
    needed = _V2_ADDRESS_LENGTHS.get(family, 0)
    if length - V2_FIXED_LENGTH < needed:
        raise ProxyProtocolError("PROXY v2: address block too short for its family")
    if family == _V2_FAMILY_INET:
        source_ip, target_ip, source_port, target_port = struct.unpack_from("!4s4sHH", header, 16)
    elif family == _V2_FAMILY_INET6:
        source_ip, target_ip, source_port, target_port = struct.unpack_from(
            "!16s16sHH", header, 16)
    else:  # UNSPEC, or a Unix socket's paths: nothing relay can use as a client address
        return ProxyHeader(2, None)
    return ProxyHeader(2, (_packed_address(source_ip), source_port),
                       (_packed_address(target_ip), target_port))


def _packed_address(packed: bytes) -> str:
    address = ipaddress.ip_address(packed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


async def read_header(reader: InputStream) -> ProxyHeader:
    """Read exactly one v1 or v2 header from *reader*; ProxyProtocolError if it is not one.

    Never waits for a byte past the header: the first read is of the shortest possible
    header, the rest is read by length (v2) or up to the line's end (v1, then checked to be
    at most 107 bytes); whatever the client sent after it stays in *reader* for the SMTP
    session. The caller bounds the time it may take.
    """
    try:
        start = await reader.readexactly(SHORTEST_HEADER)
        if start.startswith(V1_PREFIX):
            line = start if start.endswith(b"\n") else start + await reader.readuntil(b"\n")
            return parse_v1(line)
        if start.startswith(V2_SIGNATURE):
            fixed = start + await reader.readexactly(V2_FIXED_LENGTH - SHORTEST_HEADER)
            rest = v2_length(fixed) - V2_FIXED_LENGTH
            return parse_v2(fixed + (await reader.readexactly(rest) if rest else b""))
    except asyncio.LimitOverrunError:
        raise ProxyProtocolError("PROXY v1: no line end within 107 bytes") from None
    except asyncio.IncompleteReadError:
        raise ProxyProtocolError("connection closed before the end of the PROXY header"
                                 ) from None
    raise ProxyProtocolError("no PROXY protocol header")
