"""relay-intake --proxy-protocol: the client named in a PROXY header is the client, for
everything intake decides and records, and only configured proxies may name one.

A raw client on 127.0.0.1 plays the proxy and sends v1 and v2 headers naming clients such
as 192.0.2.7 (a documentation address, never really connected from): the local/remote
decision, `server none` trust, exempt networks, per-client limits, the Received line, the
envelope and the log lines all use the named address. A client that is not a proxy cannot
name one; a bad, missing or late header closes the connection before the greeting.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from pathlib import Path

import pytest
from support.intake import IntakeThread, RawClient
from support.spool import accepted

from intake import admission
from intake.proxy_protocol import V2_SIGNATURE

PROXY = ("--proxy-protocol", "--proxy-address", "127.0.0.1")


def v1(client: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    server = "::1" if ":" in client else "127.0.0.1"
    return f"PROXY {family} {client} {server} {port} 25\r\n".encode()


def v2(client: str, port: int = 40000, command: int = 1) -> bytes:
    address = ipaddress.ip_address(client)
    server = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    family = 0x21 if address.version == 6 else 0x11
    block = address.packed + server.packed + struct.pack("!HH", port, 25)
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


def proxied(intake: IntakeThread, header: bytes, source: str | None = None) -> RawClient:
    """A connection that sends *header* first, then reads the greeting (or the close)."""
    client = RawClient(intake.port, greeting=False, source=source)
    client.send(header)
    client.greeting = client.reply()
    return client


def send_message(client: RawClient, subject: str) -> str:
    assert client.command(b"EHLO proxy.test").startswith("250")
    assert client.command(b"MAIL FROM:<a@example.org>").startswith("250")
    assert client.command(b"RCPT TO:<b@example.com>").startswith("250")
    assert client.command(b"DATA").startswith("354")
    return client.command(f"Subject: {subject}\r\n\r\nbody\r\n.".encode())


def test_the_named_client_is_remote_and_refused_without_remote_clients(
        spool_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A v1 header naming 192.0.2.7: a remote client, so 554 without --remote-clients, and
    the refusal is logged for 192.0.2.7; a header naming loopback is served."""
    with IntakeThread(spool_dir, *PROXY, "--log-format", "json") as intake:
        refused = proxied(intake, v1("192.0.2.7"))
        assert refused.greeting.startswith("554 5.7.1"), refused.greeting
        local = proxied(intake, v1("127.0.0.9"))
        assert local.greeting.startswith("220")
        local.command(b"QUIT")
    refusals = [json.loads(line) for line in capfd.readouterr().err.splitlines()
                if '"client_refused"' in line]
    assert [line["client"] for line in refusals] == ["192.0.2.7"]


@pytest.mark.parametrize(("header", "client", "literal"), [
    (v1("192.0.2.7"), "192.0.2.7", b"[192.0.2.7]"),
    (v2("192.0.2.8"), "192.0.2.8", b"[192.0.2.8]"),
    (v1("2001:db8::7"), "2001:db8::7", b"[IPv6:2001:db8::7]"),
    (v2("2001:db8::8"), "2001:db8::8", b"[IPv6:2001:db8::8]"),
])
def test_received_line_envelope_and_log_name_the_real_client(
        spool_dir: Path, capfd: pytest.CaptureFixture[str], header: bytes, client: str,
        literal: bytes) -> None:
    """With --remote-clients, the stored message's Received line and envelope, and the
    message_stored log line, carry the address the header named (v1 and v2, IPv4 and 6)."""
    with IntakeThread(spool_dir, *PROXY, "--remote-clients", "--log-format", "json") as intake:
        connection = proxied(intake, header)
        assert connection.greeting.startswith("220")
        assert send_message(connection, "proxied").startswith("250")
        connection.command(b"QUIT")
    ((envelope, content),) = accepted(spool_dir)
    assert envelope.client == client
    first_line = content.split(b"\r\n")[0]
    assert literal in first_line and b"127.0.0.1" not in first_line
    stored = [json.loads(line) for line in capfd.readouterr().err.splitlines()
              if '"message_stored"' in line]
    assert [line["client"] for line in stored] == [client]


