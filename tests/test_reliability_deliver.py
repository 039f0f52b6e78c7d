"""Data safety at deliver: kill -9 after the smarthost's 250 and before cleanup (the message
arrives twice, never zero times), kill -9 in the middle of sending DATA (delivered later,
once), and a smarthost that misbehaves at every stage (docs/architecture.md, section 4),
played by support.smarthost's `ScriptedSmarthost`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trustme
from support.programs import DELIVER, deliver_once, program_env
from support.sink import Behaviour, Sink
from support.smarthost import Script, ScriptedSmarthost
from support.spool import fill, spool_files
from support.tls import server_context

from spool import Envelope, Spool, State, entries


def body(number: int, size: int = 0) -> bytes:
    return (f"From: a@example.com\r\nTo: b@example.com\r\nSubject: deliver {number}\r\n\r\n"
            f"body {number}\r\n").encode() + (b"z" * 76 + b"\r\n") * (size // 78)


def store(spool: Spool, number: int, size: int = 0) -> str:
    return spool.store(body(number, size), Envelope(sender="a@example.com",
                                                    to_remote=("b@example.com",)))


def states(spool: Spool) -> dict[State, int]:
    found: dict[State, int] = {}
    for entry in entries(spool):
        if entry.state is not None:
            found[entry.state] = found.get(entry.state, 0) + 1
    return found


def test_kill_9_after_the_smarthosts_250_sends_again_never_zero(spool: Spool,
                                                                sink: Sink) -> None:
    """kill -9 between the smarthost's 250 and the unlink: the next run sends it again."""
    first = store(spool, 1)
    crashed = deliver_once(spool.path, sink.address, "--concurrency", "1",
                           env={"RELAY_TEST_CRASH_AT": "smarthost_accepted"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert [m.data for m in sink.messages] == [body(1)]
    assert spool.envelope_path(first, State.BUSY).exists()  # claimed by the dead worker
    store(spool, 2)
    done = deliver_once(spool.path, sink.address)
    assert done.returncode == 0, done.stderr
    assert "messages_recovered" in done.stderr
    assert sorted(m.data for m in sink.messages) == [body(1), body(1), body(2)]
    assert spool_files(spool.path) == []


def test_kill_9_while_sending_data_delivers_later_exactly_once(spool: Spool,
                                                               sink: Sink) -> None:
    """kill -9 while the content is on the wire (smarthost stopped reading): sent once later."""
    store(spool, 1, size=4_000_000)
    with ScriptedSmarthost(Script(stall_in_data=100_000)) as stalling:
        log_path = spool.path.parent / "deliver.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [DELIVER, "--spool-dir", str(spool.path), "--forward-to", stalling.address,
                 "--data-timeout", "60", "--response-timeout", "60", "--log-format", "json"],
                stdout=subprocess.DEVNULL, stderr=log, env=program_env())
            try:
                deadline = time.monotonic() + 15
                while not any(c.upper() == b"DATA" for c in stalling.commands):
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.02)
                time.sleep(0.3)  # deliver is now blocked writing the content
                assert process.poll() is None
                process.kill()
                process.wait(10)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert stalling.attempts == 0  # the final dot never arrived
    assert states(spool) == {State.BUSY: 1}
    done = deliver_once(spool.path, sink.address)
    assert done.returncode == 0, done.stderr
    assert [m.data for m in sink.messages] == [body(1, size=4_000_000)]
    assert spool_files(spool.path) == []


