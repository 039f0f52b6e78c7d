"""Named fault points for tests: crash (SIGKILL) or fail (OSError) at a chosen step.

Production code calls `checkpoint("name")` at each step of a durable operation. It does
nothing unless the environment asks, read once at import:

- `RELAY_TEST_CRASH_AT=content_synced` kills the process with SIGKILL at that point.
- `RELAY_TEST_FAIL_AT=fsync_envelope:EIO` raises OSError(EIO) at that point.

A helper process that does part of a program's work (intake's storage process) is started
with `RELAY_TEST_CRASH_PARENT=1`: a crash there kills its parent's other children (the
workers of `--processes`, when the storage process is theirs to share) and then its parent
first, so that the test sees the program die at that step, as a kill -9 of the whole
program would.

Touches no files.
"""

from __future__ import annotations

import errno
import os
import signal

_CRASH_AT = frozenset(filter(None, os.environ.get("RELAY_TEST_CRASH_AT", "").split(",")))
_FAIL_AT: dict[str, int] = {}
for _item in filter(None, os.environ.get("RELAY_TEST_FAIL_AT", "").split(",")):
    _point, _, _name = _item.partition(":")
    _FAIL_AT[_point] = getattr(errno, _name or "EIO", errno.EIO)
_CRASH_PARENT = os.environ.get("RELAY_TEST_CRASH_PARENT") == "1"
ACTIVE = bool(_CRASH_AT or _FAIL_AT)


def checkpoint(name: str) -> None:
    """Crash or fail here when a test asked for it."""
    if not ACTIVE:
        return
    if name in _CRASH_AT:
        if _CRASH_PARENT:
            parent = os.getppid()
            for sibling in _children(parent):
                if sibling != os.getpid():
                    os.kill(sibling, signal.SIGKILL)
            os.kill(parent, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    if name in _FAIL_AT:
        code = _FAIL_AT[name]
        raise OSError(code, f"{os.strerror(code)} (injected at {name})")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except OSError:
        return []