def test_per_client_limits_count_the_named_clients(spool_dir: Path) -> None:
    """One connection per client: a second for 192.0.2.7 gets 421, 192.0.2.8 is still served,
    though every connection comes from the one proxy address."""
    with IntakeThread(spool_dir, *PROXY, "--remote-clients", "--exempt-networks", "none",
                      "--max-connections-per-client", "1") as intake:
        first = proxied(intake, v1("192.0.2.7"))
        assert first.greeting.startswith("220")
        second = proxied(intake, v2("192.0.2.7"))
        assert second.greeting.startswith("421"), second.greeting
        other = proxied(intake, v1("192.0.2.8"))
        assert other.greeting.startswith("220")
        first.command(b"QUIT")
        other.command(b"QUIT")


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_exempt_networks_and_server_none_trust_use_the_named_client(spool_dir: Path,
                                                                    tmp_path: Path) -> None:
    """A `server none 192.0.2.0/24` line trusts a client named 192.0.2.7 (no AUTH needed), not
    one named 198.51.100.1 (530); 10.1.2.3 in --exempt-networks has no per-client limit."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice s3cret\nserver none 192.0.2.0/24 lan\n")
    with IntakeThread(spool_dir, *PROXY, "--remote-clients", "--server-auth", str(secrets),
                      "--server-auth-insecure", "--max-connections-per-client", "1",
                      "--exempt-networks", "10.1.0.0/16") as intake:
        trusted = proxied(intake, v1("192.0.2.7"))
        assert send_message(trusted, "trusted").startswith("250")
        stranger = proxied(intake, v1("198.51.100.1"))
        assert stranger.command(b"EHLO x.test").startswith("250")
        assert stranger.command(b"MAIL FROM:<a@example.org>").startswith("530")
        exempt = [proxied(intake, v1("10.1.2.3", 40000 + n)) for n in range(3)]
        assert all(client.greeting.startswith("220") for client in exempt)
        for client in (trusted, stranger, *exempt):
            client.command(b"QUIT")
    assert [envelope.client for envelope, _ in accepted(spool_dir)] == ["192.0.2.7"]


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.7 127.0.0.1 40000\r\n",  # a port missing
    b"EHLO not-a-proxy-header\r\n",
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # the v2 form, version 1
    b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n",  # longer than 107 bytes
])
def test_a_bad_header_closes_without_a_greeting(spool_dir: Path,
                                                capfd: pytest.CaptureFixture[str],
                                                header: bytes) -> None:
    """From a proxy address, anything but a valid header ends the connection: no 220."""
    with IntakeThread(spool_dir, *PROXY, "--remote-clients") as intake:
        client = proxied(intake, header)
        assert client.greeting == ""
    assert "proxy_header_refused" in capfd.readouterr().err


def test_a_missing_header_times_out(spool_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    """A proxy connection that sends nothing is closed after the header timeout, ungreeted."""
    monkeypatch.setattr(admission, "PROXY_HEADER_TIMEOUT", 0.5)
    with IntakeThread(spool_dir, *PROXY) as intake:
        client = RawClient(intake.port, greeting=False)
        assert client.reply() == ""
    assert "proxy_header_refused" in capfd.readouterr().err


def test_local_command_keeps_the_proxy_address(spool_dir: Path) -> None:
    """A v2 LOCAL header (a health check) and v1 UNKNOWN: the proxy itself, a local client."""
    with IntakeThread(spool_dir, *PROXY) as intake:
        for header in (v2("192.0.2.7", command=0), b"PROXY UNKNOWN\r\n"):
            client = proxied(intake, header)
            assert client.greeting.startswith("220"), client.greeting
            assert send_message(client, "health").startswith("250")
            client.command(b"QUIT")
    assert [envelope.client for envelope, _ in accepted(spool_dir)] == ["127.0.0.1"] * 2


def test_only_configured_proxies_may_name_a_client(spool_dir: Path) -> None:
    """From 127.0.0.1 when only 127.0.0.2 is a proxy: greeted at once, and a PROXY line is
    an unknown command (500); the message is recorded as from 127.0.0.1."""
    with IntakeThread(spool_dir, "--proxy-protocol", "--proxy-address", "127.0.0.2") as intake:
        client = RawClient(intake.port)
        assert client.greeting.startswith("220")
        assert client.command(v1("192.0.2.7").rstrip(b"\r\n")).startswith("500")
        assert send_message(client, "direct").startswith("250")
        client.command(b"QUIT")
        behind = proxied(intake, v1("127.0.0.5"), source="127.0.0.2")
        assert send_message(behind, "via the proxy").startswith("250")
        behind.command(b"QUIT")
    assert [envelope.client for envelope, _ in accepted(spool_dir)] == ["127.0.0.1",
                                                                        "127.0.0.5"]
