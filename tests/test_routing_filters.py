"""Routing: the `split:` server filter and the `mx:` client filter, against a DNS server
this test starts on 127.0.0.1 (dnslib).

A message whose ForwardTo is a domain goes to that domain's mail exchanger (found by MX,
then A) while --forward-to points at a dead port; a domain that does not exist fails the
message (.bad); a DNS server that does not answer defers it. The DNS server is given as
E-MailRelay gives it, `mx:127.0.0.1:PORT`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR
from dnslib.server import BaseResolver
from support.deliver import run_once
from support.dns import dns_server as running_dns_server
from support.intake import IntakeThread
from support.sink import Sink, free_port
from support.spool import accepted

from deliver.main import main as deliver_main
from spool import Envelope, Spool
from spool.envelope import parse_envelope

MESSAGE = b"Subject: routed\r\n\r\nby MX\r\n"


class Zone(BaseResolver):  # type: ignore[misc]
    """mail.test: MX 10 mx1.mail.test, MX 20 mx2.mail.test; mx1 has A 127.0.0.1; plain.test
    has no MX but an A record; anything else does not exist."""

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        records = {
            ("mail.test", "MX"): ["mail.test. 60 IN MX 20 mx2.mail.test.",
                                  "mail.test. 60 IN MX 10 mx1.mail.test."],
            ("mx1.mail.test", "A"): ["mx1.mail.test. 60 IN A 127.0.0.1"],
            ("mx2.mail.test", "A"): ["mx2.mail.test. 60 IN A 127.0.0.2"],
            ("plain.test", "A"): ["plain.test. 60 IN A 127.0.0.1"],
        }
        known = {key[0] for key in records}
        if name not in known:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for text in records.get((name, kind), []):
            reply.add_answer(*RR.fromZone(text))
        return reply


@pytest.fixture
def dns_server() -> Iterator[str]:
    with running_dns_server(Zone()) as address:
        yield address


def routed(spool: Spool, forward_to: str) -> str:
    return spool.store([MESSAGE], Envelope(sender="a@x.test", to_remote=("b@mail.test",),
                                           forward_to=forward_to))


@pytest.mark.parametrize("domain", ["mail.test", "plain.test"])
def test_mx_routes_to_the_domains_exchanger(spool: Spool, sink: Sink, dns_server: str,
                                            domain: str) -> None:
    """ForwardTo domain:port -> MX (lowest preference) -> A -> ForwardToAddress; sent there."""
    routed(spool, f"{domain}:{sink.port}")
    dead = f"127.0.0.1:{free_port()}"
    assert run_once(spool, dead, "--client-filter", f"mx:{dns_server}") == 0
    assert [m.data.endswith(MESSAGE) for m in sink.messages] == [True]


def test_mx_no_such_domain_fails(spool: Spool, sink: Sink, dns_server: str) -> None:
    """A ForwardTo domain that does not exist: .bad with the reason, nothing sent."""
    message = routed(spool, "nowhere.test")
    assert run_once(spool, sink.address, "--client-filter", f"mx:{dns_server}") == 0
    assert sink.messages == []
    failed = parse_envelope(spool.path.joinpath(f"{message}.envelope.bad").read_bytes())
    assert "nowhere.test: no such domain" in failed.reasons[0]


def test_mx_dns_down_defers(spool: Spool, sink: Sink) -> None:
    """No DNS server answering: deferred (kept), not sent, not failed."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        routed(spool, "mail.test")
        port = silent.getsockname()[1]
        assert run_once(spool, sink.address, "--client-filter",
                        f"mx:nst=1;rt=2;127.0.0.1:{port}") == 75
    finally:
        silent.close()
    assert sink.messages == []
    assert not list(spool.path.glob("*.bad"))


def test_mx_without_forward_to_leaves_the_message_alone(spool: Spool, sink: Sink,
                                                         dns_server: str) -> None:
    """No ForwardTo: the message goes to --forward-to as usual."""
    spool.store([MESSAGE], Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    assert run_once(spool, sink.address, "--client-filter", f"mx:{dns_server}") == 0
    assert len(sink.messages) == 1


@pytest.mark.parametrize("spec", ["mx:nowhere", "mx:nst=x;127.0.0.1:53", "mx:/a/socket"])
def test_bad_mx_spec_stops_deliver_with_78(spool: Spool, spec: str) -> None:
    """A DNS server that is not HOST:PORT (an IP address), or a bad timeout: exit 78."""
    assert deliver_main(["--once", "--spool-dir", str(spool.path), "--forward-to",
                         "127.0.0.1:9", "--client-filter", spec]) == 78


def test_split_then_mx_routes_each_domain(spool_dir: Path, sink: Sink, dns_server: str) -> None:
    """E-MailRelay's routing pair: `--filter split:PORT` makes one message per domain (case
    blind) with ForwardTo set, and `--client-filter mx:` sends each to its own exchanger."""
    with IntakeThread(spool_dir, "--filter", f"split:{sink.port}") as intake, \
            intake.smtp() as client:
        client.sendmail("a@x.test", ["x@mail.test", "y@MAIL.test", "z@plain.test"], MESSAGE)
    stored = sorted((e.forward_to, e.to_remote) for e, _content in accepted(spool_dir))
    assert stored == [(f"mail.test:{sink.port}", ("x@mail.test", "y@MAIL.test")),
                      (f"plain.test:{sink.port}", ("z@plain.test",))]
    spool = Spool(spool_dir)
    assert run_once(spool, f"127.0.0.1:{free_port()}", "--client-filter", f"mx:{dns_server}") == 0
    assert sorted(m.rcpt_tos for m in sink.messages) == [["x@mail.test", "y@MAIL.test"],
                                                        ["z@plain.test"]]


def test_split_one_domain_only_sets_forward_to(spool_dir: Path) -> None:
    """One domain: no new message, ForwardTo written; `split:raw` keeps case differences."""
    with IntakeThread(spool_dir, "--filter", "split:raw") as intake, intake.smtp() as client:
        client.sendmail("a@x.test", ["x@Mail.test", "y@mail.test"], MESSAGE)
    stored = sorted((e.forward_to, e.to_remote) for e, _content in accepted(spool_dir))
    assert stored == [("Mail.test", ("x@Mail.test",)), ("mail.test", ("y@mail.test",))]
