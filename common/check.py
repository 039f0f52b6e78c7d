"""`--check` for relay-intake and relay-deliver (and so `relay --check`): load everything
the program would use (configuration, secrets, certificates, filters, the spool), say what
is wrong, and exit 0 or 78 without starting: no port is opened, no file is written.

Reads the spool directory's listing (a count of what is in it); writes only to stdout and
stderr.
"""

from __future__ import annotations

import os
import sys

from common.config import Option
from spool import Spool, State, entries, looks_like_a_spool

CHECK_OPTION = Option(
    "check",
    "load the configuration, secrets, certificates, filters and the spool, say what is"
    " wrong, and exit 0 or 78 without starting",
    False,
    "bool",
)


def spool_summary(spool: Spool) -> str:
    """`12 waiting, 1 failed` for the spool (read: its listing can be had)."""
    counts: dict[State, int] = {}
    for entry in entries(spool):
        if entry.state is not None:
            counts[entry.state] = counts.get(entry.state, 0) + 1
    parts = [f"{counts.get(State.READY, 0)} waiting"]
    for state, word in ((State.BUSY, "being delivered"), (State.BAD, "failed"),
                        (State.HELD, "held"), (State.NEW, "being received"),
                        (State.DSN, "notifications not yet released")):
        if counts.get(state):
            parts.append(f"{counts[state]} {word}")
    return ", ".join(parts)


def passed(program: str, spool: Spool, details: str) -> int:
    """Say the check passed (on stdout) and return 0."""
    try:
        problem = looks_like_a_spool(spool)
        if problem is not None:  # /etc or a typo: the program would take it for an empty queue
            return failed(program, problem)
        summary = spool_summary(spool)
    except OSError as error:
        return failed(program, f"spool directory {spool.path}: {error.strerror or error}")
    print(f"{program}: configuration OK: {details}; spool {spool.path} ({summary})")
    return os.EX_OK


def failed(program: str, reason: str) -> int:
    """Say what is wrong (on stderr) and return 78."""
    print(f"{program}: configuration check failed: {reason}", file=sys.stderr)
    return os.EX_CONFIG
