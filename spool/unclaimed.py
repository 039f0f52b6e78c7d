"""State changes of messages nobody claims: the tools' renames and removals, and reading
an envelope in any state.

`unfail` (relay-resubmit) and `unhold` (relay-queue release) are one rename each back to
`.envelope`; `remove_message` and `archive_failed` (relay-notify, relay-queue) take a
message out of the spool, envelope first; `read_envelope` parses an envelope without a
claim, through `spool.files` (a regular file with one link, at most `MAX_ENVELOPE_BYTES`).
Never appends to an envelope and never reads a content file: a claim (`spool.claims`) does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from spool.envelope import MAX_ENVELOPE_BYTES, Envelope, EnvelopeError, parse_envelope
from spool.files import read_regular
from spool.names import State
from spool.store import Spool, fsync_directory


def unfail(spool: Spool, message_id: str) -> bool:
    """`.envelope.bad` back to `.envelope` (resubmit); False if it was not there."""
    return _back_to_ready(spool, message_id, State.BAD)


def unhold(spool: Spool, message_id: str) -> bool:
    """`.envelope.held` back to `.envelope` (relay-queue release); False if it was not there.

    The mtime (the due time) is what it was when the message was held.
    """
    return _back_to_ready(spool, message_id, State.HELD)


def _back_to_ready(spool: Spool, message_id: str, state: State) -> bool:
    """One rename of the envelope from *state* to ready; False if it was not in *state*."""
    try:
        os.rename(spool.envelope_path(message_id, state),
                  spool.envelope_path(message_id, State.READY))
    except FileNotFoundError:
        return False
    return True


def read_envelope(spool: Spool, message_id: str, state: State) -> Envelope:
    """Parse an envelope in any state without claiming it."""
    path = spool.envelope_file(message_id, state)
    data = read_regular(path, MAX_ENVELOPE_BYTES + 1)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"larger than {MAX_ENVELOPE_BYTES} bytes: no envelope", path=path)
    return parse_envelope(data, path=path)


def remove_message(spool: Spool, message_id: str, state: State) -> bool:
    """Remove a message in *state* (envelope first, then content) and sync the directory.

    False, and the content left alone, when the envelope was no longer in *state*: the
    message moved on (resubmitted, committed) and its content belongs to that state now.
    """
    try:
        os.unlink(spool.envelope_path(message_id, state))
    except FileNotFoundError:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(spool.content_path(message_id))
    fsync_directory(spool.path)
    return True


def archive_failed(spool: Spool, message_id: str, folder_name: str = "failed") -> bool:
    """Move a `.envelope.bad` and its content into a subfolder of the spool (kept for a person).

    Both files are hard-linked into the folder first and only then removed from the spool,
    so a crash at any step leaves the message in the spool. False if the `.bad` was gone.
    Raises OSError (FileExistsError for a different file of the same name in the folder).
    """
    folder = spool.path / folder_name
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory (or a symlink)", str(folder))
    bad = spool.envelope_path(message_id, State.BAD)
    content = spool.content_path(message_id)
    if not _link_into(bad, folder / bad.name):
        return False
    if _plain_file(content):  # a FIFO, a link or a device at its name is no message's content
        _link_into(content, folder / content.name)
    fsync_directory(folder)
    return remove_message(spool, message_id, State.BAD)


def _plain_file(path: Path) -> bool:
    """True for a regular file with one link (only hard-linked elsewhere, never read)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def _link_into(source: Path, target: Path) -> bool:
    """Hard-link *source* to *target* (an earlier half-done link of the same file is fine)."""
    try:
        os.link(source, target, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except FileExistsError:
        if not os.path.samefile(source, target):
            raise
    return True


__all__ = ["archive_failed", "read_envelope", "remove_message", "unfail", "unhold"]
