"""Cheap scans of the spool directory: what is due, what is debris.

One directory read and one stat per envelope; no envelope is parsed. A waiting message's
due time is its envelope's mtime (deliver sets it into the future on a temporary failure),
so a restarted deliver respects every backoff without reading a file. Reads directory
entries only; `clean_debris` and `recover` change state through `claims`.
`looks_like_a_spool` tells a spool from a directory of other files (`/etc`, a typo).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from spool.claims import recover_busy
from spool.names import TEMP_SUFFIX, State, parse_name
from spool.store import Spool
from spool.unclaimed import remove_message


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
    # When the oldest waiting (or busy) message arrived, as far as the listing tells: the
    # time in an E-MailRelay style id, else an envelope mtime that is not a future due time.
    oldest_arrival: float | None = None


def arrival_in_id(message_id: str) -> float | None:
    """The Unix time in an id like `emailrelay.<pid>.<time>.<seq>`; None for other ids."""
    parts = message_id.split(".")
    if len(parts) == 4 and parts[0] == "emailrelay" and parts[2].isdigit():
        return float(parts[2])
    return None


def scan_due(spool: Spool, now: float | None = None) -> ScanResult:
    """Waiting messages whose due time (mtime) has come, plus the earliest future due time."""
    now = time.time() if now is None else now
    due: list[tuple[float, str]] = []
    result = ScanResult()
    for entry in entries(spool):
        if entry.state is None:
            continue
        result.counts[entry.state] = result.counts.get(entry.state, 0) + 1
        if entry.state is not State.READY and entry.state is not State.BUSY:
            continue
        arrival = arrival_in_id(entry.message_id)
        if arrival is None and entry.mtime <= now:
            arrival = entry.mtime
        if arrival is not None and (result.oldest_arrival is None
                                    or arrival < result.oldest_arrival):
            result.oldest_arrival = arrival
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
    left_alone: list[str] = field(default_factory=list)  # debris that cannot be removed


def _age(path: str | os.PathLike[str], now: float) -> float:
    """Seconds since *path* was modified; 0 (too young to touch) when it is gone."""
    try:
        return now - os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0


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
    # One listing and no stat for the common case: only what may be debris (an envelope
    # that is only `.new`, content without an envelope, a temporary file) is looked at
    # closer. (With 100,000 messages queued this was two listings and 200,000 stats.)
    states: dict[str, set[State]] = {}
    contents: list[str] = []
    temporary: list[str] = []
    with os.scandir(spool.path) as listing:
        for item in listing:
            name = item.name
            if name.endswith(TEMP_SUFFIX) and not name.startswith("."):
                temporary.append(item.path)
                continue
            parsed = parse_name(name)
            if parsed is None:
                continue
            message_id, state = parsed
            if state is None:
                contents.append(message_id)
            else:
                states.setdefault(message_id, set()).add(state)
    for message_id, found in states.items():
        if State.BUSY in found and recover_busy(spool, message_id):
            report.busy_recovered.append(message_id)
        if found != {State.NEW}:
            continue
        if _age(spool.envelope_file(message_id, State.NEW), now) > new_max_age:
            try:
                remove_message(spool, message_id, State.NEW)
            except OSError:  # e.g. a directory planted at the name: never stops the rest
                report.left_alone.append(message_id)
                continue
            report.new_removed.append(message_id)
    for message_id in contents:
        # A content whose envelope was committed after the listing is young: never removed.
        if message_id in states:
            continue
        path = spool.content_file(message_id)
        if _age(path, now) > orphan_max_age:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError:  # a directory named like a content file
                report.left_alone.append(message_id)
                continue
            report.orphans_removed.append(message_id)
    for path_text in temporary:
        if _age(path_text, now) > new_max_age:
            try:
                os.unlink(path_text)
            except FileNotFoundError:
                continue
            except OSError:
                report.left_alone.append(os.path.basename(path_text))
                continue
            report.temp_removed.append(os.path.basename(path_text))
    return report


def looks_like_a_spool(spool: Spool) -> str | None:
    """None for a spool (empty, or with at least one message file); otherwise why not.

    Stops at the first message file, so a big spool costs one directory entry or a few.
    A directory of other files (`/etc`, a Maildir, a typo) is not taken for an empty queue.
    """
    others: list[str] = []
    with os.scandir(spool.path) as listing:
        for item in listing:
            if item.name.startswith(".") or item.name.endswith(".tmp"):
                continue
            if parse_name(item.name) is not None:
                return None
            if not item.is_dir(follow_symlinks=False):
                others.append(item.name)
    if not others:
        return None
    return (f"{spool.path} does not look like a spool directory: no message files, but"
            f" {len(others)} other file{'s' if len(others) != 1 else ''} (e.g."
            f" {sorted(others)[0]!r})")
