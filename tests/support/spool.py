"""A spool directory as the tests see it: the messages intake accepted, the names of its
message files, its message ids by state, content without relay's Received line, and a disk
filled up.

Reads spool files only through spool's own parser; writes nothing in a spool (`fill`
writes one filler file beside it).
"""

from __future__ import annotations

import os
from pathlib import Path

from spool import Envelope, Spool, State, entries, parse_envelope


def accepted(spool_dir: Path) -> list[tuple[Envelope, bytes]]:
    """Every accepted message (envelope parsed, content bytes), oldest first.

    One whose envelope a running deliver claims or removes between the listing and the
    reading is no longer waiting: left out, not an error (a wait_until asks again); an
    envelope still there without its content is one."""
    found = []
    for path in spool_dir.glob("*.envelope"):
        # mtimes tick coarsely (a few ms): two quick messages can share one, so the
        # sequence number at the end of intake's ids breaks the tie.
        sequence = path.name.removesuffix(".envelope").rsplit(".", 1)[-1]
        content = spool_dir / (path.name.removesuffix(".envelope") + ".content")
        try:
            order = path.stat().st_mtime_ns, int(sequence) if sequence.isdigit() else 0
            message = parse_envelope(path.read_bytes(), path=str(path)), content.read_bytes()
        except FileNotFoundError:
            if os.path.lexists(path):
                raise  # its content is missing: that is no race
            continue
        found.append((order, message))
    return [message for _order, message in sorted(found, key=lambda item: item[0])]


def by_state(spool: Spool) -> dict[State, list[str]]:
    """The message ids in *spool*, by the state of their envelope (states with none left out)."""
    found: dict[State, list[str]] = {}
    for entry in entries(spool):
        if entry.state is not None:
            found.setdefault(entry.state, []).append(entry.message_id)
    return found


def spool_files(spool: Path) -> list[str]:
    """Message files in a spool (hidden trigger/lock files left out), sorted."""
    return sorted(name for name in os.listdir(spool) if not name.startswith("."))


def strip_received(data: bytes) -> bytes:
    """Message bytes without relay's Received line, which must come first (folded lines
    included)."""
    assert data.startswith(b"Received: from "), data[:80]
    end = data.index(b"\r\n") + 2
    while data[end : end + 1] in (b" ", b"\t"):
        end = data.index(b"\r\n", end) + 2
    return data[end:]


def fill(path: Path, leave: int) -> None:
    """Fill *path*'s file system with one file until about *leave* bytes are free."""
    path.unlink(missing_ok=True)
    info = os.statvfs(path.parent)
    free = info.f_bavail * info.f_frsize
    with open(path, "wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))
