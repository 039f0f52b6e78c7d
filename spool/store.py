"""The spool directory and durable writes into it: the only code that creates message files.

A message is committed exactly when its `<id>.envelope` has its final name (commit by
rename). Writing is split in two so that many messages can share one directory fsync
(group commit):

1. `MessageWriter` (one per message): content streamed into `<id>.content`, fsynced;
   the envelope written as `<id>.envelope.new`, fsynced. Nothing is accepted yet.
2. `Spool.commit([...])`: each `.envelope.new` renamed to `.envelope`, then one fsync
   of the directory covers them all.

Any error leaves nothing that looks accepted: a failed message's files are removed, and a
failed directory fsync withdraws every envelope of its batch. Files are created 0600 with
O_EXCL|O_NOFOLLOW and their names never come from client data.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from spool.envelope import Envelope, format_envelope
from spool.files import HostileFile, open_regular
from spool.names import TRIGGER_NAME, State, content_name, envelope_name
from spool.testhooks import checkpoint

# Group read/write, as E-MailRelay's spool files: the umask decides (`relay` sets 007, so
# 0660, group the --user's; a spool directory that is setgid gives its own group).
FILE_MODE = 0o660
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SpoolError(Exception):
    """The spool directory cannot be used (missing, not a directory, a symlink, unsafe)."""


def check_spool_directory(path: Path) -> None:
    """Refuse a spool directory that is missing, a symlink, or writable by others."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise SpoolError(f"spool directory {path} does not exist") from None
    except OSError as error:
        raise SpoolError(f"spool directory {path} cannot be examined: {error.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise SpoolError(
            f"spool directory {path} is a symbolic link; give its real path instead"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise SpoolError(f"spool directory {path} is not a directory")
    if info.st_mode & stat.S_IWOTH:
        raise SpoolError(
            f"spool directory {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o});"
            f" run: chmod o-w {path}"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise SpoolError(f"spool directory {path} is not writable by this user")


def fsync_directory(path: Path) -> None:
    """Make the directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        checkpoint("fsync_directory")
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: Path, point: str) -> None:
    """fsync a file written earlier (by path: its descriptor is long closed).

    Opened as any spool file: a FIFO or a link put in its place fails the message.
    """
    fd, _info = open_regular(str(path), os.O_RDONLY)
    try:
        checkpoint(point)
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return cast("Callable[[int], int]", function)


_SYNCFS = _load_syncfs()


def sync_file_system(path: Path) -> None:
    """Make everything written on *path*'s file system durable: one syncfs(2).

    Linux reports the file system's write-back errors to syncfs since 5.8. Without
    syncfs (not Linux), sync(2) is used: as durable, but it flushes every file system.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _SYNCFS is None:
            os.sync()
        elif _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}")
    finally:
        os.close(fd)


def sync_batch(spool_path: Path, pending: Sequence[PendingMessage]) -> list[OSError | None]:
    """Make a whole batch durable with one `sync_file_system`; on failure, remove it all."""
    if not pending:
        return []
    try:
        checkpoint("fsync_content")  # the batch's syncfs is every file's fsync at once
        checkpoint("fsync_envelope")
        sync_file_system(spool_path)
        checkpoint("content_synced")
        checkpoint("envelope_synced")
    except OSError as error:
        for message in pending:
            message.discard()
        return [error] * len(pending)
    return [None] * len(pending)


def sync_message(message: PendingMessage) -> OSError | None:
    """fsync a written message's two files; on failure remove them and return the error."""
    try:
        _fsync_path(message.content_path, "fsync_content")
        checkpoint("content_synced")
        _fsync_path(message.new_path, "fsync_envelope")
        checkpoint("envelope_synced")
    except OSError as error:
        message.discard()
        return error
    return None


def sync_pending(
    pending: Sequence[PendingMessage], executor: Executor | None = None
) -> list[OSError | None]:
    """fsync every message of a batch; with an *executor*, several at once.

    fsyncs issued together are folded by a journaling file system into shared commits,
    which is what makes a batch cheaper than its messages one by one.
    """
    if executor is None or len(pending) < 2:
        return [sync_message(message) for message in pending]
    return list(executor.map(sync_message, pending))


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_name(path: str) -> None:
    """Remove whatever is at *path*: a file, a link (not its target), an empty directory."""
    try:
        os.unlink(path)
    except IsADirectoryError:
        os.rmdir(path)
    except FileNotFoundError:
        pass


class _IdGenerator:
    """E-MailRelay style ids: emailrelay.<pid>.<unix-time>.<seq>."""

    def __init__(self) -> None:
        self._sequence = itertools.count(1)
        self._pid = -1

    def next(self) -> str:
        pid = os.getpid()
        if pid != self._pid:  # a forked child must not reuse the parent's names
            self._pid, self._sequence = pid, itertools.count(1)
        return f"emailrelay.{pid}.{int(time.time())}.{next(self._sequence)}"


_ids = _IdGenerator()


@dataclass(frozen=True)
class PendingMessage:
    """A fully written, fsynced message whose envelope is still `.envelope.new`."""

    spool: Spool
    message_id: str

    @property
    def content_path(self) -> Path:
        return self.spool.content_path(self.message_id)

    @property
    def new_path(self) -> Path:
        return self.spool.envelope_path(self.message_id, State.NEW)

    def discard(self) -> None:
        """Remove both files (the message was refused after all)."""
        _unlink_quietly(self.new_path)
        _unlink_quietly(self.content_path)


class Spool:
    """One spool directory."""

    def __init__(self, directory: str | os.PathLike[str], *, check: bool = True) -> None:
        self.path = Path(directory)
        self.directory = str(self.path)  # for the string paths of the per-message hot path
        if check:
            check_spool_directory(self.path)

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    def content_path(self, message_id: str) -> Path:
        return self.path / content_name(message_id)

    def envelope_path(self, message_id: str, state: State) -> Path:
        return self.path / envelope_name(message_id, state)

    def envelope_file(self, message_id: str, state: State) -> str:
        """`envelope_path` as a string, without building a Path (deliver's hot path)."""
        return f"{self.directory}/{envelope_name(message_id, state)}"

    def content_file(self, message_id: str) -> str:
        """`content_path` as a string, without building a Path."""
        return f"{self.directory}/{content_name(message_id)}"

    # -- writing -----------------------------------------------------------------------

    def writer(self) -> MessageWriter:
        """Start a new message: creates its content file under a fresh id."""
        return MessageWriter(self)

    def commit(
        self,
        pending: Sequence[PendingMessage],
        *,
        sync_files: bool = False,
        into: State = State.READY,
    ) -> list[OSError | None]:
        """Accept each pending message (rename), then fsync the directory once for all.

        *into* is the state the `.new` envelopes are renamed into: ready, or (relay-notify's
        notifications, `spool.notifications`) not yet released.

        With *sync_files*, the messages were written with `finish(sync=False)` and their
        files are fsynced here, after the whole batch was written: on a journaling file
        system the first fsync's commit carries the whole batch and the others find little
        left to do (about one journal commit per batch instead of two per message).

        Returns one entry per message: None when it is accepted, or the error that kept it
        out (its files are then gone). If the directory fsync fails, every message of the
        batch is withdrawn and carries that error.
        """
        results: list[OSError | None] = (
            sync_pending(pending) if sync_files else [None] * len(pending)
        )
        renamed: list[int] = []
        for position, message in enumerate(pending):
            if results[position] is not None:
                continue
            try:
                checkpoint("rename_envelope")
                os.rename(self.envelope_file(message.message_id, State.NEW),
                          self.envelope_file(message.message_id, into))
            except OSError as error:
                message.discard()
                results[position] = error
            else:
                renamed.append(position)
        if renamed:
            try:
                fsync_directory(self.path)
                checkpoint("directory_synced")
            except OSError as error:
                for position in renamed:
                    message = pending[position]
                    _unlink_quietly(self.envelope_path(message.message_id, into))
                    _unlink_quietly(message.content_path)
                    results[position] = error
        return results

    def store(
        self,
        content: bytes | Iterable[bytes],
        envelope: Envelope,
        *,
        content_mtime: float | None = None,
        into: State = State.READY,
    ) -> str:
        """Write and commit one message durably; returns its id. Raises OSError on failure.

        *into* as for `commit`.

        *content_mtime*, when given, becomes the content file's mtime (an age measured from
        the content, like deliver's --max-age, then carries over from another message).
        """
        writer = self.writer()
        try:
            for chunk in [content] if isinstance(content, bytes) else content:
                writer.write(chunk)
            if content_mtime is not None:
                os.utime(self.content_path(writer.message_id), (content_mtime, content_mtime))
            pending = writer.finish(envelope)
        except BaseException:
            writer.abort()
            raise
        (error,) = self.commit([pending], into=into)
        if error is not None:
            raise error
        return pending.message_id

    def trigger_scan(self) -> None:
        """Ask a running deliver to scan now (it watches this file).

        Anything but a regular file with one link at the trigger's name (a FIFO, whose
        open for writing would wait for a reader for ever; a link to another file, which
        would be written into) is removed and a fresh file created in its place.
        """
        path = f"{self.directory}/{TRIGGER_NAME}"
        try:
            fd, _info = open_regular(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        except HostileFile:
            _remove_name(path)
            fd, _info = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.write(fd, b"1")
            os.utime(fd)
        finally:
            os.close(fd)

    def free_bytes(self) -> int:
        """Bytes available to this user on the spool's file system."""
        info = os.statvfs(self.path)
        return info.f_bavail * info.f_frsize



class MessageWriter:
    """Writes one message's content (in chunks) and then its `.envelope.new`.

    Create with `Spool.writer()`; call `write()` any number of times, then `finish()` for a
    `PendingMessage` to commit, or `abort()` to remove everything written.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.size = 0
        self._fd = -1
        for _attempt in range(1000):
            message_id = _ids.next()
            try:
                self._fd = os.open(spool.content_file(message_id), _CREATE_FLAGS, FILE_MODE)
            except FileExistsError:
                continue  # a clash with another process or an old file: bump seq
            break
        else:
            raise OSError(errno.EEXIST, "no free message file name in the spool")
        self.message_id = message_id
        self._envelope_written = False

    def write(self, data: bytes) -> None:
        """Append *data* to the content file."""
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def finish(self, envelope: Envelope | bytes, *, sync: bool = True) -> PendingMessage:
        """fsync the content, write and fsync `.envelope.new`; the message is not yet accepted.

        *envelope* may be given already formatted (`format_envelope`'s bytes).
        """
        try:
            checkpoint("content_written")
            if sync:
                checkpoint("fsync_content")
                os.fsync(self._fd)
            checkpoint("content_synced")
        finally:
            os.close(self._fd)
            self._fd = -1
        data = envelope if isinstance(envelope, bytes) else format_envelope(envelope)
        fd = os.open(self.spool.envelope_file(self.message_id, State.NEW), _CREATE_FLAGS,
                     FILE_MODE)
        self._envelope_written = True
        try:
            _write_all(fd, data)
            checkpoint("envelope_written")
            if sync:
                checkpoint("fsync_envelope")
                os.fsync(fd)
            checkpoint("envelope_synced")
        finally:
            os.close(fd)
        return PendingMessage(self.spool, self.message_id)

    def abort(self) -> None:
        """Remove whatever this writer created."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._envelope_written:
            _unlink_quietly(self.spool.envelope_path(self.message_id, State.NEW))
        _unlink_quietly(self.spool.content_path(self.message_id))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
