"""State changes: claim, defer (with backoff), give back, fail, close, unfail, remove,
recover_busy, races; reading the content through the claim.

Real spool directories and real child processes: a claim held by a process that is then
killed with SIGKILL, and two processes racing for the same 1000 messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spool import (
    Envelope,
    HostileFile,
    Spool,
    State,
    claim,
    parse_envelope,
    read_envelope,
    recover_busy,
    remove_message,
    scan_due,
    unfail,
)
from spool.claims import DEFERRAL_KEY
from spool.envelope import trailer_fields

ENVELOPE = Envelope(sender="a@example.com", to_remote=("b@example.net",))


def _state_of(spool: Spool, message_id: str) -> list[State]:
    return [state for state in State if spool.envelope_path(message_id, state).exists()]


def test_claim_moves_to_busy_and_a_second_claim_fails(spool: Spool) -> None:
    """claim renames .envelope to .envelope.busy; a second claim of the same id gets None."""
    message_id = spool.store(b"body\r\n", ENVELOPE)
    held = claim(spool, message_id)
    assert held is not None
    assert _state_of(spool, message_id) == [State.BUSY]
    assert held.read_envelope() == ENVELOPE
    assert claim(spool, message_id) is None
    assert claim(spool, "no-such-message") is None
    held.give_back()
    assert _state_of(spool, message_id) == [State.READY]


def test_close_closes_without_renaming_and_the_recovery_puts_it_back(spool: Spool) -> None:
    """close() only drops the descriptors and the lock: the `.busy` stays (renamed by no
    one) until recover_busy, which now finds its lock free, puts it back."""
    message_id = spool.store(b"body\r\n", ENVELOPE)
    held = claim(spool, message_id)
    assert held is not None
    assert recover_busy(spool, message_id) is False  # locked: a live claim
    held.close()
    assert not held.held
    assert _state_of(spool, message_id) == [State.BUSY]
    assert recover_busy(spool, message_id) is True
    assert scan_due(spool).due == [message_id]


def test_content_is_read_whole_or_in_slices_through_the_claim(spool: Spool) -> None:
    """content_slices gives the stored bytes (slices of at most the size
    asked, the last one shorter), the same after the name was swapped for other bytes."""
    content = bytes(range(256)) * 4099  # 1,049,344 bytes: not a multiple of the slice
    message_id = spool.store(content, ENVELOPE)
    held = claim(spool, message_id)
    assert held is not None
    assert held.content_size() == len(content)
    slices = list(held.content_slices(65536))
    assert all(len(piece) == 65536 for piece in slices[:-1]) and 0 < len(slices[-1]) <= 65536
    assert b"".join(slices) == content
    swapped = spool.path / "swapped"
    swapped.write_bytes(b"not the message\r\n")
    os.rename(swapped, spool.content_path(message_id))  # the checked descriptor is kept
    assert b"".join(held.content_slices()) == content
    assert b"".join(held.content_slices(1 << 20)) == content
    held.give_back()


def test_after_a_filter_a_replaced_or_edited_content_is_read_anew(spool: Spool,
                                                                   tmp_path: Path) -> None:
    """follow_filter_changes: a content a filter replaced by rename is opened afresh, one it
    rewrote in place is read as it is now, one it hard-linked elsewhere is refused."""
    message_id = spool.store(b"original\r\n", ENVELOPE)
    held = claim(spool, message_id)
    assert held is not None
    assert b"".join(held.content_slices()) == b"original\r\n"
    replacement = spool.path / "filtered"
    replacement.write_bytes(b"replaced by the filter\r\n")
    os.rename(replacement, spool.content_path(message_id))
    held.follow_filter_changes()
    assert b"".join(held.content_slices()) == b"replaced by the filter\r\n"
    spool.content_path(message_id).write_bytes(b"edited\r\n")  # in place: same inode
    held.follow_filter_changes()
    assert b"".join(held.content_slices()) == b"edited\r\n" and held.content_size() == 8
    os.link(spool.content_path(message_id), tmp_path / "elsewhere")
    with pytest.raises(HostileFile, match="a hard link"):
        held.follow_filter_changes()
    held.give_back()


def test_split_off_copies_the_content_with_its_mtime(spool: Spool) -> None:
    """split_off stores a new waiting message with this content, its mtime kept."""
    message_id = spool.store(b"body\r\n" * 1000, ENVELOPE)
    old = time.time() - 3600
    os.utime(spool.content_path(message_id), (old, old))
    held = claim(spool, message_id)
    assert held is not None
    other = Envelope(sender="a@example.com", to_remote=("c@example.org",))
    copy_id = held.split_off(other)
    held.give_back()
    assert spool.content_path(copy_id).read_bytes() == b"body\r\n" * 1000
    assert os.stat(spool.content_path(copy_id)).st_mtime == pytest.approx(old, abs=0.01)
    assert read_envelope(spool, copy_id, State.READY) == other


def test_defer_hides_it_from_scan_until_not_before(spool: Spool) -> None:
    """defer(reason, t) keeps the message out of scan_due until t (its mtime)."""
    message_id = spool.store(b"body\r\n", ENVELOPE)
    held = claim(spool, message_id)
    assert held is not None
    later = time.time() + 600
    held.defer("451 try again", later)
    assert _state_of(spool, message_id) == [State.READY]
    path = spool.envelope_path(message_id, State.READY)
    assert os.stat(path).st_mtime == pytest.approx(later, abs=0.01)
    now_scan = scan_due(spool)
    assert message_id not in now_scan.due
    assert now_scan.next_due == pytest.approx(later, abs=0.01)
    assert scan_due(spool, now=later + 1).due == [message_id]
    envelope = parse_envelope(path.read_bytes())
    (key, value), = [field for field in _trailer(envelope)]
    assert key == DEFERRAL_KEY and value.endswith(" 451 try again")
    assert int(value.split()[0]) == pytest.approx(time.time(), abs=60)


def _trailer(envelope: Envelope) -> list[tuple[str, str]]:
    return trailer_fields(envelope.trailer)


def test_give_back_is_due_at_once(spool: Spool) -> None:
    """give_back puts the message back as due, with no line appended."""
    message_id = spool.store(b"body\r\n", ENVELOPE)
    held = claim(spool, message_id)
    assert held is not None
    held.give_back()
    assert scan_due(spool).due == [message_id]
    assert read_envelope(spool, message_id, State.READY) == ENVELOPE


def test_fail_appends_reason_and_moves_to_bad(spool: Spool) -> None:
    """fail appends Reason/ReasonCode after End (each failure again) and moves to .bad."""
    message_id = spool.store(b"body\r\n", ENVELOPE)
    held = claim(spool, message_id)
    assert held is not None
    held.fail("550 5.1.1 unknown\r\nuser", 550)
    assert _state_of(spool, message_id) == [State.BAD]
    data = spool.envelope_path(message_id, State.BAD).read_bytes()
    assert data.endswith(
        b"X-MailRelay-End: 1\r\nX-MailRelay-Reason: 550 5.1.1 unknown user\r\n"
        b"X-MailRelay-ReasonCode: 550\r\n"
    )
    assert scan_due(spool).due == []
    assert unfail(spool, message_id) is True
    assert unfail(spool, message_id) is False
    again = claim(spool, message_id)
    assert again is not None
    again.fail("connection refused", None)
    failed = read_envelope(spool, message_id, State.BAD)
    assert failed.reasons == ["550 5.1.1 unknown user", "connection refused"]
    assert failed.reason_codes == ["550", ""]
    assert failed.sender == ENVELOPE.sender


def test_reasons_after_a_hand_written_envelope_without_final_line_break(spool: Spool) -> None:
    """An envelope dropped in by hand that ends without CRLF: the Reason lines (and a
    deferral's line) start a line of their own, and the file still parses."""
    message_id = spool.store(b"body\r\n", ENVELOPE)
    ready = spool.envelope_path(message_id, State.READY)
    ready.write_bytes(ready.read_bytes().removesuffix(b"\r\n"))
    held = claim(spool, message_id)
    assert held is not None
    held.defer("451 try later", time.time())
    again = claim(spool, message_id)
    assert again is not None
    again.fail("550 no such user", 550)
    data = spool.envelope_path(message_id, State.BAD).read_bytes()
    assert b"X-MailRelay-End: 1\r\nX-Relay-Deferred: " in data
    failed = read_envelope(spool, message_id, State.BAD)
    assert failed.reasons == ["550 no such user"] and failed.reason_codes == ["550"]


def test_remove_deletes_envelope_and_content(spool: Spool) -> None:
    """A claimed message that is done is removed entirely, envelope and content."""
    message_id = spool.store(b"body\r\n", ENVELOPE)
    with claim(spool, message_id) as held:  # type: ignore[union-attr]
        held.remove()
    assert os.listdir(spool.path) == []


def test_remove_message_in_any_state(spool: Spool) -> None:
    """remove_message removes a .bad message and its content."""
    message_id = spool.store(b"body\r\n", ENVELOPE)
    held = claim(spool, message_id)
    assert held is not None
    held.fail("no", 550)
    remove_message(spool, message_id, State.BAD)
    assert os.listdir(spool.path) == []


_CHILD_HOLD = """
import sys, time
from spool import Spool, claim
held = claim(Spool(sys.argv[1]), sys.argv[2])
print("claimed" if held else "none", flush=True)
time.sleep(60)
"""


def test_recover_busy_returns_a_dead_workers_claim_only(spool: Spool) -> None:
    """recover_busy leaves a live worker's .busy alone and returns one whose holder was killed."""
    message_id = spool.store(b"body\r\n", ENVELOPE)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_HOLD, str(spool.path), message_id],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "claimed"
        assert recover_busy(spool, message_id) is False
        assert _state_of(spool, message_id) == [State.BUSY]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    assert recover_busy(spool, message_id) is True
    assert _state_of(spool, message_id) == [State.READY]
    assert recover_busy(spool, message_id) is False
    assert scan_due(spool).due == [message_id]


