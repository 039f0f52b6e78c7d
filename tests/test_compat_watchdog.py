"""common.compat_watchdog: the watchdog internal relay changes is there and still read.

Fails loudly, naming it, when a watchdog release moves `InotifyMoveEventGrouper.delay` or
its emitters stop reading it; and shows what it is for on a real directory: after a move
out of the watched directory, the next event is not held back for half a second.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from common.compat_watchdog import GROUPER_MODULE, no_move_pairing_delay

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


@linux_only
def test_the_move_grouper_delay_is_there_and_read_by_each_emitter() -> None:
    """The class attribute exists, is a number, and a new emitter's queue takes it."""
    module = importlib.import_module(GROUPER_MODULE)
    grouper = module.InotifyMoveEventGrouper
    assert isinstance(grouper.delay, (int, float)), "InotifyMoveEventGrouper.delay changed"
    assert no_move_pairing_delay() is True
    assert grouper.delay == 0
    queue = grouper()._queue
    assert queue.delay == 0, "InotifyMoveEventGrouper no longer reads its class delay"


class _Seen(FileSystemEventHandler):
    def __init__(self) -> None:
        self.created = threading.Event()

    def on_created(self, event: FileSystemEvent) -> None:
        if str(event.src_path).endswith("new.envelope"):
            self.created.set()


@linux_only
def test_an_event_behind_an_unpaired_move_is_not_held_back(tmp_path: Path) -> None:
    """A file moved out of the watched directory, then a new envelope: its event arrives
    well within watchdog's half-second pairing delay."""
    watched, elsewhere = tmp_path / "spool", tmp_path / "elsewhere"
    watched.mkdir()
    elsewhere.mkdir()
    (watched / "old").write_bytes(b"x")
    assert no_move_pairing_delay()
    seen = _Seen()
    observer = Observer()
    observer.schedule(seen, str(watched), recursive=False)
    observer.start()
    try:
        time.sleep(0.2)
        os.rename(watched / "old", elsewhere / "old")  # IN_MOVED_FROM, never paired
        started = time.monotonic()
        (watched / "new.envelope").write_bytes(b"x")
        assert seen.created.wait(5)
        assert time.monotonic() - started < 0.4, "events wait behind an unpaired move again"
    finally:
        observer.stop()
        observer.join(5)
