"""Debian's real HAProxy in front of two relay-intake instances sharing only the smarthost.

HAProxy listens on 127.0.0.1 and balances round robin over two relay-intake processes, one
sent the PROXY protocol v1 header (`send-proxy`), the other v2 (`send-proxy-v2`); each
intake has its own spool and its own relay-deliver, and both deliver to one sink. A client
connects from 127.0.0.2: both intakes must take messages, every message must reach the
sink exactly once, and each intake's Received line, envelope and log must name 127.0.0.2,
the real client, not the proxy (127.0.0.1).
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.deliver import Deliver
from support.intake import IntakeProcess
from support.sink import Sink, free_port

from spool import Spool

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(),
                                reason="haproxy is not installed (.ci/run installs it)")


def haproxy_config(port: int, backends: list[tuple[int, str]]) -> str:
    servers = "\n".join(f"    server intake{number} 127.0.0.1:{backend} {option}"
                        for number, (backend, option) in enumerate(backends))
    return f"""global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind 127.0.0.1:{port}
    default_backend intakes
backend intakes
    balance roundrobin
    source 127.0.0.1
{servers}
"""


@pytest.fixture
def haproxy_port(tmp_path: Path) -> Iterator[tuple[int, list[IntakeProcess], list[Spool]]]:
    """HAProxy on a free port in front of two intakes (v1 and v2); their spools."""
    spools, intakes = [], []
    for name in ("a", "b"):
        spool_dir = tmp_path / f"spool-{name}"
        spool_dir.mkdir(mode=0o700)
        spools.append(Spool(spool_dir))
        intakes.append(IntakeProcess(spool_dir, "--proxy-protocol", "--proxy-address",
                                     "127.0.0.1", "--processes", "1"))
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(port, [(intakes[0].port, "send-proxy"),
                                            (intakes[1].port, "send-proxy-v2")]))
    check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5,
                                  source_address=("127.0.0.2", 0)) as probe:
                    probe.noop()
                break
            except OSError:
                assert proxy.poll() is None and time.monotonic() < deadline, "haproxy down"
                time.sleep(0.05)
        yield port, intakes, spools
    finally:
        proxy.terminate()
        proxy.wait(10)
        for intake in intakes:
            intake.close()


def test_two_intakes_behind_haproxy_see_the_real_client(
        haproxy_port: tuple[int, list[IntakeProcess], list[Spool]], sink: Sink) -> None:
    """Round robin over v1 and v2 backends: both store, the sink gets each message once,
    and every Received line, envelope and log names the client (127.0.0.2)."""
    port, intakes, spools = haproxy_port
    delivers = [Deliver(spool, sink.address) for spool in spools]
    try:
        for number in range(20):
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10,
                              source_address=("127.0.0.2", 0)) as client:
                client.sendmail("a@example.org", ["b@example.com"],
                                f"Subject: {number}\r\n\r\nthrough haproxy {number}\r\n")
        received = sink.wait_for(20, timeout=30)
    finally:
        for deliver in delivers:
            deliver.stop()
    subjects = Counter(message.data.split(b"Subject: ")[1].split(b"\r\n")[0]
                       for message in received)
    assert subjects == Counter(str(number).encode() for number in range(20))
    for message in received:
        received_line = message.data.split(b"\r\n")[0]
        assert b"[127.0.0.2]" in received_line and b"127.0.0.1" not in received_line
    for intake in intakes:
        stored = [line for line in intake.log().splitlines() if "message_stored" in line]
        assert stored, "one intake got no message: not balanced over both"
        assert all('"client": "127.0.0.2"' in line for line in stored), stored