_CHILD_RACE = """
import os, sys, time
from spool import Spool, claim, scan_due
spool = Spool(sys.argv[1])
claimed = []
while not os.path.exists(sys.argv[2]):  # start together, so that they really race
    time.sleep(0.001)
while True:
    due = scan_due(spool).due
    if not due:
        break
    for message_id in due:
        held = claim(spool, message_id)
        if held is not None:
            claimed.append(message_id)
            held.remove()
print("\\n".join(claimed))
"""


def test_two_processes_racing_claim_each_message_exactly_once(spool: Spool) -> None:
    """Two processes claiming the same 1000 messages: each is claimed once, none is lost."""
    pending = []
    for number in range(1000):
        writer = spool.writer()
        writer.write(b"body %d\r\n" % number)
        pending.append(writer.finish(ENVELOPE, sync=False))
    assert spool.commit(pending) == [None] * 1000
    everything = {message.message_id for message in pending}
    go = spool.path.parent / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD_RACE, str(spool.path), str(go)],
            stdout=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.3)
    go.write_bytes(b"")
    outputs = [worker.communicate(timeout=120)[0].split() for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    first, second = (set(output) for output in outputs)
    assert sum(len(output) for output in outputs) == 1000  # nobody claimed one twice
    assert first | second == everything
    assert not first & second
    assert os.listdir(spool.path) == []


def test_claim_state_files_do_not_leak_descriptors(spool: Spool) -> None:
    """Claim, give back, fail and remove all close the claim's descriptors (the flock goes),
    the content's too once it was read."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        message_id = spool.store(b"body\r\n", ENVELOPE)
        held = claim(spool, message_id)
        assert held is not None
        assert b"".join(held.content_slices()) == b"body\r\n"
        held.give_back()
        held = claim(spool, message_id)
        assert held is not None
        held.open_content()
        held.fail("x", None)
        unfail(spool, message_id)
        held = claim(spool, message_id)
        assert held is not None
        held.open_content()
        held.hand_off().remove()
        assert not held.held
    assert len(os.listdir("/proc/self/fd")) == before
