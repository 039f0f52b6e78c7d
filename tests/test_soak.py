"""The chaos soak (`make soak`, not part of `make test`): nothing acknowledged is ever lost.

10,000 messages are offered at a steady rate to relay running under the shipped
supervisord.conf, while a chaos loop SIGKILLs intake or deliver every 20-60 s (supervisord
restarts them) and the smarthost answers 10% of messages with 4xx and hangs up on 1%.
At the end the ledger is printed and checked: every message a client saw 250 for was
delivered, duplicates are counted (they may only come from kills), the spool is empty with
no .busy or .new left, and the programs' memory stayed flat.

Size and pace can be changed with SOAK_MESSAGES, SOAK_RATE (messages a second) and
SOAK_KILL_MIN / SOAK_KILL_MAX (seconds between kills).
"""

from __future__ import annotations

import os
import random
import signal
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from support.sink import free_port
from support.spool import spool_files
from support.system import System, wait_until

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

MESSAGES = int(os.environ.get("SOAK_MESSAGES", "10000"))
RATE = float(os.environ.get("SOAK_RATE", "60"))
KILL_MIN = float(os.environ.get("SOAK_KILL_MIN", "20"))
KILL_MAX = float(os.environ.get("SOAK_KILL_MAX", "60"))
SENDERS = 4


class FlakySmarthost:
    """An aiosmtpd smarthost that answers 10% of DATA with 451 and hangs up on 1%."""

    def __init__(self, seed: int = 7) -> None:
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.deferred = 0
        self.hangups = 0
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port(),
                                     server_hostname="smarthost.test", decode_data=False)

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        roll = self.random.random()
        if roll < 0.01:
            with self.lock:
                self.hangups += 1
            assert server.transport is not None
            server.transport.close()
            return "421 gone"
        if roll < 0.11:
            with self.lock:
                self.deferred += 1
            return "451 4.3.0 try again later"
        token = _token(bytes(envelope.content))
        with self.lock:
            self.received[token] += 1
        return "250 2.0.0 queued"


def _token(data: bytes) -> str:
    start = data.index(b"X-Soak-Token: ") + len(b"X-Soak-Token: ")
    return data[start : data.index(b"\r\n", start)].decode()


@dataclass
class Ledger:
    """What the clients saw, and what the chaos loop did."""

    acknowledged: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    kills: list[tuple[float, str]] = field(default_factory=list)
    rss_kib: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _offer(system: System, ledger: Ledger, numbers: range, interval: float) -> None:
    """Send each message once; a failure is recorded, and the next message tries anew."""
    client: smtplib.SMTP | None = None
    next_time = time.monotonic()
    for number in numbers:
        next_time += interval
        delay = next_time - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        token = f"soak-{number}"
        message = (f"From: soak@example.org\r\nTo: rcpt@example.com\r\nSubject: soak {number}"
                   f"\r\nX-Soak-Token: {token}\r\n\r\n" + "payload line\r\n" * 40).encode()
        try:
            if client is None:
                client = smtplib.SMTP("127.0.0.1", system.port, timeout=30)
            client.sendmail("soak@example.org", ["rcpt@example.com"], message)
        except (OSError, smtplib.SMTPException):
            with ledger.lock:
                ledger.refused.add(token)
            if client is not None:
                try:
                    client.close()
                finally:
                    client = None
            continue
        with ledger.lock:
            ledger.acknowledged.add(token)
    if client is not None:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def _pid(system: System, name: str) -> int | None:
    output = system.ctl("pid", name).stdout.strip()
    return int(output) if output.isdigit() and output != "0" else None


def _rss_kib(pid: int) -> int | None:
    """The resident memory of *pid* and its children (intake's storage process) together."""
    try:
        with open(f"/proc/{pid}/status") as status:
            rss = next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")),
                       None)
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            child_pids = [int(word) for word in children.read().split()]
    except OSError:
        return None
    if rss is None:
        return None
    return rss + sum(_rss_kib(child) or 0 for child in child_pids)


def _chaos(system: System, ledger: Ledger, stop: threading.Event) -> None:
    chooser = random.Random(11)
    while not stop.wait(chooser.uniform(KILL_MIN, KILL_MAX)):
        victim = chooser.choice(["relay:intake", "relay:deliver"])
        pid = _pid(system, victim)
        if pid is None:
            continue
        os.kill(pid, signal.SIGKILL)
        ledger.kills.append((time.monotonic(), victim))


