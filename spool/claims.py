"""State changes of accepted messages: claim, release, fail, unfail, remove, recover.

Every change of state is one rename. A worker claims a message by taking an flock on its
`.envelope` and then renaming it to `.envelope.busy`; the lock (held on the file, so it
follows the rename) is what tells a live claim from one left by a dead worker. Losing a
rename race is normal and answered with None. Appended lines (reasons, relay's own
bookkeeping) go to the end of the envelope, which is never rewritten.

Reads and writes envelope files only; content files are only removed (with their message).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from spool.envelope import Envelope, EnvelopeError, parse_envelope, reason_lines, trailer_line
from spool.names import State
from spool.store import Spool, fsync_directory
from spool.testhooks import checkpoint

_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
DEFERRAL_KEY = "X-Relay-Deferred"
_READ_SIZE = 65536


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclass
class Claim:
    """A message held by this process: its envelope is `.envelope.busy` and flocked."""

    spool: Spool
    message_id: str
    fd: int
    envelope_path: str = field(init=False)  # the `.envelope.busy` file
    content_path: str = field(init=False)

    def __post_init__(self) -> None:
        self.envelope_path = self.spool.envelope_file(self.message_id, State.BUSY)
        self.content_path = self.spool.content_file(self.message_id)

    def read_envelope(self) -> Envelope:
        """Parse the claimed envelope; EnvelopeError names the file, line and problem."""
        chunks: list[bytes] = []
        offset = 0
        while chunk := os.pread(self.fd, _READ_SIZE, offset):
            chunks.append(chunk)
            offset += len(chunk)
            if len(chunk) < _READ_SIZE:  # a short read of a regular file: its end
                break
        return parse_envelope(b"".join(chunks), path=self.envelope_path)

    def _append(self, text: str, *, sync: bool) -> None:
        data = text.encode("utf-8")
        size = os.fstat(self.fd).st_size
        if size and os.pread(self.fd, 1, size - 1) != b"\n":
            data = b"\r\n" + data  # a hand-written envelope without a final line break
        while data:
            data = data[os.write(self.fd, data) :]
        if sync:
            os.fsync(self.fd)

    def _move(self, state: State) -> None:
        os.rename(self.envelope_path, self.spool.envelope_file(self.message_id, state))

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # drops the flock
            self.fd = -1

    def release(self, *, not_before: float | None = None, reason: str | None = None) -> None:
        """Back to `.envelope`. With *not_before*, not due again until then (kept in mtime)."""
        try:
            if reason is not None:
                self._append(trailer_line(DEFERRAL_KEY, f"{int(time.time())} {reason}"), sync=False)
            if not_before is not None:
                os.utime(self.fd, (time.time(), not_before))
            self._move(State.READY)
        finally:
            self._close()

    def fail(self, reason: str, code: int | str | None) -> None:
        """Append Reason and ReasonCode (as E-MailRelay does) and move to `.envelope.bad`."""
        try:
            self._append(reason_lines(reason, code), sync=True)
            os.utime(self.fd)
            self._move(State.BAD)
        finally:
            self._close()

    def remove(self) -> None:
        """The message is done: remove the envelope first, then the content."""
        try:
            checkpoint("remove_claim")  # tests: a crash or a fault with the 250 already in
            os.unlink(self.envelope_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.content_path)
        finally:
            self._close()

    def close(self) -> None:
        """Give up the claim without a decision: back to `.envelope` as it was."""
        if self.fd >= 0:
            try:
                self._move(State.READY)
            finally:
                self._close()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def claim(spool: Spool, message_id: str) -> Claim | None:
    """Claim a waiting message, or None if it is gone or another worker has it."""
    ready = spool.envelope_file(message_id, State.READY)
    try:
        fd = os.open(ready, _OPEN_FLAGS)
    except (FileNotFoundError, PermissionError):
        return None
    except OSError as error:
        if error.errno == 40:  # ELOOP: a symlink planted in the spool is never followed
            return None
        raise
    try:
        if not _try_lock(fd):
            os.close(fd)
            return None
        busy = spool.envelope_file(message_id, State.BUSY)
        try:
            os.rename(ready, busy)
        except FileNotFoundError:
            os.close(fd)
            return None
        if os.fstat(fd).st_ino != os.stat(busy).st_ino:  # renamed someone else's file
            os.rename(busy, ready)
            os.close(fd)
            return None
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return Claim(spool, message_id, fd)


def unfail(spool: Spool, message_id: str) -> bool:
    """`.envelope.bad` back to `.envelope` (resubmit); False if it was not there."""
    try:
        os.rename(
            spool.envelope_path(message_id, State.BAD),
            spool.envelope_path(message_id, State.READY),
        )
    except FileNotFoundError:
        return False
    return True


def read_envelope(spool: Spool, message_id: str, state: State) -> Envelope:
    """Parse an envelope in any state without claiming it."""
    path = spool.envelope_path(message_id, state)
    with open(path, "rb") as handle:
        return parse_envelope(handle.read(), path=str(path))


def fail_unclaimable(spool: Spool, message_id: str, reason: str) -> bool:
    """Fail a `.envelope` that cannot be claimed normally (e.g. unreadable). False if gone."""
    claimed = claim(spool, message_id)
    if claimed is None:
        return False
    claimed.fail(reason, None)
    return True


def recover_busy(spool: Spool, message_id: str) -> bool:
    """Put a `.busy` whose lock is free (its worker died) back to `.envelope`."""
    busy = spool.envelope_path(message_id, State.BUSY)
    try:
        fd = os.open(busy, _OPEN_FLAGS)
    except (FileNotFoundError, PermissionError):
        return False
    try:
        if not _try_lock(fd):
            return False
        try:
            os.rename(busy, spool.envelope_path(message_id, State.READY))
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


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
    _link_into(content, folder / content.name)
    fsync_directory(folder)
    return remove_message(spool, message_id, State.BAD)


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


__all__ = [
    "DEFERRAL_KEY",
    "Claim",
    "EnvelopeError",
    "archive_failed",
    "claim",
    "fail_unclaimable",
    "read_envelope",
    "recover_busy",
    "remove_message",
    "unfail",
]
