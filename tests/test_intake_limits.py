"""Slow and greedy clients: the minimum data rate, the session time limit, reserved slots for
exempt (local and trusted) clients, limits per address and per network, and a slowloris
from several 127.0.0.x addresses while a probe on 127.0.0.1 still gets its message stored.
The clock arithmetic (intake.pace) and the counting (intake.limits) are also tested alone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
from support.intake import IntakeThread, RawClient
from support.spool import accepted

from common.config import ConfigError
from intake.limits import ConnectionLimits, in_networks, network_of, parse_networks
from intake.main import prepare
from intake.pace import Pace


def test_pace_allows_the_minimum_rate_and_cuts_a_trickle_after_the_allowance() -> None:
    """At the minimum rate a request lasts as long as it needs; a byte every 3 s still
    runs out after about the allowance; held time is not counted; rate 0 is an idle timer."""
    steady = Pace(allowance=10, rate=100, now=0)
    for second in range(1, 100):
        steady.received(100, second)
        assert steady.remaining(second) == 10
    trickle = Pace(allowance=10, rate=100, now=0)
    second = 0
    while trickle.remaining(second) > 0:
        second += 3
        trickle.received(1, second)
    assert 9 <= second <= 12
    held = Pace(allowance=10, rate=100, now=0)
    held.hold(1, True)
    assert held.remaining(1000) == float("inf")
    held.hold(1000, False)
    assert held.remaining(1005) == 4
    idle = Pace(allowance=10, rate=0, now=0)
    idle.received(1, 9)
    assert idle.remaining(18) == 1 and idle.silent_for(18) == 9
    idle.new_request(18)
    assert idle.remaining(27) == 1


def test_connection_counting_reserves_slots_and_exempts_from_per_client_limits() -> None:
    """Untrusted clients stop at total - reserved; exempt ones use every slot and are never
    held to the per-address or per-network limit; networks are /24 and /64."""
    limits = ConnectionLimits(total=6, reserved=2, per_client=1, per_network=3)
    assert limits.admit("192.0.2.1", exempt=False) is None
    assert "your address" in (limits.admit("192.0.2.1", exempt=False) or "")
    assert limits.admit("192.0.2.2", exempt=False) is None
    assert limits.admit("192.0.2.3", exempt=False) is None
    assert "your network" in (limits.admit("192.0.2.4", exempt=False) or "")
    assert limits.admit("198.51.100.1", exempt=False) is None
    assert "Too many connections," in (limits.admit("198.51.100.2", exempt=False) or "")
    assert limits.admit("127.0.0.1", exempt=True) is None
    assert limits.admit("127.0.0.1", exempt=True) is None
    assert limits.admit("127.0.0.1", exempt=True) is not None  # all six slots taken
    limits.release("127.0.0.1", exempt=True)
    assert limits.admit("192.0.2.9", exempt=False) is not None  # 4 untrusted: all they get
    limits.release("192.0.2.1", exempt=False)
    assert limits.admit("192.0.2.9", exempt=False) is None  # its /24 has a free place again
    assert limits.total == 5 and limits.untrusted == 4
    assert network_of("2001:db8:1:2:3::4") == "2001:db8:1:2::/64"
    assert network_of("::ffff:192.0.2.77") == "192.0.2.0/24"
    exempt = parse_networks(["127.0.0.0/8", "::1"])
    assert in_networks("::ffff:127.0.0.5", exempt) and not in_networks("10.0.0.1", exempt)
    with pytest.raises(ValueError, match="not an IP"):
        parse_networks(["localhost"])


def test_min_data_rate_cuts_a_trickle_that_is_never_idle(spool_dir: Path) -> None:
    """A DATA trickling a byte every 0.2 s (never idle for --idle-timeout 1) gets
    421 Too slow about a second in, and nothing is stored; a client at a steady 10 KB/s
    on the same server takes three times as long and is stored."""
    with IntakeThread(spool_dir, "--idle-timeout", "1", "--min-data-rate", "500") as intake:
        slow, fast = RawClient(intake.port), RawClient(intake.port)
        slow.start_data()
        fast.start_data()
        started = time.monotonic()
        reply = ""
        while time.monotonic() - started < 5:
            try:
                slow.send(b"x")
            except OSError:
                break
            time.sleep(0.2)
            fast.send(b"Subject: fast\r\n" if time.monotonic() - started < 0.3
                      else b"y" * 998 + b"\r\n" + b"z" * 998 + b"\r\n")
            if time.monotonic() - started > 3:
                break
        reply = slow.reply()
        assert reply.startswith("421 4.4.2 Too slow"), reply
        fast.send(b".\r\n")
        assert fast.reply()[:3] == "250"
        assert slow.closed()
    ((_, content),) = accepted(spool_dir)
    assert b"Subject: fast" in content


def test_session_timeout_ends_a_busy_session(spool_dir: Path) -> None:
    """A client sending NOOP every 0.2 s (never idle, never slow) gets 421 4.4.2 and is
    closed at --session-timeout."""
    with IntakeThread(spool_dir, "--session-timeout", "1.5") as intake:
        raw = RawClient(intake.port)
        started = time.monotonic()
        replies = []
        while time.monotonic() - started < 5:
            reply = raw.command(b"NOOP")
            replies.append(reply[:3])
            if not reply.startswith("250"):
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        assert reply.startswith("421 4.4.2 Session time limit"), reply
        assert 1.4 <= elapsed < 3 and replies.count("250") >= 5
        assert raw.closed()


def test_local_clients_are_exempt_from_the_per_client_limit(spool_dir: Path) -> None:
    """issue 17: 25 connections at once from 127.0.0.1 with the default per-client limit of
    20 (a local application with many threads) are all greeted and can all send."""
    with IntakeThread(spool_dir) as intake:
        clients = [RawClient(intake.port) for _ in range(25)]
        assert all(c.greeting.startswith("220") for c in clients)
        for number, client in enumerate(clients):
            client.start_data()
            assert client.command(f"Subject: {number}\r\n\r\nhi\r\n.".encode())[:3] == "250"
            client.close()
    assert len(accepted(spool_dir)) == 25


def test_per_network_limit_counts_a_slash_24(spool_dir: Path) -> None:
    """Three connections from three addresses of 127.0.1.0/24 fill --max-connections-per-network
    3: a fourth address of that /24 gets 421, one of 127.0.2.0/24 is greeted."""
    with IntakeThread(spool_dir, "--exempt-networks", "none",
                      "--max-connections-per-network", "3") as intake:
        held = [RawClient(intake.port, source=f"127.0.1.{n}") for n in (1, 2, 3)]
        assert all(c.greeting.startswith("220") for c in held)
        fourth = RawClient(intake.port, source="127.0.1.4")
        assert fourth.greeting.startswith("421 4.7.0") and "your network" in fourth.greeting
        assert RawClient(intake.port, source="127.0.2.1").greeting.startswith("220")


def test_trusted_clients_use_the_reserved_slots(spool_dir: Path, tmp_path: Path) -> None:
    """With 6 slots, 3 reserved: untrusted 127.0.0.x clients get 3 and then 421, while a
    client that a `server none` line trusts takes the other 3, past its per-client limit
    of 2; the seventh connection, trusted or not, gets 421."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice s3cret\nserver none 127.0.0.9 lan\n")
    with IntakeThread(spool_dir, "--server-auth", str(secrets), "--exempt-networks", "none",
                      "--max-connections", "6", "--reserved-connections", "3",
                      "--max-connections-per-client", "2") as intake:
        untrusted = [RawClient(intake.port, source=s)
                     for s in ("127.0.0.2", "127.0.0.2", "127.0.0.3")]
        assert all(c.greeting.startswith("220") for c in untrusted)
        assert RawClient(intake.port, source="127.0.0.4").greeting.startswith("421")
        trusted = [RawClient(intake.port, source="127.0.0.9") for _ in range(3)]
        assert all(c.greeting.startswith("220") for c in trusted)
        assert RawClient(intake.port, source="127.0.0.9").greeting.startswith("421")
        trusted[0].start_data()  # trusted: no AUTH needed
        assert trusted[0].command(b"Subject: t\r\n\r\nhi\r\n.")[:3] == "250"
    assert len(accepted(spool_dir)) == 1


