"""What relay-deliver says about itself and its addresses on the command line.

`address_problem` refuses for good an address aiosmtplib cannot send as it is (see
deliver.forward), with code 553 as a refusing server would; `ehlo_name` is the EHLO
argument: --domain, or for a name without a dot the local address as an address literal.
Asks the routing table (a UDP socket, no packet sent); reads and writes nothing else.
"""

from __future__ import annotations

import socket

from common.compat_aiosmtplib import wire_address
from deliver.outcome import Reply

# The reply code of an address aiosmtplib will not send (RFC 5321: mailbox name not
# allowed), as a smarthost refusing it would answer.
UNSENDABLE = 553


def address_problem(role: str, address: str, encoding: str) -> Reply | None:
    """None when aiosmtplib sends *address* as it is; else the permanent refusal."""
    try:
        path = wire_address(address, encoding)
    except ValueError as error:
        return unsendable(role, address, str(error))
    if path != f"<{address}>".encode(encoding):
        shown = path.decode(encoding, "replace")
        return unsendable(role, address, f"the client library would send it as {shown}")
    return None


def unsendable(role: str, address: str, why: str) -> Reply:
    """A permanent refusal, made here, of an address aiosmtplib will not send as it is."""
    return Reply(UNSENDABLE, f"relay-deliver cannot send the {role} {address or '<>'}:"
                             f" {' '.join(why.split())}")


def ehlo_name(domain: str, host: str, port: int, interface: str | None) -> str:
    """The EHLO argument: *domain*, or, for a name without a dot, the address literal of the
    local end (as E-MailRelay's client does), found by asking the routing table."""
    if "." in domain.strip("."):
        return domain
    address = interface
    if not address:
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            info = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
            with socket.socket(info[0][0], socket.SOCK_DGRAM) as probe:
                probe.connect(info[0][4])  # UDP: no packet is sent, only a route is chosen
                address = str(probe.getsockname()[0])
        except OSError:
            return domain
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"