STAGES = {
    "greeting-421": (Script(greeting=b"421 4.3.2 busy, come back later"), State.READY),
    "greeting-554": (Script(greeting=b"554 5.3.2 no service here"), State.READY),
    "hangup-at-greeting": (Script(hangup_at="GREETING"), State.READY),
    "hangup-at-ehlo": (Script(hangup_at="EHLO"), State.READY),
    "ehlo-502-then-helo": (Script(replies={"EHLO": b"502 5.5.1 EHLO not implemented"}), None),
    "mail-451": (Script(replies={"MAIL": b"451 4.3.0 try later"}), State.READY),
    "mail-553": (Script(replies={"MAIL": b"553 5.1.8 sender refused"}), State.BAD),
    "rcpt-452": (Script(replies={"RCPT": b"452 4.2.2 mailbox full"}), State.READY),
    "rcpt-550": (Script(replies={"RCPT": b"550 5.1.1 no such user"}), State.BAD),
    "hangup-at-rcpt": (Script(hangup_at="RCPT"), State.READY),
    "data-451": (Script(replies={"DATA": b"451 4.3.0 not now"}), State.READY),
    "data-554": (Script(replies={"DATA": b"554 5.3.4 no data today"}), State.BAD),
    "hangup-at-data": (Script(hangup_at="DATA"), State.READY),
    "dot-452": (Script(replies={"DOT": b"452 4.3.1 out of space"}), State.READY),
    "dot-552": (Script(replies={"DOT": b"552 5.3.4 too big"}), State.BAD),
    "hangup-after-dot": (Script(hangup_at="DOT"), State.READY),
    "stall-after-dot": (Script(delay_at={"DOT": 6.0}), State.READY),  # past --data-timeout
    "slow-250-after-dot": (Script(delay_at={"DOT": 2.0}), None),  # within --data-timeout
    "stall-at-mail": (Script(delay_at={"MAIL": 5.0}), State.READY),  # past --response-timeout
}


@pytest.mark.parametrize(("script", "outcome"), list(STAGES.values()), ids=list(STAGES))
def test_smarthost_misbehaving_at_each_stage(spool: Spool, script: Script,
                                             outcome: State | None) -> None:
    """Each stage's 4xx, 5xx, hang-up or stall: sent (None), retried (READY) or .bad (BAD)."""
    store(spool, 1)
    with ScriptedSmarthost(script) as smarthost:
        done = deliver_once(spool.path, smarthost.address, "--response-timeout", "1.5",
                            "--data-timeout", "4")
        sent = list(smarthost.data)
    if outcome is None:
        assert done.returncode == 0, done.stderr
        assert sent == [body(1)]  # once: a slow 250 is not taken for a failure
        assert spool_files(spool.path) == []
    else:
        assert done.returncode == (75 if outcome is State.READY else 0), done.stderr
        assert sent == []
        assert states(spool) == {outcome: 1}


def test_starttls_response_injection_is_not_acted_on(spool: Spool, ca: trustme.CA) -> None:
    """Lines pipelined after the 220 to STARTTLS are dropped, not read as replies after TLS."""
    injected = (b"250-smarthost.test\r\n250 HELP\r\n" + b"250 2.0.0 injected\r\n" * 3
                + b"554 5.7.1 injected refusal\r\n")
    store(spool, 1)
    with ScriptedSmarthost(Script(starttls_extra=injected),
                           server_context(ca, "smarthost.test")) as smarthost:
        done = deliver_once(spool.path, smarthost.address, "--client-tls-required")
        commands = [c.split(b" ")[0].upper() for c in smarthost.commands]
        sent = list(smarthost.data)
    assert done.returncode == 0, done.stderr
    assert sent == [body(1)]
    # After the handshake the client started over with EHLO and waited for each real reply.
    after = commands[commands.index(b"STARTTLS") + 1 :]
    assert after[:4] == [b"EHLO", b"MAIL", b"RCPT", b"DATA"]
    assert "injected" not in done.stderr
    assert spool_files(spool.path) == []


def test_partial_refusal_then_kill_keeps_the_refused_recipients(spool: Spool,
                                                                sink: Sink) -> None:
    """A split after a partial refusal survives a kill before cleanup: nobody is dropped."""
    sink.behaviour.rcpt_replies = {"c@example.com": "450 4.2.1 busy"}
    spool.store(body(3), Envelope(sender="a@example.com",
                                  to_remote=("b@example.com", "c@example.com")))
    crashed = deliver_once(spool.path, sink.address,
                           env={"RELAY_TEST_CRASH_AT": "smarthost_accepted"})
    assert crashed.returncode == -signal.SIGKILL
    sink.behaviour.rcpt_replies = {}
    done = deliver_once(spool.path, sink.address)
    assert done.returncode == 0, done.stderr
    got: dict[str, int] = {}
    for received in sink.messages:
        for rcpt in received.rcpt_tos:
            got[rcpt] = got.get(rcpt, 0) + 1
    assert got.get("b@example.com", 0) in (1, 2) and got.get("c@example.com", 0) >= 1
    assert spool_files(spool.path) == []



