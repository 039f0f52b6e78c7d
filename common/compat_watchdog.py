"""Every use relay makes of watchdog's internals, in one place.

relay-deliver watches the spool with watchdog's public API (`Observer`, `schedule`,
`unschedule_all`, `FileSystemEventHandler`, the events' `src_path` / `dest_path`). One
thing it changes underneath: watchdog's inotify emitter holds each IN_MOVED_FROM for
`InotifyMoveEventGrouper.delay` (half a second) to pair it with its IN_MOVED_TO, and every
event queued behind it waits too. With intake committing by rename and deliver claiming by
rename, news of new mail was now and then 0.5 s late. relay takes events only as hints to
scan, so pairing moves is worth nothing to it; an unpaired move still arrives, as a
creation. `no_move_pairing_delay()` sets that class attribute to 0 before an observer is
made (each emitter reads it when it is created).

`tests/test_compat_watchdog.py` fails loudly when a watchdog release moves or renames it,
or stops reading it. Reads and writes nothing but that attribute.
"""

from __future__ import annotations

import sys

# Where the attribute lives (the test checks it on Linux, the one platform that has it).
GROUPER_MODULE = "watchdog.observers.inotify_move_event_grouper"


def no_move_pairing_delay() -> bool:
    """Make watchdog's inotify emitters pass moves on at once; True when that was done.

    False where there is no inotify (not Linux: the other observers do not hold moves
    back), and when a watchdog release has moved the attribute: deliver then runs with the
    delay (news of mail may be late, never lost) and the test says what changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        from watchdog.observers.inotify_move_event_grouper import (  # noqa: PLC0415
            InotifyMoveEventGrouper,
        )
    except ImportError:
        return False
    if not isinstance(getattr(InotifyMoveEventGrouper, "delay", None), (int, float)):
        return False
    InotifyMoveEventGrouper.delay = 0
    return True


__all__ = ["GROUPER_MODULE", "no_move_pairing_delay"]