def slowloris(port: int, sources: list[str], per_source: int, stop: threading.Event,
              held: list[RawClient], refused: list[str], interval: float) -> None:
    """Open *per_source* connections from each address, then send each one byte of an EHLO
    every *interval* seconds until *stop*."""
    for _ in range(per_source):
        for source in sources:
            client = RawClient(port, source=source)
            if client.greeting.startswith("220"):
                held.append(client)
            else:
                refused.append(client.greeting)
                client.close()
    command = b"EHLO slowloris.example\r\n"
    position = 0
    while not stop.wait(interval):
        for client in held:
            with contextlib.suppress(OSError):
                client.send(command[position % len(command):][:1])
        position += 1


def test_slowloris_from_many_addresses_leaves_the_local_probe_served(spool_dir: Path) -> None:
    """60 connections from ten 127.0.0.x addresses (none of them exempt), one byte every
    2.5 s, fill every slot untrusted clients may have; meanwhile a new untrusted client
    gets 421, and a probe from 127.0.0.1 is greeted at once and its message stored."""
    sources = [f"127.0.0.{n}" for n in range(2, 12)]
    with IntakeThread(spool_dir, "--max-connections", "40", "--reserved-connections", "5",
                      "--max-connections-per-client", "6", "--exempt-networks", "127.0.0.1",
                      "--idle-timeout", "30") as intake:
        stop = threading.Event()
        held: list[RawClient] = []
        refused: list[str] = []
        attack = threading.Thread(target=slowloris, args=(intake.port, sources, 6, stop, held,
                                                          refused, 2.5))
        attack.start()
        try:
            deadline = time.monotonic() + 20
            while len(held) + len(refused) < 60 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(held) == 35 and len(refused) == 25
            assert all(r.startswith("421 4.7.0 Too many connections") for r in refused)
            time.sleep(3)  # the attack trickles: every connection has sent a byte
            assert RawClient(intake.port, source="127.0.0.12").greeting.startswith("421")
            started = time.monotonic()
            probe = RawClient(intake.port)
            greeted = time.monotonic() - started
            assert probe.greeting.startswith("220") and greeted < 1.0
            probe.start_data()
            assert probe.command(b"Subject: probe\r\n\r\nstill served\r\n.")[:3] == "250"
            probe.command(b"QUIT")
        finally:
            stop.set()
            attack.join(10)
            for client in held:
                client.close()
    ((envelope, content),) = accepted(spool_dir)
    assert envelope.client == "127.0.0.1" and b"still served" in content


def test_limit_settings_are_checked_and_defaulted(spool_dir: Path) -> None:
    """reserved-connections defaults to a tenth of max-connections and must stay below it;
    exempt-networks takes CIDRs (and 'none'), refuses a name; durations take suffixes."""
    base = ["--spool-dir", str(spool_dir), "--domain", "intake.test"]
    config, _, _ = prepare([*base, "--max-connections", "50", "--session-timeout", "15m",
                            "--exempt-networks", "none", "--min-data-rate", "1K"])
    assert config.reserved_connections == 5 and config.exempt_networks == ()
    assert config.session_timeout == 900 and config.min_data_rate == 1024
    default, _, _ = prepare(base)
    assert default.reserved_connections == 20 and default.auth_failure_limit == 10
    assert in_networks("127.0.0.9", default.exempt_networks)
    with pytest.raises(ConfigError, match="reserved-connections"):
        prepare([*base, "--max-connections", "10", "--reserved-connections", "10"])
    with pytest.raises(ConfigError, match="exempt-networks"):
        prepare([*base, "--exempt-networks", "localhost"])