def test_full_disk_while_splitting_a_partial_refusal_drops_nobody(small_disk: Path) -> None:
    """No space to split off the refused recipient: the whole message stays queued (a later
    copy to the accepted one is the price), and the refused one gets it once space is back."""
    spool = Spool(small_disk / "spool", check=False)
    spool.path.mkdir(mode=0o700)
    message_id = spool.store(body(5), Envelope(sender="a@example.com",
                                               to_remote=("b@example.com", "c@example.com")))
    fill(small_disk / "filler", leave=0)
    with Sink(Behaviour(rcpt_replies={"c@example.com": "450 4.2.1 busy"})) as sink:
        first = deliver_once(spool.path, sink.address)
        assert first.returncode == 75, first.stderr
        assert [m.rcpt_tos for m in sink.messages] == [["b@example.com"]]
        assert states(spool) == {State.READY: 1}  # kept whole: c is not lost
        (small_disk / "filler").unlink()
        sink.behaviour.rcpt_replies = {}
        path = spool.envelope_path(message_id, State.READY)
        os.utime(path, (time.time(), time.time() - 1))  # due now, not after the backoff
        second = deliver_once(spool.path, sink.address)
        assert second.returncode == 0, second.stderr
        got = sorted(r for m in sink.messages for r in m.rcpt_tos)
    assert got == ["b@example.com", "b@example.com", "c@example.com"]
    assert spool_files(spool.path) == []


BIG = 100_000  # content bytes: big messages keep the remover thread busier


def test_kill_9_with_removals_queued_sends_again_never_zero(spool: Spool, sink: Sink) -> None:
    """kill -9 in the remover thread while the workers go on sending (big messages): every
    message arrives, none more than twice, and the next run leaves the spool empty."""
    numbers = range(40)
    for number in numbers:
        store(spool, number, size=BIG)
    crashed = deliver_once(spool.path, sink.address, env={"RELAY_TEST_CRASH_AT": "remove_claim"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    sent_before = len(sink.messages)
    assert sent_before >= 1
    assert states(spool).get(State.BUSY, 0) >= 1  # handed to the remover, never removed
    # Nothing is lost in between: each message was sent or is still in the spool.
    assert sent_before + sum(states(spool).values()) >= len(numbers)
    done = deliver_once(spool.path, sink.address)
    assert done.returncode == 0, done.stderr
    assert "messages_recovered" in done.stderr
    copies = [sum(1 for m in sink.messages if m.data == body(n, BIG)) for n in numbers]
    assert all(1 <= count <= 2 for count in copies), copies
    assert spool_files(spool.path) == []


@pytest.mark.parametrize("size", [0, BIG], ids=["small", "big"])
def test_failed_removals_are_logged_and_once_exits_75(spool: Spool, sink: Sink,
                                                      size: int) -> None:
    """Removal fails (EIO) after the smarthost's 250: each failure is logged, --once exits 75
    (the mail is still in the spool), and the next run sends it again and empties the spool."""
    for number in range(5):
        store(spool, number, size)
    failing = deliver_once(spool.path, sink.address,
                           env={"RELAY_TEST_FAIL_AT": "remove_claim:EIO"})
    assert failing.returncode == 75, failing.stderr
    assert failing.stderr.count('"removal_failed"') == 5
    assert "Input/output error" in failing.stderr
    sent = sorted(body(n, size) for n in range(5))
    assert sorted(m.data for m in sink.messages) == sent
    assert states(spool) == {State.BUSY: 5}  # kept, with the lock dropped
    done = deliver_once(spool.path, sink.address)
    assert done.returncode == 0, done.stderr
    assert sorted(m.data for m in sink.messages) == sorted(sent * 2)
    assert spool_files(spool.path) == []
