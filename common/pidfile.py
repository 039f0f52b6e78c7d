"""Pid files for every relay program: written atomically, removed only while still ours.

`write_pid_file` writes `<path>.<pid>.tmp` and renames it into place, so a reader (an init
script, `kill $(cat ...)`) never sees an empty or half-written file. `remove_pid_file` removes
the file at exit only if it still holds this process's id (a newer instance may have taken
it over). Reads and writes the pid file only.
"""

from __future__ import annotations

import contextlib
import os


def write_pid_file(path: str) -> None:
    """Write this process's id to *path* (a temporary file, then a rename into place)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remove_pid_file(path: str) -> None:
    """Remove *path* if it still holds this process's id."""
    with contextlib.suppress(OSError):
        with open(path, encoding="ascii") as handle:
            if handle.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
