"""`--dnsbl`: E-MailRelay 2.6.1's DNS blocklist check of a client at connect.

The setting is E-MailRelay's comma list: `zone[,zone...][,threshold[,timeout-ms[,dns-server]]]`
(or its old order, `dns-server,timeout-ms,threshold,zone[,zone...]`). At connect the client's
address, reversed (`4.3.2.1` for 1.2.3.4, nibbles for IPv6), is asked for as an A record
(AAAA for IPv6) in every zone at once, without blocking the event loop (dnspython's asyncio
resolver, imported at the first check). When `threshold` zones answer with an address the
client is refused; threshold 0 only logs. A DNS server that does not answer in time allows the
client, or refuses it when the timeout was given negative (never with threshold 0). Clients
in `--dnsbl-exempt-networks` (E-MailRelay's loopback, RFC 1918 and link-local networks by
default) are never looked up. Reads nothing on disk; sends UDP queries to the DNS server only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import re
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.exception
    import dns.resolver
else:

    class _LazyDns:
        """dnspython's modules, imported at the first check: an intake without --dnsbl
        never loads them."""

        def __getattr__(self, name: str) -> ModuleType:
            module = importlib.import_module(f"dns.{name}")
            setattr(self, name, module)
            return module

    dns = _LazyDns()

DEFAULT_THRESHOLD = 1
DEFAULT_TIMEOUT_MS = 5000  # E-MailRelay's default
# E-MailRelay never checks loopback, RFC 1918 ("unique local") and link-local addresses.
LOCAL_NETWORKS = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                  "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10")


@dataclass(frozen=True)
class Dnsbl:
    """A checked `--dnsbl` value."""

    zones: tuple[str, ...]
    threshold: int
    timeout: float  # seconds
    allow_on_timeout: bool
    server: tuple[str, int] | None  # None: the first nameserver of /etc/resolv.conf


@dataclass(frozen=True)
class Verdict:
    """What the zones said about one client."""

    allow: bool
    listed_by: tuple[str, ...]
    silent: tuple[str, ...]  # zones with no answer before the timeout

    @property
    def reason(self) -> str:
        parts = [f"listed by {', '.join(self.listed_by)}" if self.listed_by
                 else "listed by no DNSBL zone"]
        if self.silent:
            parts.append(f"no answer from {', '.join(self.silent)} in time")
        return "; ".join(parts)


def _is_zone(text: str) -> bool:
    """A domain, not a number or an address: its last label is not numeric (E-MailRelay's test)."""
    if not text or re.fullmatch(r"[-0-9]+", text):
        return False
    tld = text.rstrip(".").rsplit(".", 1)[-1]
    return bool(re.fullmatch(r"[A-Za-z0-9-]*", tld)) and not tld.isdigit()


def _server(text: str) -> tuple[str, int] | None:
    if not text:
        return None
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text)
    ipaddress.ip_address(host)  # ValueError for a name: E-MailRelay takes addresses only
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    return host, port


def _build(zones: list[str], threshold: str, timeout: str, server: str) -> Dnsbl:
    if not zones:
        raise ValueError("no DNSBL zone")
    count = int(threshold)
    milliseconds = int(timeout)
    if count < 0:
        raise ValueError("the threshold must not be negative")
    if milliseconds == 0:
        raise ValueError("the timeout must not be 0")
    return Dnsbl(tuple(zones), count, abs(milliseconds) / 1000,
                 milliseconds > 0 or count == 0, _server(server))


def parse_dnsbl(text: str) -> Dnsbl:
    """E-MailRelay's `--dnsbl` value, in either field order; ValueError saying what is wrong."""
    fields = [item.strip() for item in text.split(",")]
    try:
        if not _is_zone(fields[0]):  # the old order: server,timeout,threshold,zones...
            if len(fields) < 4:
                raise ValueError("expected dns-server,timeout-ms,threshold,zone[,zone...]")
            return _build(fields[3:], fields[2], fields[1], fields[0])
        count = next((i for i, item in enumerate(fields) if not _is_zone(item)), len(fields))
        rest = fields[count:]
        if len(rest) > 3:
            raise ValueError("unused fields after zone,...,threshold,timeout-ms,dns-server")
        rest += [str(DEFAULT_THRESHOLD), str(DEFAULT_TIMEOUT_MS), ""][len(rest):]
        return _build(fields[:count], *rest)
    except ValueError as error:
        message = str(error)
        if message.startswith("invalid literal"):
            message = "threshold and timeout-ms must be whole numbers"
        raise ValueError(message) from None


def query_name(ip: str, zone: str) -> str:
    """`4.3.2.1.zone` for 1.2.3.4 (reversed nibbles for IPv6)."""
    pointer = ipaddress.ip_address(ip).reverse_pointer
    return pointer.rsplit(".", 2)[0] + "." + zone.rstrip(".")


def _resolver(config: Dnsbl) -> dns.asyncresolver.Resolver:
    if config.server is None:
        resolver = dns.asyncresolver.Resolver()
        resolver.nameservers = resolver.nameservers[:1]  # E-MailRelay asks the first only
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [config.server[0]]
        resolver.port = config.server[1]
    resolver.timeout = config.timeout
    resolver.lifetime = config.timeout
    return resolver


async def _listed(resolver: dns.asyncresolver.Resolver, name: str, kind: str) -> bool:
    """True: an address answer; False: any other answer. Raises when there was none."""
    try:
        answer = await resolver.resolve(name, kind, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN):
        return False
    return answer.rrset is not None and len(answer.rrset) > 0


async def check(config: Dnsbl, ip: str) -> Verdict:
    """Ask every zone about *ip* at once; decide as soon as the threshold is reached or can no
    longer be, or at the timeout."""
    kind = "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
    resolver = _resolver(config)
    tasks = {asyncio.ensure_future(_listed(resolver, query_name(ip, zone), kind)): zone
             for zone in config.zones}
    listed: list[str] = []
    answered: set[str] = set()
    pending = set(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.timeout
    try:
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for task in done:
                if task.exception() is None:
                    answered.add(tasks[task])
                    if task.result():
                        listed.append(tasks[task])
            unanswered = len(pending)
            if config.threshold and (len(listed) >= config.threshold
                                     or len(listed) + unanswered < config.threshold):
                break
    finally:
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    order = {zone: i for i, zone in enumerate(config.zones)}
    listed_by = tuple(sorted(listed, key=order.__getitem__))
    if config.threshold and len(listed_by) >= config.threshold:
        return Verdict(False, listed_by, ())
    silent = tuple(zone for zone in config.zones if zone not in answered)
    decided = config.threshold and len(listed_by) + len(silent) < config.threshold
    if silent and not decided:
        return Verdict(config.allow_on_timeout, listed_by, silent)
    return Verdict(True, listed_by, ())
