"""The built-in `mx:` client filter: E-MailRelay 2.6.1's routing by DNS.

`--client-filter mx:` (or `mx:HOST:PORT` for the DNS server to ask, E-MailRelay's syntax,
with optional `nst=SECONDS;rt=SECONDS;` before it: the name-server and retry timeouts)
reads the envelope's `ForwardTo` (`domain[:port]`, or an IP address with an optional port),
looks up the domain's MX records (lowest preference first, then the exchange's A/AAAA
records; the domain's own address records when it has no MX), and writes the result as
`ForwardToAddress` (`ip:port`, port 25 by default), which deliver then connects to. An
empty `ForwardTo` leaves the message alone; an answer of `0.0.0.0` clears
`ForwardToAddress` (the message goes to `--forward-to`). A domain that does not exist fails
the message (`.bad`); a DNS server that does not answer defers it. Reads and rewrites the
claimed `.busy` envelope only (by rename, as a filter program may); never the content.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING

from common.durable import replace_file
from common.filterspec import Builtin, Spec
from common.netclient import parse_address
from common.programs import ProgramResult
from spool.envelope import EnvelopeError, format_envelope, parse_envelope

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.exception
    import dns.resolver
else:

    class _LazyDns:
        """dnspython's modules, imported at the first lookup: ~6 MiB that a relay-deliver
        whose filters never name `mx:` would otherwise carry (docs/performance.md, idle)."""

        def __getattr__(self, name: str) -> ModuleType:
            module = importlib.import_module(f"dns.{name}")
            setattr(self, name, module)
            return module

    dns = _LazyDns()


@dataclass(frozen=True)
class MxSpec:
    """Where and how long to ask: DNS servers (empty: /etc/resolv.conf), timeouts."""

    nameservers: tuple[tuple[str, int], ...] = ()
    server_timeout: float = 5.0
    lookup_timeout: float = 20.0


def parse_mx_spec(text: str) -> MxSpec:
    """`[nst=N;][rt=N;][HOST:PORT[;HOST:PORT...]]`; ValueError for anything else."""
    servers: list[tuple[str, int]] = []
    server_timeout, lookup_timeout = 5.0, 20.0
    for word in filter(None, text.split(";")):
        if word.startswith(("nst=", "rt=")):
            key, _, value = word.partition("=")
            if not value.isdigit() or int(value) == 0:
                raise ValueError(f"{key}= needs a number of seconds, not {value!r}")
            if key == "nst":
                server_timeout = float(value)
            else:
                lookup_timeout = float(value)
            continue
        address = parse_address(word)
        if isinstance(address, str):
            raise ValueError("the DNS server is HOST:PORT, not a unix socket")
        host, port = address
        ipaddress.ip_address(host)  # a DNS server is given by address (ValueError if not)
        servers.append((host, port))
    return MxSpec(tuple(servers), server_timeout, lookup_timeout)


class LookupFailed(Exception):
    """No address for the ForwardTo domain; `temporary` when the DNS did not answer."""

    def __init__(self, reason: str, temporary: bool) -> None:
        super().__init__(reason)
        self.temporary = temporary


def _split_forward_to(value: str) -> tuple[str, int]:
    host, port = value, 25
    head, colon, tail = value.rpartition(":")
    if colon and tail.isdigit() and head and not head.endswith(":"):
        host, port = head, int(tail)
    return host.strip("[]").rstrip("."), port


def _resolver(spec: MxSpec) -> dns.asyncresolver.Resolver:
    if not spec.nameservers:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host for host, _port in spec.nameservers]
        resolver.port = spec.nameservers[0][1]
    resolver.timeout = spec.server_timeout
    resolver.lifetime = spec.lookup_timeout
    return resolver


async def _addresses(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    found: list[str] = []
    for kind in ("A", "AAAA"):
        with contextlib.suppress(dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            answer = await resolver.resolve(name, kind)
            found += [record.to_text() for record in answer]
    return found


async def lookup(spec: MxSpec, domain: str) -> str:
    """The address to connect to for *domain* (its best MX's); LookupFailed if none."""
    resolver = _resolver(spec)
    try:
        try:
            answer = await resolver.resolve(domain, "MX")
            exchanges = sorted((record.preference, record.exchange.to_text().rstrip("."))
                               for record in answer)
        except dns.resolver.NoAnswer:
            exchanges = [(0, domain)]  # RFC 5321 5.1: no MX, the domain's own address
        for _preference, exchange in exchanges:
            if exchange in ("", "."):
                raise LookupFailed(f"{domain} accepts no mail (a null MX)", temporary=False)
            addresses = await _addresses(resolver, exchange)
            if addresses:
                return addresses[0]
        raise LookupFailed(f"no address for the mail exchangers of {domain}", temporary=False)
    except dns.resolver.NXDOMAIN:
        raise LookupFailed(f"{domain}: no such domain", temporary=False) from None
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
        raise LookupFailed(f"{domain}: DNS did not answer ({error})", temporary=True) from None
    except dns.exception.DNSException as error:
        raise LookupFailed(f"{domain}: {error}", temporary=True) from None


def _write(envelope_path: str, data: bytes) -> None:
    replace_file(envelope_path, data, f"{envelope_path}.mx")


async def run_mx(spec: MxSpec, envelope_path: str) -> ProgramResult:
    """The `mx:` filter on one claimed envelope, reported as a filter program's exit."""
    try:
        with open(envelope_path, "rb") as file:
            envelope = parse_envelope(file.read(), path=envelope_path)
    except (OSError, EnvelopeError) as error:
        return ProgramResult(1, f"<<failed>>\n<<mx: cannot read the envelope: {error}>>\n", "")
    if not envelope.forward_to:
        return ProgramResult(0, "", "")
    host, port = _split_forward_to(envelope.forward_to)
    try:
        ipaddress.ip_address(host)
        address = host
    except ValueError:
        try:
            address = await lookup(spec, host)
        except LookupFailed as error:
            text = " ".join(str(error).split())
            return ProgramResult(1, f"<<failed>>\n<<mx: {text}>>\n", "",
                                 temporary=error.temporary)
    value = "" if address == "0.0.0.0" else (
        f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    try:
        _write(envelope_path, format_envelope(replace(envelope, forward_to_address=value)))
    except (OSError, EnvelopeError) as error:
        return ProgramResult(1, f"<<failed>>\n<<mx: cannot write the envelope: {error}>>\n",
                             "", temporary=True)
    return ProgramResult(0, "", "")


async def _run_spec(spec: Spec, _content: str, envelope: str, _timeout: float) -> ProgramResult:
    return await run_mx(parse_mx_spec(spec.value), envelope)


BUILTINS: dict[str, Builtin] = {"mx": (parse_mx_spec, _run_spec)}
