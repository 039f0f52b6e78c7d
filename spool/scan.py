"""Cheap scans of the spool directory: what is due, what is debris.

One directory read and one stat per envelope; no envelope is parsed. A waiting message's
due time is its envelope's mtime (deliver sets it into the future on a temporary failure),
so a restarted deliver respects every backoff without reading a file. Reads directory
entries only; `clean_debris` and `recover` change state through `claims`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from spool.claims import recover_busy, remove_message
from spool.names import TEMP_SUFFIX, State, parse_name
from spool.store import Spool


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One file of the spool: its message id, state (None for content) and mtime."""

    message_id: str
    state: State | None
    mtime: float


def entries(spool: Spool, *, stat_content: bool = False) -> Iterator[SpoolEntry]:
    """Every message file in the spool; content files get mtime 0 unless *stat_content*."""
    with os.scandir(spool.path) as listing:
        for item in listing:
            parsed = parse_name(item.name)
            if parsed is None:
                continue
            message_id, state = parsed
            if state is None and not stat_content:
                yield SpoolEntry(message_id, None, 0.0)
                continue
            try:
                mtime = item.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue  # gone between the listing and the stat
            yield SpoolEntry(message_id, state, mtime)


@dataclass
class ScanResult:
    """What a scan found: ids due now (oldest first), and when the next one falls due."""

    due: list[str] = field(default_factory=list)
    next_due: float | None = None
    counts: dict[State, int] = field(default_factory=dict)


def scan_due(spool: Spool, now: float | None = None) -> ScanResult:
    """Waiting messages whose due time (mtime) has come, plus the earliest future due time."""
    now = time.time() if now is None else now
    due: list[tuple[float, str]] = []
    result = ScanResult()
    for entry in entries(spool):
        if entry.state is None:
            continue
        result.counts[entry.state] = result.counts.get(entry.state, 0) + 1
        if entry.state is not State.READY:
            continue
        if entry.mtime <= now:
            due.append((entry.mtime, entry.message_id))
        elif result.next_due is None or entry.mtime < result.next_due:
            result.next_due = entry.mtime
    due.sort()
    result.due = [message_id for _mtime, message_id in due]
    return result


@dataclass
class RecoveryReport:
    """What `recover` put back or removed."""

    busy_recovered: list[str] = field(default_factory=list)
    new_removed: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    temp_removed: list[str] = field(default_factory=list)


def recover(
    spool: Spool,
    *,
    new_max_age: float = 3 * 3600.0,
    orphan_max_age: float = 24 * 3600.0,
    now: float | None = None,
) -> RecoveryReport:
    """Put back `.busy` files of dead workers; remove old `.new` debris and orphan content.

    A `.new` older than *new_max_age* (longer than any SMTP session can last) is a store
    that never finished. A `.content` with no envelope in any state for *orphan_max_age*
    is a half-dropped or half-removed message.
    """
    now = time.time() if now is None else now
    report = RecoveryReport()
    states: dict[str, set[State]] = {}
    content_mtime: dict[str, float] = {}
    for entry in entries(spool, stat_content=True):
        if entry.state is None:
            content_mtime[entry.message_id] = entry.mtime
        else:
            states.setdefault(entry.message_id, set()).add(entry.state)
    for message_id, found in states.items():
        if State.BUSY in found and recover_busy(spool, message_id):
            report.busy_recovered.append(message_id)
        if found == {State.NEW}:
            path = spool.envelope_path(message_id, State.NEW)
            try:
                age = now - os.lstat(path).st_mtime
            except FileNotFoundError:
                continue
            if age > new_max_age:
                remove_message(spool, message_id, State.NEW)
                report.new_removed.append(message_id)
    for message_id, mtime in content_mtime.items():
        if message_id not in states and now - mtime > orphan_max_age:
            try:
                os.unlink(spool.content_path(message_id))
            except FileNotFoundError:
                continue
            report.orphans_removed.append(message_id)
    with os.scandir(spool.path) as listing:
        for item in listing:
            if item.name.endswith(TEMP_SUFFIX) and not item.name.startswith("."):
                try:
                    if now - item.stat(follow_symlinks=False).st_mtime > new_max_age:
                        os.unlink(item.path)
                        report.temp_removed.append(item.name)
                except FileNotFoundError:
                    continue
    return report
