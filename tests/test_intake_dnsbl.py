"""--dnsbl: E-MailRelay's DNS blocklist check at connect, against a DNS server this test
starts on 127.0.0.1 (dnslib). Clients come from 127.0.0.x with --dnsbl-exempt-networks none
(by default loopback, like E-MailRelay's local addresses, is never checked)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR
from dnslib.server import BaseResolver
from support.dns import dns_server as running_dns_server
from support.intake import IntakeProcess, IntakeThread, RawClient

from common.config import ConfigError
from intake.dnsbl import Dnsbl, parse_dnsbl, query_name
from intake.main import prepare
from tools.relay import plan
from tools.relay_args import parse

LISTED = "127.0.0.2"  # listed in bl1.test and bl2.test
HALF_LISTED = "127.0.0.3"  # listed in bl1.test only
CLEAN = "127.0.0.4"


class Blocklists(BaseResolver):  # type: ignore[misc]
    """bl1.test lists 127.0.0.2 and 127.0.0.3, bl2.test lists 127.0.0.2 (A 127.0.0.2, as
    real DNSBLs answer); anything else does not exist."""

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        listed = {"2.0.0.127.bl1.test", "3.0.0.127.bl1.test", "2.0.0.127.bl2.test"}
        if name in listed and QTYPE[request.q.qtype] == "A":
            reply.add_answer(*RR.fromZone(f"{name}. 60 IN A 127.0.0.2"))
        elif name not in listed:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def dns_server() -> Iterator[str]:
    with running_dns_server(Blocklists()) as address:
        yield address


def refused(port: int, source: str) -> bool:
    """The connection gets a 554 greeting and is closed."""
    client = RawClient(port, source=source)
    if client.greeting.startswith("220"):
        client.close()
        return False
    assert client.greeting.startswith("554 5.7.1") and client.closed()
    return True


def test_parse_takes_both_of_emailrelays_field_orders() -> None:
    """The new order with defaults, every field, the old order, and a negative timeout."""
    assert parse_dnsbl("bl.test") == Dnsbl(("bl.test",), 1, 5.0, True, None)
    assert parse_dnsbl("a.test,b.test,2,500,127.0.0.1:5353") == Dnsbl(
        ("a.test", "b.test"), 2, 0.5, True, ("127.0.0.1", 5353))
    assert parse_dnsbl("127.0.0.1:53,500,1,a.test,b.test") == Dnsbl(
        ("a.test", "b.test"), 1, 0.5, True, ("127.0.0.1", 53))
    assert parse_dnsbl("a.test,1,-5000") == Dnsbl(("a.test",), 1, 5.0, False, None)
    assert parse_dnsbl("a.test,0,-5000").allow_on_timeout  # threshold 0 never refuses
    assert query_name("192.0.2.1", "bl.test") == "1.2.0.192.bl.test"


@pytest.mark.parametrize("value", ["1.2.3.4,500", "a.test,1,x5", "a.test,1,500,1.2.3.4,extra",
                                   "a.test,1,500,dns.example", "a.test,-1"])
def test_bad_dnsbl_value_is_a_config_error(spool_dir: Path, value: str) -> None:
    """A value E-MailRelay would not take stops intake with the option named."""
    with pytest.raises(ConfigError, match="--dnsbl"):
        prepare(["--spool-dir", str(spool_dir), "--dnsbl", value])


def test_listed_client_is_refused_and_unlisted_served(spool_dir: Path, dns_server: str) -> None:
    """Threshold 2: a client in both lists gets 554 and is closed; one in a single list and
    one in none get 220; a 127.0.0.1 client is never checked by default."""
    with IntakeThread(spool_dir, "--dnsbl-exempt-networks", "none",
                      "--dnsbl", f"bl1.test,bl2.test,2,2000,{dns_server}") as intake:
        assert refused(intake.port, LISTED)
        assert not refused(intake.port, HALF_LISTED)
        assert not refused(intake.port, CLEAN)
    with IntakeThread(spool_dir, "--dnsbl", f"bl1.test,1,2000,{dns_server}") as intake:
        assert not refused(intake.port, LISTED)  # loopback: exempt by default


def test_dns_server_down_allows_or_with_a_negative_timeout_refuses(spool_dir: Path) -> None:
    """No DNS server: after the timeout the client is served (E-MailRelay's default); with a
    negative timeout it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes queries, no answer
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        for timeout, expect_refused in (("300", False), ("-300", True)):
            with IntakeThread(spool_dir, "--dnsbl-exempt-networks", "none",
                              "--dnsbl", f"bl1.test,1,{timeout},{server}") as intake:
                started = time.monotonic()
                assert refused(intake.port, CLEAN) is expect_refused
                assert 0.25 < time.monotonic() - started < 5


def test_threshold_zero_only_logs(spool_dir: Path, dns_server: str) -> None:
    """Threshold 0: a listed client is served, and the log says which lists have it."""
    with IntakeProcess(spool_dir, "--dnsbl-exempt-networks", "none",
                       "--dnsbl", f"bl1.test,bl2.test,0,2000,{dns_server}") as intake:
        assert not refused(intake.port, LISTED)
        intake.wait_for_log("dnsbl_checked")
        assert "bl1.test, bl2.test" in intake.log()


def test_relay_passes_dnsbl_to_intake() -> None:
    """`relay --as-server --dnsbl ...` gives relay-intake the same value."""
    result = plan(parse(["--as-server", "--dnsbl", "bl.test,1,500,127.0.0.1:53"]))
    assert result.intake is not None
    at = result.intake.index("--dnsbl")
    assert result.intake[at + 1] == "bl.test,1,500,127.0.0.1:53"
