"""The `Received:` trace line intake prepends to every message (RFC 5321 section 4.4).

Pure: builds bytes from the session's facts (HELO name, client address, protocol) and the
clock; reads and writes nothing. The HELO name has already been checked by
`intake.policy.helo_problem`, so it cannot break the header.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from datetime import UTC, datetime
from email.utils import format_datetime


def protocol_name(*, extended: bool, tls: bool, authenticated: bool) -> str:
    """RFC 3848's WITH keyword: SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA."""
    if not extended:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


@functools.lru_cache(maxsize=4096)
def address_literal(ip: str) -> str:
    """The client address as an RFC 5321 address literal: [192.0.2.1] or [IPv6:2001:db8::1]."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return f"[{ip}]"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return f"[{parsed.ipv4_mapped}]"
        return f"[IPv6:{parsed}]"
    return f"[{parsed}]"


class _DateCache:
    """RFC 5322 date of the current second; formatting it once a second keeps DATA cheap."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = format_datetime(datetime.fromtimestamp(second, UTC))
        return self._text


_dates = _DateCache()


def received_line(
    *, helo: str, client_ip: str, domain: str, protocol: str, date: str | None = None
) -> bytes:
    """One folded `Received:` header, CRLF-terminated, ready to go before the content."""
    when = _dates.now() if date is None else date
    text = (
        f"Received: from {helo or 'unknown'} ({address_literal(client_ip)})\r\n"
        f"\tby {domain} with {protocol};\r\n"
        f"\t{when}\r\n"
    )
    return text.encode("utf-8", "surrogateescape")
