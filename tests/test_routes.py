"""Routed messages (ForwardToAddress): a connection per destination, reused; a destination
that cannot be reached is remembered for a while, so its other messages are deferred at
once with a reason naming it, and nobody else waits. Real aiosmtpd sinks and a real
listening socket that hangs up on every client.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from support.deliver import Deliver, run_once
from support.sink import Sink

from spool import Envelope, Spool, State, entries, read_envelope

MESSAGE = b"Subject: routed\r\n\r\nbody\r\n"


def routed(spool: Spool, address: str, number: int) -> str:
    return spool.store([MESSAGE + b"%d\r\n" % number],
                       Envelope(sender="a@x.test", to_remote=(f"r{number}@y.test",),
                                forward_to_address=address))


class HangUp:
    """A TCP server on 127.0.0.1 that accepts each connection and closes it at once."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.accepted = 0
        self.address = f"127.0.0.1:{self.socket.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.socket.accept()
            except OSError:
                return
            self.accepted += 1
            client.close()


@pytest.fixture
def hang_up() -> Iterator[HangUp]:
    server = HangUp()
    yield server
    server.socket.close()


def test_each_destination_keeps_its_connection(spool: Spool, sink: Sink) -> None:
    """Messages for two destinations, interleaved: one connection to each, reused."""
    with Sink() as other:
        for number in range(6):
            routed(spool, (sink if number % 2 else other).address, number)
        assert run_once(spool, "127.0.0.1:9", "--concurrency", "1") == 0
        assert len(sink.messages) == 3 and len(other.messages) == 3
        assert len(sink.connections_seen) == 1 and len(other.connections_seen) == 1


def test_unreachable_destination_defers_its_messages_once(spool: Spool, sink: Sink,
                                                          hang_up: HangUp) -> None:
    """Three messages for a destination that hangs up: one connection attempt, all three
    deferred with a reason naming it; the message for another destination is sent."""
    ids = [routed(spool, hang_up.address, number) for number in range(3)]
    spool.store([MESSAGE], Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    assert run_once(spool, sink.address, "--concurrency", "1") == 75
    assert len(sink.messages) == 1
    assert hang_up.accepted == 1
    waiting = {entry.message_id: entry for entry in entries(spool)
               if entry.state is State.READY}
    assert sorted(waiting) == sorted(ids)
    for message_id in ids:
        envelope = read_envelope(spool, message_id, State.READY)
        assert hang_up.address in envelope.trailer


def test_a_flush_tries_a_destination_that_was_down_again(spool: Spool, sink: Sink) -> None:
    """A routed destination that refused a connection is remembered as down; SIGUSR1 (a
    flush) forgets it, so once it listens again its message goes at once, not in an hour."""
    later = Sink()  # its port is chosen now; nothing listens there yet
    deliver = Deliver(spool, sink.address, "--poll", "3600", "--retry-first", "1h")
    try:
        message_id = routed(spool, later.address, 1)
        deadline = time.monotonic() + 15
        while (deliver.log().count("delivery_deferred") < 1
               or not spool.envelope_path(message_id, State.READY).exists()):
            assert time.monotonic() < deadline, deliver.log()
            time.sleep(0.02)
        with later:
            deliver.process.send_signal(signal.SIGUSR1)
            assert [m.rcpt_tos for m in later.wait_for(1)] == [["r1@y.test"]]
        assert deliver.log().count("delivery_deferred") == 1
        assert deliver.stop() == 0
    finally:
        deliver.close()
