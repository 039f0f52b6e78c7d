"""Intake policy as small functions: who is local, what an address, a path or a HELO name
may contain, free-space refusal, and the reply for a storage error (connection limits and
AUTH failure counts are in intake.limits).

Reads only the spool directory's free space (statvfs, cached for a second). Never touches
message files and never talks SMTP itself: the session and its handler ask and send the
reply.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import re
import time
from dataclasses import dataclass

from common.compat_aiosmtplib import wire_address
from spool import Spool

# C0 controls, DEL, and lone surrogates (bytes that were not UTF-8: aiosmtpd decodes
# arguments with surrogateescape).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_QUOTED_LOCAL_PART = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_HELO = re.compile(r"^[\x21-\x7e\u0080-\U0010ffff]{1,255}$")
MAX_AUTH_FAILURES = 3  # on one connection; across connections: intake.limits.AuthFailures
SHUTTING_DOWN = "421 4.3.2 Service shutting down"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def client_ip(peer: object) -> str:
    """The IP address of an asyncio peername tuple (no port); '' when unknown."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0]).split("%", maxsplit=1)[0]
    return ""


def client_port(peer: object) -> int:
    """The port of an asyncio peername tuple; 0 when unknown."""
    if isinstance(peer, tuple) and len(peer) > 1 and isinstance(peer[1], int):
        return peer[1]
    return 0


@functools.lru_cache(maxsize=4096)
def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def address_problem(address: str, *, smtputf8: bool) -> str | None:
    """The reply refusing a MAIL FROM / RCPT TO address, or None when it is acceptable.

    Controls could forge an envelope line; non-ASCII needs the SMTPUTF8 parameter.
    """
    if _CONTROL.search(address):
        return "553 5.1.3 Address contains control characters or invalid bytes"
    if not smtputf8 and not address.isascii():
        return "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter"
    return None


@functools.lru_cache(maxsize=4096)  # pure; MAIL and RCPT of every message ask it
def path_problem(address: str, *, null_allowed: bool) -> str | None:
    """The 553 refusing a path that relay-deliver could not send on exactly as stored.

    relay-deliver forwards with aiosmtplib, which quotes every path with
    `email.utils.parseaddr` (common.compat_aiosmtplib.wire_address): it refuses a path with
    white space, `<`, `>` or `"` outside a quoted local part, and rewrites others (`a,b@c`
    becomes `<a>`, `a"b@c` `<a>`, `a(b)@c` `<a@c>`). A path accepted here and refused or
    changed there would be retried for ever or sent to someone else, so intake asks the
    same function now. A comma outside a quoted local part (a list) is refused too, on
    every Python: Python 3.13's stricter `parseaddr` leaves `a,b@c` as it is, so aiosmtplib
    would send it, and a smarthost refuse it after the client was told 250.
    *null_allowed*: `<>` is a reverse-path (MAIL FROM), never a forward-path (RCPT TO).
    """
    if address in ("", "<>"):
        if null_allowed:
            return None
        return "553 5.1.3 Empty forward-path: RCPT TO needs a recipient address"
    try:
        unchanged = wire_address(address, "utf-8") == f"<{address}>".encode()
    except ValueError:  # refused by the client (UnicodeEncodeError for lone surrogates)
        unchanged = False
    if not unchanged or "," in _outside_quotes(address):
        return "553 5.1.3 Address cannot be forwarded as given (route, list, comment or quoting)"
    return None


def _outside_quotes(address: str) -> str:
    """*address* without its quoted local part, if it starts with one (RFC 5321 4.1.2)."""
    quoted = _QUOTED_LOCAL_PART.match(address)
    return address[quoted.end():] if quoted else address


def helo_problem(name: str) -> str | None:
    """The reply refusing a HELO/EHLO argument, or None (one word, printable, <=255)."""
    if not _HELO.match(name):
        return "501 5.5.4 Invalid HELO/EHLO name"
    return None


def storage_error_reply(error: OSError) -> str:
    """A storage failure is always temporary: 452 for a full disk or quota, else 451."""
    if error.errno in _NO_SPACE:
        return "452 4.3.1 Insufficient system storage"
    return "451 4.3.0 Local error in processing: message not stored"


@dataclass
class SpaceCheck:
    """Refuses new mail while the spool's file system has less than *min_free* bytes left."""

    spool: Spool
    min_free: int
    _checked_at: float = -1.0
    _free: int = 0

    def free_bytes(self) -> int:
        """The free space, asked of the kernel at most once a second."""
        now = time.monotonic()
        if now - self._checked_at >= 1.0:
            try:
                self._free = self.spool.free_bytes()
            except OSError:
                self._free = 0
            self._checked_at = now
        return self._free

    def refusal(self, declared_size: int) -> str | None:
        """452 when storing *declared_size* more bytes would leave less than min_free."""
        if self.min_free <= 0:
            return None
        if self.free_bytes() - declared_size < self.min_free:
            return "452 4.3.1 Insufficient system storage, try again later"
        return None
