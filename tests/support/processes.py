"""What a test sees of running processes, from /proc: whether a pid is alive (a zombie is
not), a process's children and its command line. Reads /proc only; signals nothing."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first, then the ppid)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether *pid* runs: it exists and is not a zombie waiting for its parent."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The pids whose parent is *pid*."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if int(_stat_fields(entry)[1]) == pid:
                found.append(int(entry))
    return found


def command_line(pid: int) -> str:
    """*pid*'s arguments, joined by spaces; "" for a pid that is gone (a child listed by
    `children` can end before its command line is read: no program's, then)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""
