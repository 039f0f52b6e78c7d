"""Replacing a file whole and durably: the new bytes under a temporary name, fsynced, renamed.

Filters that rewrite a message's envelope in place (mx:, split:) and deliver's copy into a
delivery directory each need the same step: a reader sees either the old file or the whole
new one, never a part, and after a crash the old one is still there. The temporary name is
created with O_EXCL and O_NOFOLLOW, so a file or link already there (a hostile drop, a crashed
run's leftover) is refused, never written through; on a failed write it is removed again.
Directory fsyncs are the caller's (they differ: a spool, a mailbox directory).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def replace_file(path: str | Path, data: bytes, temporary: str | Path, mode: int = 0o600) -> None:
    """Write *data* to *temporary*, fsync it and rename it onto *path* (made or replaced)."""
    fd = os.open(temporary, _CREATE, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    os.close(fd)
    os.replace(temporary, path)
