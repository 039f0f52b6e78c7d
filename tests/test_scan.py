"""Scans and recovery: what is due (by envelope mtime, no parsing), and debris clean-up.

Real spool directories; mtimes are set with os.utime, `now` is passed in, nothing sleeps.
"""

from __future__ import annotations

import os
import time

from spool import Envelope, Spool, State, claim, entries, recover, scan_due
from spool.names import content_name, envelope_name, parse_name

ENVELOPE = Envelope(sender="a@example.com", to_remote=("b@example.net",))


def _store_at(spool: Spool, mtime: float) -> str:
    message_id = spool.store(b"body\r\n", ENVELOPE)
    os.utime(spool.envelope_path(message_id, State.READY), (mtime, mtime))
    return message_id


def test_scan_due_lists_waiting_messages_oldest_first(spool: Spool) -> None:
    """scan_due returns due .envelope ids by due time and the earliest future due time."""
    now = time.time()
    late = _store_at(spool, now - 10)
    early = _store_at(spool, now - 100)
    future = _store_at(spool, now + 300)
    _store_at(spool, now + 900)
    result = scan_due(spool, now=now)
    assert result.due == [early, late]
    assert result.next_due == os.stat(spool.envelope_path(future, State.READY)).st_mtime
    assert result.counts == {State.READY: 4}


def test_scan_due_counts_other_states_but_lists_only_ready(spool: Spool) -> None:
    """.busy, .bad and .new are counted, never listed as due."""
    ready = spool.store(b"x", ENVELOPE)
    busy = claim(spool, spool.store(b"x", ENVELOPE))
    assert busy is not None
    bad = claim(spool, spool.store(b"x", ENVELOPE))
    assert bad is not None
    bad.fail("no", 550)
    writer = spool.writer()
    writer.write(b"x")
    writer.finish(ENVELOPE)
    result = scan_due(spool)
    assert result.due == [ready]
    assert result.counts == {State.READY: 1, State.BUSY: 1, State.BAD: 1, State.NEW: 1}
    busy.close()


def test_scan_does_not_parse_envelopes(spool: Spool) -> None:
    """An unparseable or hand-dropped envelope is listed by name only: the scan never reads it."""
    spool.envelope_path("by-hand", State.READY).write_bytes(b"not an envelope")
    os.chmod(spool.envelope_path("by-hand", State.READY), 0)  # unreadable too
    assert scan_due(spool).due == ["by-hand"]


def test_entries_skip_foreign_and_hidden_files(spool: Spool) -> None:
    """Files that are not message files (dot files, .tmp, other names) are not entries."""
    for name in (".relay-scan-now", ".relay-tools.lock", "x.tmp", "README", ".envelope"):
        (spool.path / name).write_bytes(b"")
    message_id = spool.store(b"x", ENVELOPE)
    found = {(entry.message_id, entry.state) for entry in entries(spool)}
    assert found == {(message_id, None), (message_id, State.READY)}
    assert all(entry.mtime == 0.0 for entry in entries(spool) if entry.state is None)
    assert all(entry.mtime > 0 for entry in entries(spool, stat_content=True))


def test_parse_name_maps_suffixes_to_states() -> None:
    """File names map to (id, state); the longest suffix wins; any base name is accepted."""
    assert parse_name("anything.envelope") == ("anything", State.READY)
    assert parse_name("a.b.envelope.busy") == ("a.b", State.BUSY)
    assert parse_name("m.envelope.bad") == ("m", State.BAD)
    assert parse_name("m.envelope.new") == ("m", State.NEW)
    assert parse_name("m.content") == ("m", None)
    for other in ("m.envelope.old", ".content", ".hidden.envelope", "m.envelope.tmp", "m"):
        assert parse_name(other) is None, other
    assert envelope_name("m", State.BUSY) == "m.envelope.busy"
    assert content_name("m") == "m.content"


def test_recover_returns_stale_busy_and_leaves_good_messages(spool: Spool) -> None:
    """A .busy whose lock is free goes back to .envelope; accepted and .bad messages stay."""
    good = spool.store(b"x", ENVELOPE)
    stale = spool.store(b"x", ENVELOPE)
    os.rename(spool.envelope_path(stale, State.READY), spool.envelope_path(stale, State.BUSY))
    failed = claim(spool, spool.store(b"x", ENVELOPE))
    assert failed is not None
    failed.fail("no", 550)
    live = claim(spool, spool.store(b"x", ENVELOPE))
    assert live is not None
    report = recover(spool, now=time.time() + 30 * 24 * 3600)
    assert report.busy_recovered == [stale]
    assert sorted(scan_due(spool).due) == sorted([good, stale])
    assert spool.envelope_path(failed.message_id, State.BAD).exists()
    assert spool.envelope_path(live.message_id, State.BUSY).exists()  # its lock is held
    assert report.new_removed == [] and report.orphans_removed == []
    live.close()


def test_recover_removes_old_debris_and_keeps_young_debris(spool: Spool) -> None:
    """Old .new (with its content), old orphan content and old .tmp go; young ones stay."""
    now = time.time()
    old = now - 2 * 24 * 3600
    for name in ("old-new", "young-new"):
        spool.content_path(name).write_bytes(b"x")
        spool.envelope_path(name, State.NEW).write_bytes(b"x")
    for name in ("old-orphan", "young-orphan"):
        spool.content_path(name).write_bytes(b"x")
    (spool.path / "old.tmp").write_bytes(b"")
    (spool.path / "young.tmp").write_bytes(b"")
    for path in (
        spool.content_path("old-new"), spool.envelope_path("old-new", State.NEW),
        spool.content_path("old-orphan"), spool.path / "old.tmp",
    ):
        os.utime(path, (old, old))
    report = recover(spool, now=now)
    assert report.new_removed == ["old-new"]
    assert report.orphans_removed == ["old-orphan"]
    assert report.temp_removed == ["old.tmp"]
    assert sorted(os.listdir(spool.path)) == sorted([
        "young-new.content", "young-new.envelope.new", "young-orphan.content", "young.tmp",
    ])


def test_recover_keeps_content_of_any_envelope_state(spool: Spool) -> None:
    """Content with an envelope in any state is never an orphan, however old."""
    ready = spool.store(b"x", ENVELOPE)
    bad = claim(spool, spool.store(b"x", ENVELOPE))
    assert bad is not None
    bad.fail("no", None)
    before = sorted(os.listdir(spool.path))
    report = recover(spool, now=time.time() + 365 * 24 * 3600)
    assert sorted(os.listdir(spool.path)) == before
    assert report.orphans_removed == [] and ready in scan_due(spool).due
