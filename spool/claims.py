"""State changes of accepted messages: claim, defer, give back, fail, hold, remove, unfail,
unhold, recover.

Every change of state is one rename. A worker claims a message by taking an flock on its
`.envelope` and then renaming it to `.envelope.busy`; the lock (held on the file, so it
follows the rename) is what tells a live claim from one left by a dead worker. Losing a
rename race is normal and answered with None. Appended lines (reasons, relay's own
bookkeeping) go to the end of the envelope, which is never rewritten.

A `Claim` is all deliver needs: it reads the envelope and the content through descriptors
checked by `spool.files` (deliver never sees one), and ends in one named transition. Reads
and appends to envelope files; reads content files, and only removes them (with their
message); creates new messages only through `Spool.store` (`Claim.split_off`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from spool.envelope import (
    MAX_ENVELOPE_BYTES,
    Envelope,
    EnvelopeError,
    parse_envelope,
    reason_lines,
    trailer_line,
)
from spool.files import HostileFile, check_regular, open_regular
from spool.names import State
from spool.store import Spool
from spool.testhooks import checkpoint

_ENVELOPE_ACCESS = os.O_RDWR | os.O_APPEND  # plus files.SAFE_FLAGS, always
DEFERRAL_KEY = "X-Relay-Deferred"
_READ_SIZE = 65536


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Claim:
    """A message held by this process: its envelope is `.envelope.busy` and flocked.

    The claim owns the envelope's descriptor (and its lock) and, once it was asked for,
    the content's: both were checked to be regular files with one link when they were
    opened, and everything is read through them, never again by name.
    """

    def __init__(self, spool: Spool, message_id: str, fd: int) -> None:
        self.spool = spool
        self.message_id = message_id
        self._fd = fd
        self.envelope_path = spool.envelope_file(message_id, State.BUSY)
        self.content_path = spool.content_file(message_id)
        self._content_fd = -1
        self._content_info: os.stat_result | None = None

    def __repr__(self) -> str:
        return f"Claim({self.message_id!r}, held={self._fd >= 0})"

    @property
    def held(self) -> bool:
        """True until the claim is settled, handed off or closed."""
        return self._fd >= 0

    def envelope_bytes(self) -> bytes:
        """The claimed envelope's bytes, read through the checked descriptor.

        EnvelopeError for a file larger than `MAX_ENVELOPE_BYTES` (not read further).
        """
        chunks: list[bytes] = []
        offset = 0
        while chunk := os.pread(self._fd, _READ_SIZE, offset):
            chunks.append(chunk)
            offset += len(chunk)
            if offset > MAX_ENVELOPE_BYTES:
                raise EnvelopeError(f"larger than {MAX_ENVELOPE_BYTES} bytes: no envelope",
                                    path=self.envelope_path)
            if len(chunk) < _READ_SIZE:  # a short read of a regular file: its end
                break
        return b"".join(chunks)

    def read_envelope(self) -> Envelope:
        """Parse the claimed envelope; EnvelopeError names the file, line and problem."""
        return parse_envelope(self.envelope_bytes(), path=self.envelope_path)

    def envelope_age(self) -> float:
        """Seconds since the claimed envelope was last modified."""
        return time.time() - os.fstat(self._fd).st_mtime

    # -- the content -------------------------------------------------------------------

    def open_content(self) -> os.stat_result:
        """Open the content file (once) and check it; its stat at the open.

        FileNotFoundError when it is missing, HostileFile when it is not a regular file
        with one link (the text says what it is), another OSError for an I/O fault.
        """
        if self._content_info is None:
            fd, info = open_regular(self.content_path, os.O_RDONLY)
            self._content_fd, self._content_info = fd, info
        return self._content_info

    def content_size(self) -> int:
        """The content file's size at the open (what SIZE= announces)."""
        return self.open_content().st_size

    def content_mtime(self) -> float:
        """The content file's mtime (when the message arrived, for --max-age)."""
        return self.open_content().st_mtime

    def content_slices(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The content as consecutive slices of at most *size* bytes, to its end.

        Each slice is read when it is asked for (one pread): a large message is never
        held whole. Read through the checked descriptor, so a content file swapped by
        name meanwhile changes nothing.
        """
        if size < 1:
            raise ValueError("slice size must be 1 or more")
        self.open_content()
        offset = 0
        while chunk := os.pread(self._content_fd, size, offset):
            offset += len(chunk)
            yield chunk

    def follow_filter_changes(self) -> None:
        """After a client filter: follow files it replaced by rename.

        A filter that rewrote the `.busy` file by rename left our lock on the old inode:
        lock the new file instead (checked as any spool file), so that appended reasons
        land in the file that moves on. A replaced content file is opened afresh when it
        is next read; one edited in place is checked again (its size, its mtime, its
        links). HostileFile if the filter left something that is no regular file.
        """
        try:
            current = os.stat(self.envelope_path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino != os.fstat(self._fd).st_ino:
            fd, _info = open_regular(self.envelope_path, _ENVELOPE_ACCESS)
            if _try_lock(fd):
                os.close(self._fd)
                self._fd = fd
            else:
                os.close(fd)
        if self._content_info is not None:
            try:
                now = os.stat(self.content_path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_ino, now.st_dev) != (self._content_info.st_ino,
                                                         self._content_info.st_dev):
                self._close_content()
            else:  # edited in place: its size and mtime now, and no second link since
                self._content_info = check_regular(self._content_fd, self.content_path)

    def split_off(self, envelope: Envelope) -> str:
        """Store a new waiting message: this content (its mtime kept) with *envelope*.

        The copy is read through the claim's checked descriptor, in slices.
        """
        mtime = self.content_mtime()
        return self.spool.store(self.content_slices(), envelope, content_mtime=mtime)

    def hand_off(self) -> Claim:
        """The same claim as a new object for another thread; this one holds nothing now.

        The content's descriptor is closed: what is handed off can only be settled.
        """
        self._close_content()
        handed = Claim(self.spool, self.message_id, self._fd)
        self._fd = -1
        return handed

    def _append(self, text: str, *, sync: bool) -> None:
        data = text.encode("utf-8")
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            data = b"\r\n" + data  # a hand-written envelope without a final line break
        while data:
            data = data[os.write(self._fd, data) :]
        if sync:
            os.fsync(self._fd)

    def _move(self, state: State) -> None:
        os.rename(self.envelope_path, self.spool.envelope_file(self.message_id, state))

    def _close_content(self) -> None:
        if self._content_fd >= 0:
            os.close(self._content_fd)
            self._content_fd = -1
        self._content_info = None

    def _close(self) -> None:
        self._close_content()
        if self._fd >= 0:
            os.close(self._fd)  # drops the flock
            self._fd = -1

    # -- the transitions: each ends the claim (the descriptors are closed, the lock goes) --

    def defer(self, reason: str, not_before: float) -> None:
        """Deferred: back to `.envelope` with a deferral line, not due until *not_before*
        (kept in the mtime, so a restarted deliver respects the backoff unread)."""
        try:
            self._append(trailer_line(DEFERRAL_KEY, f"{int(time.time())} {reason}"), sync=False)
            os.utime(self._fd, (time.time(), not_before))
            self._move(State.READY)
        finally:
            self._close()

    def give_back(self) -> None:
        """No decision (held for a moment, cancelled at shutdown): back to `.envelope` as it
        was, due at once."""
        try:
            self._move(State.READY)
        finally:
            self._close()

    def fail(self, reason: str, code: int | str | None) -> None:
        """Failed: append Reason and ReasonCode (as E-MailRelay does), move to `.envelope.bad`."""
        try:
            self._append(reason_lines(reason, code), sync=True)
            os.utime(self._fd)
            self._move(State.BAD)
        finally:
            self._close()

    def make_due(self, when: float | None = None) -> None:
        """Back to `.envelope`, due at *when* (now): relay-queue flush cuts a backoff short."""
        try:
            now = time.time()
            os.utime(self._fd, (now, now if when is None else when))
            self._move(State.READY)
        finally:
            self._close()

    def hold(self) -> None:
        """Put the claimed message aside: `.envelope.held` (relay-queue hold), due time kept."""
        try:
            self._move(State.HELD)
        finally:
            self._close()

    def remove(self) -> None:
        """Sent: remove the envelope first, then the content."""
        try:
            checkpoint("remove_claim")  # tests: a crash or a fault with the 250 already in
            os.unlink(self.envelope_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.content_path)
        finally:
            self._close()

    def close(self) -> None:
        """Close the descriptors (the lock goes); renames nothing.

        After the transitions above this does nothing. Instead of one, it leaves a `.busy`
        whose lock is free, which `recover_busy` (deliver's recovery) puts back.
        """
        self._close()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving a `with` block without a transition gives the message back."""
        if self.held:
            self.give_back()

def claim(spool: Spool, message_id: str) -> Claim | None:
    """Claim a waiting message, or None if it is gone or another worker has it.

    An `.envelope` that is not a regular file with one link (a FIFO, a symlink, a hard
    link, a device, a directory) is moved to `.envelope.bad` at once, as it is (nothing can
    be appended to it), and HostileFile says what it was.
    """
    ready = spool.envelope_file(message_id, State.READY)
    try:
        fd, info = open_regular(ready, _ENVELOPE_ACCESS)
    except (FileNotFoundError, PermissionError):
        return None
    except HostileFile:
        _refuse(spool, message_id, State.READY)
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
        if info.st_ino != os.stat(busy).st_ino:  # renamed someone else's file
            os.rename(busy, ready)
            os.close(fd)
            return None
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return Claim(spool, message_id, fd)


def _refuse(spool: Spool, message_id: str, state: State) -> None:
    """A hostile envelope in *state* goes to `.envelope.bad` by one rename, unopened.

    rename(2) moves the name itself: a symlink stays a symlink and is never followed.
    """
    with contextlib.suppress(FileNotFoundError):
        os.rename(spool.envelope_file(message_id, state),
                  spool.envelope_file(message_id, State.BAD))


def recover_busy(spool: Spool, message_id: str) -> bool:
    """Put a `.busy` whose lock is free (its worker died) back to `.envelope`."""
    busy = spool.envelope_file(message_id, State.BUSY)
    try:
        fd, _info = open_regular(busy, _ENVELOPE_ACCESS)
    except (FileNotFoundError, PermissionError):
        return False
    except HostileFile:
        _refuse(spool, message_id, State.BUSY)  # it would only be refused when claimed
        return False
    try:
        if not _try_lock(fd):
            return False
        try:
            os.rename(busy, spool.envelope_file(message_id, State.READY))
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


__all__ = [
    "DEFERRAL_KEY",
    "Claim",
    "claim",
    "recover_busy",
]
