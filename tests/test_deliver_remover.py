"""deliver.remover on a real spool directory: claims handed over are removed by its thread,
each lock held until the message is gone; close() waits for the last one; a failure is
logged and counted without stopping the thread (the process-level faults are in
test_reliability_deliver.py)."""

from __future__ import annotations

import os
import threading
from typing import Any

from deliver.remover import Remover
from spool import Envelope, Spool, claim, recover

ENVELOPE = Envelope(sender="a@example.com", to_remote=("b@example.net",))


class Recorder:
    """A logger that keeps what it is given (the remover logs from its own thread)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def error(self, event: str, **fields: Any) -> None:
        with self._lock:
            self.lines.append((event, fields))


def claimed(spool: Spool, count: int) -> list[Any]:
    claims = []
    for number in range(count):
        message_id = spool.store(f"body {number}\r\n".encode(), ENVELOPE)
        held = claim(spool, message_id)
        assert held is not None
        claims.append(held)
    return claims


def test_handed_over_claims_are_removed_by_close(spool: Spool) -> None:
    """Every claim handed over is gone (envelope and content) once close() returns."""
    remover = Remover(Recorder())
    for held in claimed(spool, 50):
        remover.hand_over(held)
    remover.close()
    assert os.listdir(spool.path) == []
    assert remover.removed == 50 and remover.failures == 0


def test_recovery_never_takes_a_claim_waiting_for_removal(spool: Spool) -> None:
    """A recovery running while hundreds of removals are queued puts none of them back:
    each `.busy` keeps its lock until it is gone."""
    remover = Remover(Recorder())
    claims = claimed(spool, 400)
    for held in claims:
        remover.hand_over(held)
    report = recover(spool)  # lists the spool while the remover works through its queue
    remover.close()
    assert report.busy_recovered == []
    assert os.listdir(spool.path) == []
    assert remover.removed == 400


def test_a_failed_removal_is_logged_and_the_next_ones_still_go(spool: Spool) -> None:
    """An envelope gone from under the remover: logged, counted as a failure, not as kept;
    the thread goes on with the next claims and drops the failed claim's lock."""
    log = Recorder()
    remover = Remover(log)
    first, *others = claimed(spool, 5)
    os.unlink(first.envelope_path)  # someone removed it by hand meanwhile
    for held in (first, *others):
        remover.hand_over(held)
    remover.close()
    assert remover.failures == 1 and remover.removed == 4
    assert remover.left_behind == []  # the envelope is gone: nothing waits
    assert [event for event, _fields in log.lines] == ["removal_failed"]
    assert log.lines[0][1]["msg_id"] == first.message_id
    assert not first.held  # closed: no lock is kept for a claim that failed
    assert os.listdir(spool.path) == [f"{first.message_id}.content"]


def test_a_failed_removal_that_keeps_the_envelope_leaves_it_recoverable(spool: Spool) -> None:
    """A removal that cannot unlink the envelope (here: it became a directory entry that
    unlink refuses) counts it as left behind, with its lock dropped for the recovery."""
    log = Recorder()
    remover = Remover(log)
    (held,) = claimed(spool, 1)
    busy = held.envelope_path
    os.rename(busy, busy + ".moved")
    os.mkdir(busy)  # unlink() of a directory fails with EISDIR (or EPERM)
    remover.hand_over(held)
    remover.close()
    assert remover.failures == 1 and remover.left_behind == [held.message_id]
    assert log.lines[0][1]["envelope_kept"] is True
    assert not held.held
    os.rmdir(busy)


def test_a_full_queue_makes_the_caller_remove_its_own(spool: Spool) -> None:
    """With the queue at its bound, hand_over removes the message before it returns (no
    descriptor waits), and the thread is not needed for it."""
    remover = Remover(Recorder(), max_queued=0)
    for held in claimed(spool, 20):
        remover.hand_over(held)
        assert not held.held
        assert not any(n.startswith(held.message_id) for n in os.listdir(spool.path))
    assert [t for t in threading.enumerate() if t.name == "relay-remover"] == []
    assert remover.removed == 20
    remover.close()


def test_close_without_hand_over_and_hand_over_after_close(spool: Spool) -> None:
    """close() with nothing handed over returns at once; a later hand-over starts a new thread."""
    remover = Remover(Recorder())
    remover.close()
    (held,) = claimed(spool, 1)
    remover.hand_over(held)
    remover.close()
    assert os.listdir(spool.path) == []
