"""Who may hold a connection, and who may still guess passwords: pure counting, no I/O.

`ConnectionLimits` counts open connections in total, per client address and per client
network (an IPv4 /24, an IPv6 /64), keeping `reserved` of the total for exempt clients:
local ones (`--exempt-networks`, loopback by default) and those a `server none` line of
the secrets file trusts. Exempt clients are never held to the per-address or per-network
limits (Postfix's smtpd_client_event_limit_exceptions), so a local application with 20
sending threads, or a proxy in front of relay, is never refused for its own address.

`AuthFailures` counts failed AUTH attempts per client address across connections over a
sliding window (what Postfix's anvil counts), and blocks the address for that window once
it reaches the limit. Both are driven by the session with a monotonic clock; neither reads,
writes or logs anything.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPV4_PREFIX = 24
IPV6_PREFIX = 64


# Per connection, for the same few addresses: asked of ipaddress once each.
@functools.lru_cache(maxsize=4096)
def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(ip.split("%", maxsplit=1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def network_of(ip: str) -> str:
    """The client network that *ip* is counted in: its /24 (IPv4) or /64 (IPv6)."""
    address = _address(ip)
    if address is None:
        return ip
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """'127.0.0.0/8', '::1', '192.0.2.7' -> networks; ValueError names a bad one."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or network") from None
    return tuple(networks)


def in_networks(ip: str, networks: tuple[Network, ...]) -> bool:
    """True when *ip* (IPv4-mapped IPv6 counts as IPv4) is in one of *networks*."""
    address = _address(ip)
    return address is not None and any(address in network for network in networks)


def network_test(networks: tuple[Network, ...]) -> Callable[[str], bool]:
    """`in_networks` for fixed *networks*, remembered per address (asked per connection)."""

    @functools.lru_cache(maxsize=4096)
    def contains(ip: str) -> bool:
        return in_networks(ip, networks)

    return contains


class ConnectionLimits:
    """Open connections: in total (some reserved for exempt clients), per address, per network.

    Clients that are not exempt may hold at most `total - reserved` connections between
    them; exempt ones any that are free.

    A limit of 0 means none. `admit` and `release` are called once per connection, with the
    same arguments.
    """

    def __init__(self, total: int, reserved: int, per_client: int, per_network: int) -> None:
        self.total_limit = total
        self.reserved = reserved
        self.per_client_limit = per_client
        self.per_network_limit = per_network
        self.total = 0
        self.untrusted = 0  # connections of clients that are not exempt
        self.by_client: Counter[str] = Counter()
        self.by_network: Counter[str] = Counter()

    def admit(self, ip: str, *, exempt: bool) -> str | None:
        """Count a new connection; returns a 421 reply when it is over a limit (not counted)."""
        if self.total_limit > 0 and (
                self.total >= self.total_limit
                or (not exempt and self.untrusted >= self.total_limit - self.reserved)):
            return "421 4.7.0 Too many connections, try again later"
        if exempt:
            self.total += 1
            return None
        network = network_of(ip)
        if self.per_client_limit > 0 and self.by_client[ip] >= self.per_client_limit:
            return "421 4.7.0 Too many connections from your address, try again later"
        if self.per_network_limit > 0 and self.by_network[network] >= self.per_network_limit:
            return "421 4.7.0 Too many connections from your network, try again later"
        self.total += 1
        self.untrusted += 1
        self.by_client[ip] += 1
        self.by_network[network] += 1
        return None

    def release(self, ip: str, *, exempt: bool) -> None:
        """Forget a connection that admit() counted."""
        self.total -= 1
        if exempt:
            return
        self.untrusted -= 1
        for counter, key in ((self.by_client, ip), (self.by_network, network_of(ip))):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


@dataclass
class AuthFailures:
    """Failed AUTH attempts per client address in the last *window* seconds.

    Once an address has *limit* failures in the window it is blocked until *window*
    seconds after the failure that reached the limit. A limit of 0 means none. Memory is
    bounded: at most *max_addresses* addresses are remembered (the oldest go first).
    """

    limit: int
    window: float
    max_addresses: int = 100_000
    _failures: dict[str, collections.deque[float]] = field(default_factory=dict)
    _blocked: dict[str, float] = field(default_factory=dict)

    def blocked(self, ip: str, now: float) -> bool:
        """True while *ip* is blocked."""
        until = self._blocked.get(ip)
        if until is None:
            return False
        if now < until:
            return True
        del self._blocked[ip]
        return False

    def failed(self, ip: str, now: float) -> bool:
        """Count one failure; True when this one reached the limit (the address is now blocked)."""
        if self.limit <= 0:
            return False
        times = self._failures.pop(ip, None) or collections.deque()
        self._failures[ip] = times  # re-inserted: the dict is oldest-first
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        while len(self._failures) > self.max_addresses:
            del self._failures[next(iter(self._failures))]
        if len(times) < self.limit:
            return False
        del self._failures[ip]
        self._blocked[ip] = now + self.window
        while len(self._blocked) > self.max_addresses:
            del self._blocked[next(iter(self._blocked))]
        return True
