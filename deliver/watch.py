"""The spool watch: watchdog's inotify events turned into deliver's wake-ups.

Watches the spool directory (not recursively) and calls back: an event for a name ending
in `.envelope` (created, moved into place, written in place, closed) asks for a scan, and
any event for intake's trigger file `.relay-scan-now` asks for a flush. Both are hints, not
facts: inotify drops events under load, and the scheduler's own listing decides what is
due. The callbacks run in watchdog's thread, so the scheduler hands them to its loop.
The watch can be paused (the inotify watch removed, the observer's threads kept) while
deliver works down a long list, and resumed. Reads no file and changes nothing; SIGUSR1
(the other flush from outside) is deliver.main's, and the --poll timer the scheduler's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from common.compat_watchdog import no_move_pairing_delay
from common.logs import Logger
from spool import Spool
from spool.names import TRIGGER_NAME, State


def ignore() -> None:
    """A file event that needs nothing (new mail under --no-watch waits for a flush)."""


class Watch:
    """The watchdog observer of the spool directory, which can be paused and resumed."""

    def __init__(self, observer: Any, spool: Spool, handler: FileSystemEventHandler,
                 log: Logger) -> None:
        self.observer = observer
        self._path = str(spool.path)
        self._handler = handler
        self._log = log
        self.armed = True

    @classmethod
    def start(cls, spool: Spool, wake: Callable[[], None], flush: Callable[[], None],
              log: Logger) -> Watch | None:
        """Watch *spool*; None when the watch cannot be had (--poll still finds the mail)."""
        no_move_pairing_delay()  # relay takes events as hints: pairing moves only delays
        observer = Observer()
        handler = SpoolEvents(wake, flush)
        observer.schedule(handler, str(spool.path), recursive=False)
        observer.daemon = True
        try:
            observer.start()
        except OSError as error:  # e.g. out of inotify watches
            log.warning("watch_failed", reason=error.strerror or str(error))
            return None
        return cls(observer, spool, handler, log)

    def stop(self) -> None:
        """Ask the observer's threads to end (`join` waits for them)."""
        self.observer.stop()

    def join(self, timeout: float) -> None:
        """Wait up to *timeout* seconds for the observer's threads. Blocks."""
        self.observer.join(timeout)

    def pause(self) -> None:
        """Remove the inotify watch (the observer's threads stay). Blocks briefly."""
        if self.armed:
            self.observer.unschedule_all()
            self.armed = False
            self._log.debug("watch_paused")

    def resume(self) -> None:
        """Watch again. Blocks briefly. The caller scans afterwards (events may be lost)."""
        if self.armed:
            return
        try:
            self.observer.schedule(self._handler, self._path, recursive=False)
        except OSError as error:  # out of inotify watches now: --poll finds the mail
            self._log.warning("watch_failed", reason=error.strerror or str(error))
            return
        self.armed = True
        self._log.debug("watch_resumed")


class SpoolEvents(FileSystemEventHandler):
    """Turns file events that may mean new mail into scan requests (hints only); the trigger
    file into a flush."""

    def __init__(self, wake: Callable[[], None], flush: Callable[[], None]) -> None:
        self._wake = wake
        self._flush = flush

    def _event(self, path: str | bytes) -> None:
        name = path.decode(errors="replace") if isinstance(path, bytes) else path
        name = name.rsplit("/", 1)[-1]
        if name == TRIGGER_NAME:
            self._flush()
        elif name.endswith(State.READY.suffix):
            self._wake()

    def on_created(self, event: FileSystemEvent) -> None:
        self._event(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._event(event.dest_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._event(event.src_path)

    def on_modified(self, event: FileSystemEvent) -> None:
        self._event(event.src_path)  # the trigger file, or an envelope written in place
