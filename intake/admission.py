"""Who may talk to relay-intake: what a new connection goes through before its greeting.

`admit` classifies the client (trusted by a `server none` line, exempt from the per-address
limits) and counts it against the connection limits (intake.limits); `greet_or_refuse`
runs at the start of the session's task: the PROXY header from a configured proxy
(intake.proxy_protocol: the client it names is then the client, admitted anew), then the
refusals in order (a limit, a remote client without `--remote-clients`, a DNS blocklist
(intake.dnsbl), an early talker). A refused client gets its one reply and the connection
closes; an admitted one moves the session on to its commands (intake.session's state table).

Reads only the session's socket and settings; writes nothing but the refusal, through the
session.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from intake import dnsbl
from intake.limits import in_networks
from intake.policy import is_loopback
from intake.proxy_protocol import ProxyProtocolError, read_header

if TYPE_CHECKING:
    from intake.session import Session

PROXY_HEADER_TIMEOUT = 10.0  # seconds a proxy may take to send its PROXY header


def admit(session: Session) -> None:
    """Classify the client (trusted, exempt) and count it against the limits."""
    config = session.server.config
    limits = session.server.limits
    if session.counted:
        limits.release(session.client_ip, exempt=session.exempt)
    if config.authenticator is not None:
        session.trusted_keyword = config.authenticator.trusted_keyword(session.client_ip)
    session.exempt = (session.trusted_keyword is not None
                      or session.server.exempt(session.client_ip))
    session.refusal = limits.admit(session.client_ip, exempt=session.exempt)
    session.counted = session.refusal is None


async def greet_or_refuse(session: Session) -> bool:
    """True when the client may be greeted; False when it was refused (and told why)."""
    if session.proxied and not await _proxy_header(session):
        return False
    config = session.server.config
    refusal = session.refusal
    if refusal is None and not (config.remote_clients or is_loopback(session.client_ip)):
        refusal = "554 5.7.1 Access denied: this server accepts local clients only"
    if refusal is None and not await _dnsbl_allows(session):
        refusal = "554 5.7.1 Access denied: client address is on a DNS blocklist"
    if refusal is None and await _talks_first(session):
        refusal = "554 5.5.1 Protocol error: client sent data before the greeting"
    if refusal is not None:
        session.server.log.warning("client_refused", client=session.client_ip,
                                   reason=refusal[4:])
        session.close_with(refusal)
        return False
    return True


async def _dnsbl_allows(session: Session) -> bool:
    """--dnsbl: False when enough blocklists list the client (intake.dnsbl)."""
    config = session.server.config
    if config.dnsbl is None or in_networks(session.client_ip, config.dnsbl_exempt):
        return True
    verdict = await dnsbl.check(config.dnsbl, session.client_ip)
    session.server.log.info("dnsbl_checked", client=session.client_ip, allow=verdict.allow,
                            reason=verdict.reason)
    return verdict.allow


async def _proxy_header(session: Session) -> bool:
    """Read the PROXY header; the client it names becomes the session's client."""
    try:
        header = await asyncio.wait_for(read_header(session.reader), PROXY_HEADER_TIMEOUT)
    except (ProxyProtocolError, TimeoutError) as error:
        session.server.log.warning("proxy_header_refused", client=session.client_ip,
                                   reason=str(error) or "no PROXY header within "
                                   f"{PROXY_HEADER_TIMEOUT:g} s")
        if session.transport is not None:
            session.transport.close()
        return False
    if header.source is not None:  # None: a health check (LOCAL, UNKNOWN): the proxy
        session.client_ip, session.client_port = header.source
    admit(session)
    return True


async def _talks_first(session: Session) -> bool:
    """An early talker sends commands before the greeting (spam bots, smuggling tests)."""
    delay = session.server.config.greeting_delay
    if delay > 0:
        try:
            data = await asyncio.wait_for(session.reader.read(1), delay)
        except TimeoutError:
            return False
        return bool(data)
    await asyncio.sleep(0)
    return bool(session.buffered)
