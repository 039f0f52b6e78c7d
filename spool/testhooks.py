"""Named fault points for tests: crash (SIGKILL) or fail (OSError) at a chosen step.

Production code calls `checkpoint("name")` at each step of a durable operation. It does
nothing unless the environment asks, read once at import:

- `RELAY_TEST_CRASH_AT=content_synced` kills the process with SIGKILL at that point.
- `RELAY_TEST_FAIL_AT=fsync_envelope:EIO` raises OSError(EIO) at that point.
- `RELAY_TEST_HOLD_AT=fsync_directory:/tmp/x/release` holds each arrival there until the
  file `release` exists; each arrival first creates a file `release.arrived-N` beside it,
  so that a test can count how many are held at once (a slow disk, without one).

A helper process that does part of a program's work (intake's storage process) is started
with `RELAY_TEST_CRASH_PARENT=1`: a crash there kills its parent first, so that the test
sees the program die at that step, as a kill -9 of the whole program would.

Touches no files, except the markers of RELAY_TEST_HOLD_AT.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import time

_CRASH_AT = frozenset(filter(None, os.environ.get("RELAY_TEST_CRASH_AT", "").split(",")))
_FAIL_AT: dict[str, int] = {}
for _item in filter(None, os.environ.get("RELAY_TEST_FAIL_AT", "").split(",")):
    _point, _, _name = _item.partition(":")
    _FAIL_AT[_point] = getattr(errno, _name or "EIO", errno.EIO)
_HOLD_AT: dict[str, str] = {}
for _item in filter(None, os.environ.get("RELAY_TEST_HOLD_AT", "").split(",")):
    _point, _, _release = _item.partition(":")
    _HOLD_AT[_point] = _release
_CRASH_PARENT = os.environ.get("RELAY_TEST_CRASH_PARENT") == "1"
ACTIVE = bool(_CRASH_AT or _FAIL_AT or _HOLD_AT)
_arrivals = itertools.count(1)
HOLD_LIMIT = 60.0  # seconds an arrival is held at most (a test that forgot to release)


def checkpoint(name: str) -> None:
    """Crash or fail here when a test asked for it."""
    if not ACTIVE:
        return
    if name in _CRASH_AT:
        if _CRASH_PARENT:
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    if name in _HOLD_AT:
        _hold(_HOLD_AT[name])
    if name in _FAIL_AT:
        code = _FAIL_AT[name]
        raise OSError(code, f"{os.strerror(code)} (injected at {name})")


def _hold(release: str) -> None:
    """Say this arrival is here, then wait until the test creates *release*."""
    marker = f"{release}.arrived-{os.getpid()}-{next(_arrivals)}"
    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    deadline = time.monotonic() + HOLD_LIMIT
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
