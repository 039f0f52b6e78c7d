"""Data safety at deliver: kill -9 after the smarthost's 250 and before cleanup (the message
arrives twice, never zero times), kill -9 in the middle of sending DATA (delivered later,
once), and a smarthost that misbehaves at every stage (docs/architecture.md, section 4).

Also `ScriptedSmarthost`, used by test_abuse*: a raw-socket SMTP server (no SMTP library)
that records the exact bytes of each DATA as they came over the wire and can be told to
answer, stall, hang up or inject lines at any stage, STARTTLS included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from sink import Behaviour, Sink
from system import program_env, spool_files
from test_reliability_intake import DELIVER, deliver_once, fill

from spool import Envelope, Spool, State, entries


@dataclass
class Script:
    """How the scripted smarthost behaves. Replies are raw lines without CRLF.

    *replies* overrides the reply to a verb ("EHLO", "MAIL", "RCPT", "DATA", "DOT" for the
    reply after the final dot, "STARTTLS"); *hangup_at* closes the connection instead of
    answering that verb ("GREETING" right after connecting); *delay_at* sleeps before
    answering; *stall_in_data* stops reading after that many bytes of DATA;
    *starttls_extra* is sent in the same packet as the 220 to STARTTLS (response injection);
    *ehlo_extra* adds EHLO lines (AUTH, say).
    """

    greeting: bytes = b"220 smarthost.test ESMTP scripted"
    replies: dict[str, bytes] = field(default_factory=dict)
    hangup_at: str | None = None
    delay_at: dict[str, float] = field(default_factory=dict)
    stall_in_data: int | None = None
    starttls_extra: bytes = b""
    ehlo_extra: tuple[bytes, ...] = ()  # more EHLO lines, e.g. b"250-AUTH PLAIN LOGIN"


class ScriptedSmarthost:
    """A threaded raw-socket SMTP server on 127.0.0.1; `data` holds each DATA's wire bytes
    (dot-stuffed, up to and including the CRLF before the final dot) that got a 250."""

    def __init__(self, script: Script | None = None,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.script = script or Script()
        self.tls_context = tls_context
        self.data: list[bytes] = []
        self.attempts = 0  # DATA transfers that ended with the final dot
        self.commands: list[bytes] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._connections: list[socket.socket] = []

    def __enter__(self) -> ScriptedSmarthost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.listener.close()
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(5)

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _peer = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self._connections.append(conn)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        try:
            _Session(self, conn).run()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()


class _Session:
    def __init__(self, server: ScriptedSmarthost, conn: socket.socket) -> None:
        self.server = server
        self.script = server.script
        self.conn: socket.socket = conn
        self.buffer = b""
        self.tls = False

    def send(self, *lines: bytes) -> None:
        self.conn.sendall(b"".join(line + b"\r\n" for line in lines))

    def recv(self) -> bool:
        chunk = self.conn.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if not self.recv():
                return None
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def answer(self, verb: str, default: bytes) -> bool:
        """Reply to *verb* as scripted; False when the script hangs up here."""
        if self.script.hangup_at == verb:
            self.conn.close()
            return False
        delay = self.script.delay_at.get(verb, 0.0)
        if delay:
            time.sleep(delay)
        self.send(self.script.replies.get(verb, default))
        return True

    def run(self) -> None:
        if not self.answer("GREETING", self.script.greeting):
            return
        while (line := self.line()) is not None:
            with self.server.lock:
                self.server.commands.append(line)
            verb = line.split(b" ", 1)[0].upper().decode("ascii", "replace")
            if verb == "EHLO":
                if self.script.hangup_at == "EHLO":
                    self.conn.close()
                    return
                reply = self.script.replies.get("EHLO")
                if reply is not None:
                    self.send(reply)
                    continue
                lines = [b"250-smarthost.test", b"250-8BITMIME", b"250-SIZE 100000000"]
                if self.server.tls_context is not None and not self.tls:
                    lines.append(b"250-STARTTLS")
                lines.extend(self.script.ehlo_extra)
                self.send(*lines, b"250 HELP")
            elif verb == "STARTTLS" and self.server.tls_context is not None and not self.tls:
                self.conn.sendall(b"220 2.0.0 go ahead\r\n" + self.script.starttls_extra)
                self.buffer = b""
                self.conn = self.server.tls_context.wrap_socket(self.conn, server_side=True)
                self.tls = True
            elif verb == "DATA":
                if not self.answer("DATA", b"354 go ahead"):
                    return
                if not self.read_data():
                    return
            elif verb == "QUIT":
                self.send(b"221 bye")
                return
            elif not self.answer(verb, b"250 OK"):
                return

    def read_data(self) -> bool:
        """Read up to the final dot; record the wire bytes; answer as scripted."""
        stall = self.script.stall_in_data
        while True:
            if self.buffer.startswith(b".\r\n"):
                raw, self.buffer = b"", self.buffer[3:]
                break
            end = self.buffer.find(b"\r\n.\r\n")
            if end >= 0:
                raw, self.buffer = self.buffer[: end + 2], self.buffer[end + 5 :]
                break
            if stall is not None and len(self.buffer) >= stall:
                time.sleep(3600)  # stop reading: the client's writes fill the socket buffers
            if not self.recv():
                return False
        with self.server.lock:
            self.server.attempts += 1
        if not self.answer("DOT", b"250 2.0.0 queued"):
            return False
        if self.script.replies.get("DOT", b"250")[:1] == b"2":
            with self.server.lock:
                self.server.data.append(raw)
        return True


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


@pytest.fixture(scope="module")
def smarthost_tls() -> ssl.SSLContext:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("smarthost.test").configure_cert(context)
    return context


def test_starttls_response_injection_is_not_acted_on(spool: Spool,
                                                     smarthost_tls: ssl.SSLContext) -> None:
    """Lines pipelined after the 220 to STARTTLS are dropped, not read as replies after TLS."""
    injected = (b"250-smarthost.test\r\n250 HELP\r\n" + b"250 2.0.0 injected\r\n" * 3
                + b"554 5.7.1 injected refusal\r\n")
    store(spool, 1)
    with ScriptedSmarthost(Script(starttls_extra=injected), smarthost_tls) as smarthost:
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
