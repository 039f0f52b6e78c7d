"""Opening a spool file that may be hostile: only a regular file with one link is used.

Anyone who can create a file in the spool (a group-writable spool, a hand-drop by another
user, a filter) can put anything under a message's name: a FIFO (an `open()` that never
returns), a symbolic link to /etc/passwd (a read of a file relay may read but the dropper
may not), a hard link to such a file (the same, and appended lines written into it), a
device node, a directory. So every spool file is opened with `O_NOFOLLOW` (a link is never
followed), `O_NONBLOCK` (a FIFO or a device never makes the open wait) and `O_NOCTTY`, and
then checked with `fstat` on the descriptor that was opened, never by name first (a check
by name would be a race: the name could be swapped between the check and the open). A file
that is not a regular file with `st_nlink == 1` is refused with `HostileFile`, whose text
says what was found.

Opens and closes descriptors only; never reads, writes, renames or removes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

# Flags every open of a spool file carries, on top of the access mode.
SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class HostileFile(OSError):
    """A spool file that is not a regular file with one link; `found` says what it is."""

    def __init__(self, path: str, found: str) -> None:
        super().__init__(errno.EPERM, f"{found}, not a regular file", path)
        self.path = path
        self.found = found

    def __str__(self) -> str:
        return f"{self.path} is {self.found}, not a regular file"


def describe_mode(mode: int) -> str:
    """What a file of *mode* is, in words for a reason line."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return f"a file of type {stat.S_IFMT(mode):o}"


def describe(path: str) -> str:
    """What is at *path* (by lstat, only to word a refusal: never to decide anything)."""
    try:
        info = os.lstat(path)
    except OSError:
        return "something that cannot be opened"
    if stat.S_ISLNK(info.st_mode):
        try:
            return f"a symbolic link to {os.readlink(path)}"
        except OSError:
            return "a symbolic link"
    if stat.S_ISREG(info.st_mode):
        return "a file that was replaced while it was opened"
    return describe_mode(info.st_mode)


def check_regular(fd: int, path: str) -> os.stat_result:
    """fstat the opened *fd*: its stat if a regular file with one link, else HostileFile
    (FileNotFoundError when it has no link left: removed since it was opened)."""
    info = os.fstat(fd)
    if info.st_nlink == 0:  # removed since the open (another worker's claim, a person)
        raise FileNotFoundError(errno.ENOENT, "removed while it was being opened", path)
    if not stat.S_ISREG(info.st_mode):
        raise HostileFile(path, describe_mode(info.st_mode))
    if info.st_nlink != 1:
        raise HostileFile(path, f"a hard link ({info.st_nlink} links: maybe another file)")
    return info


def open_regular(path: str, flags: int, mode: int = 0o600) -> tuple[int, os.stat_result]:
    """Open *path* with *flags* plus `SAFE_FLAGS`; the descriptor and its checked stat.

    Raises FileNotFoundError/PermissionError as `os.open` does, HostileFile for anything
    but a regular file with one link (a symlink, a FIFO, a device, a directory, a socket,
    a hard link), other OSError for an I/O fault. Never blocks.
    """
    try:
        fd = os.open(path, flags | SAFE_FLAGS, mode)
    except OSError as error:
        # ELOOP: a symlink (O_NOFOLLOW); EISDIR: a directory opened for writing; ENXIO: a
        # socket, or a FIFO opened for writing with no reader; ENODEV/ENXIO: a device node
        # with no driver behind it; EAGAIN: a device that would make the open wait.
        if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENODEV,
                           errno.EAGAIN):
            raise HostileFile(path, describe(path)) from None
        raise
    try:
        return fd, check_regular(fd, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def read_regular(path: str, limit: int) -> bytes:
    """The first *limit* bytes of the regular file *path* (see `open_regular`)."""
    fd, info = open_regular(path, os.O_RDONLY)
    try:
        chunks: list[bytes] = []
        offset = 0
        wanted = min(limit, info.st_size + 1)  # one byte more than its size: a short read ends it
        while offset < limit and (chunk := os.pread(fd, max(wanted - offset, 1 << 16), offset)):
            chunks.append(chunk[: limit - offset])
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


__all__ = ["SAFE_FLAGS", "HostileFile", "check_regular", "describe", "describe_mode",
           "open_regular", "read_regular"]
