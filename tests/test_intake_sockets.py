"""intake.sockets on real sockets: the listen backlog reaches listen(), and the kernel steers
connections to the worker sockets by client network (or at random for spread networks).

Connections are made from several loopback addresses (all of 127.0.0.0/8 is this host's)
and accepted straight from each worker's socket; the backlog is read back with `ss`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Sequence

import pytest

from intake.sockets import bind_listeners, default_backlog


def accepted_per_worker(spread: Sequence[str], sources: Sequence[str], count: int = 40,
                        interface: str = "127.0.0.1") -> list[int]:
    """Connect *count* times (cycling through *sources*); how many each worker's socket got."""
    groups, steered = bind_listeners([interface], 0, 128, 2, spread)
    assert steered
    port = groups[0][0].getsockname()[1]
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    clients = []
    try:
        for number in range(count):
            client = socket.socket(family)
            clients.append(client)
            client.bind((sources[number % len(sources)], 0))
            client.connect((interface, port))
        counts = []
        for sockets in groups:
            got = 0
            while True:
                try:
                    connection, _ = sockets[0].accept()
                except BlockingIOError:
                    break
                connection.close()
                got += 1
            counts.append(got)
        return counts
    finally:
        for client in clients:
            client.close()
        for sockets in groups:
            sockets[0].close()


def test_one_network_goes_to_one_worker() -> None:
    """Without spreading, all of a /24's connections (127.0.0.1 and .2) land on one worker."""
    counts = accepted_per_worker([], ["127.0.0.1", "127.0.0.2"])
    assert sorted(counts) == [0, 40]


def test_different_networks_are_shared_out() -> None:
    """Four /24s: two for each of the two workers (the /24 modulo the worker count)."""
    assert accepted_per_worker([], ["127.0.0.1", "127.0.1.1", "127.0.2.1", "127.0.3.1"]) == [
        20, 20]


def test_spread_networks_go_to_any_worker() -> None:
    """A spread network's connections (loopback here) reach both workers."""
    counts = accepted_per_worker(["127.0.0.0/8"], ["127.0.0.1"])
    assert sum(counts) == 40 and min(counts) > 0


def test_ipv6_loopback_is_steered_unless_spread() -> None:
    """::1: one worker unless a spread network holds it, then both."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert sorted(accepted_per_worker([], ["::1"], interface="::1")) == [0, 40]
    assert min(accepted_per_worker(["::1/128"], ["::1"], interface="::1")) > 0


def test_one_copy_is_a_plain_socket() -> None:
    """With one process no SO_REUSEPORT: a second bind of the same port fails as before."""
    groups, steered = bind_listeners(["127.0.0.1"], 0, 128, 1)
    try:
        assert not steered
        port = groups[0][0].getsockname()[1]
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
            bind_listeners(["127.0.0.1"], port, 128, 2)
    finally:
        groups[0][0].close()


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_backlog_reaches_listen() -> None:
    """The backlog given is the one the kernel uses (ss shows it as Send-Q of a listener)."""
    groups, _ = bind_listeners(["127.0.0.1"], 0, 777, 1)
    try:
        port = groups[0][0].getsockname()[1]
        shown = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                               text=True, check=True).stdout.split()
        assert shown[2] == "777", shown
    finally:
        groups[0][0].close()
    assert default_backlog() == int(open("/proc/sys/net/core/somaxconn").read())