def _sample_rss(system: System, ledger: Ledger, stop: threading.Event) -> None:
    while not stop.wait(5):
        for name in ("relay:intake", "relay:deliver"):
            pid = _pid(system, name)
            rss = _rss_kib(pid) if pid else None
            if rss:
                ledger.rss_kib.setdefault(name, []).append(rss)


def test_soak_nothing_acknowledged_is_lost() -> None:
    """Kills and a flaky smarthost cost retries and a few duplicates, never a message."""
    smarthost = FlakySmarthost()
    smarthost.controller.start()
    # relay-deliver's --poll, --retry-first and --retry-max (see `relay-deliver --help`).
    system = System(f"127.0.0.1:{smarthost.controller.port}", RELAY_POLL="5",
                    RELAY_RETRY_FIRST="1", RELAY_RETRY_MAX="4")
    ledger = Ledger()
    stop = threading.Event()
    started = time.monotonic()
    try:
        system.start()
        helpers = [threading.Thread(target=_chaos, args=(system, ledger, stop), daemon=True),
                   threading.Thread(target=_sample_rss, args=(system, ledger, stop), daemon=True)]
        for thread in helpers:
            thread.start()
        per_sender = MESSAGES // SENDERS
        senders = [
            threading.Thread(target=_offer, args=(
                system, ledger, range(i * per_sender, (i + 1) * per_sender), SENDERS / RATE))
            for i in range(SENDERS)
        ]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        offered_for = time.monotonic() - started
        stop.set()
        for thread in helpers:
            thread.join()
        system.wait_running(["relay:intake", "relay:deliver"], timeout=60)

        def drained() -> bool:
            with smarthost.lock:
                delivered = set(smarthost.received)
            return ledger.acknowledged <= delivered and not any(
                name.endswith((".envelope", ".busy", ".new")) for name in spool_files(system.spool)
            )

        assert wait_until(drained, timeout=300, interval=1), system.logs()
        leftovers = spool_files(system.spool)
        with smarthost.lock:
            received = Counter(smarthost.received)
        lost = ledger.acknowledged - set(received)
        duplicates = {token: n - 1 for token, n in received.items() if n > 1}
        unacked_delivered = set(received) & ledger.refused
        print("\n=== soak ledger ===")
        print(f"offered             {MESSAGES} at {RATE:g}/s over {offered_for:.0f}s")
        print(f"acknowledged (250)  {len(ledger.acknowledged)}")
        print(f"refused/cut off     {len(ledger.refused)} (client saw no 250)")
        print(f"delivered (unique)  {len(received)}")
        print(f"lost                {len(lost)}")
        copies = sum(duplicates.values())
        print(f"duplicates          {copies} extra copies of {len(duplicates)} messages")
        print(f"delivered w/o 250   {len(unacked_delivered)} (killed between commit and reply)")
        print(f"kills               {Counter(v for _t, v in ledger.kills)}")
        print(f"smarthost 451s      {smarthost.deferred}, hang-ups {smarthost.hangups}")
        for name, samples in ledger.rss_kib.items():
            print(f"RSS {name:14s} KiB first {samples[0]} max {max(samples)} last {samples[-1]}")
        print(f"spool at the end    {leftovers}")
        assert not lost, sorted(lost)[:20]
        assert not [n for n in leftovers if n.endswith((".busy", ".new", ".envelope"))]
        # A duplicate needs deliver to die between the smarthost's 250 and the unlink:
        # at most the messages in flight at each deliver kill (concurrency 4).
        deliver_kills = sum(1 for _t, v in ledger.kills if v == "relay:deliver")
        assert sum(duplicates.values()) <= 4 * deliver_kills + smarthost.hangups
        # Delivered without a 250 needs intake to die between its commit and its reply: at
        # most one message per open session (one per sender) at each intake kill.
        intake_kills = sum(1 for _t, v in ledger.kills if v == "relay:intake")
        assert len(unacked_delivered) <= SENDERS * intake_kills
        for samples in ledger.rss_kib.values():
            assert max(samples) < 150 * 1024
    finally:
        stop.set()
        system.stop()
        smarthost.controller.stop()
