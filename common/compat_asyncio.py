"""The one place relay relies on asyncio's internals: a transport's read size, and how a
future is awaited.

One setting relay-deliver changes: asyncio's plain socket transport reads with
`recv(transport.max_size)`, a class attribute of 256 KiB, which the C library maps and
unmaps for every read (three system calls and a page fault per read). deliver reads a
smarthost's replies, a few lines each, in smaller pieces: `set_read_size` sets it on its
connections' transports. uvloop's transports and TLS transports have no such attribute and
are left as they are (tests/test_compat_asyncio.py checks that asyncio still reads it).

And relay-intake's way of running a command: `Driven` runs a coroutine at once, in the
caller's stack (the protocol's `data_received`), up to the point where it first waits; the
future it waits on resumes it. A command that never waits (most SMTP commands: a reply
written to a socket that is not full) costs no Task, no future and no pass through the
event loop's ready queue, where an asyncio Task costs all three before it even starts
(Python 3.12's eager tasks do the same; relay runs on 3.11). It relies on how asyncio's
futures talk to whoever awaits them: `Future.__await__` sets `_asyncio_future_blocking`
and yields the future itself; `asyncio.sleep(0)` yields None. tests/test_compat_asyncio.py
checks both, and that a driven coroutine sees results, exceptions and cancellation as it
would in a Task. While its coroutine runs, a Driven is asyncio's current task (registered
with asyncio's private `_enter_task`/`_leave_task`, as a Task's step registers itself),
with the part of a Task's interface that `asyncio.timeout` uses: `cancel`, `cancelling`
and `uncancel`. So `asyncio.timeout` and Python 3.12's `wait_for` (built on it) work in a
driven coroutine as in a Task; on Python 3.12 and later they refused to run there
("Timeout should be used inside a task"). Started from inside a Task, a Driven leaves that
Task current.
"""

from __future__ import annotations

import asyncio
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Callable, Coroutine
from typing import Any


def set_read_size(transport: Any, size: int) -> bool:
    """Make *transport* read at most *size* bytes at a time; False when it has no such
    setting (a uvloop or TLS transport: nothing changes)."""
    if not isinstance(getattr(transport, "max_size", None), int):
        return False
    transport.max_size = size
    return True


class Driven:
    """One coroutine run without a Task: `start()` runs it to its first wait, each future it
    waits on resumes it, *done* gets None or the exception it ended with (a CancelledError
    after `cancel()`). Not thread-safe; the loop's thread only."""

    __slots__ = ("_cancel_requested", "_cancels", "_coroutine", "_done", "_loop", "_waiting",
                 "finished")

    def __init__(self, coroutine: Coroutine[Any, Any, Any],
                 done: Callable[[BaseException | None], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._coroutine = coroutine
        self._done = done
        self._loop = loop
        self._waiting: asyncio.Future[Any] | None = None
        self._cancel_requested = False
        self._cancels = 0  # cancel() calls not taken back by uncancel(), as a Task counts
        self.finished = False

    def start(self) -> None:
        """Run the coroutine now, up to its first wait (or to its end)."""
        self._step(None)

    def cancel(self, msg: Any = None) -> bool:
        """Raise CancelledError in the coroutine where it waits (at once if it waits on a
        future that can still be cancelled, else when it next runs or waits); False when
        it has ended."""
        if self.finished:
            return False
        self._cancels += 1
        waiting = self._waiting
        if waiting is not None and waiting.cancel():
            return True
        self._cancel_requested = True
        return True

    def cancelling(self) -> int:
        """Task.cancelling(): the cancel requests still standing."""
        return self._cancels

    def uncancel(self) -> int:
        """Task.uncancel(): take one cancel request back (asyncio.timeout does, when the
        CancelledError was its own and it raised TimeoutError instead)."""
        if self._cancels > 0:
            self._cancels -= 1
        return self._cancels

    def _step(self, error: BaseException | None) -> None:
        if self._cancel_requested:
            self._cancel_requested = False
            error = asyncio.CancelledError()
        loop = self._loop
        try:
            _enter_task(loop, self)  # type: ignore[arg-type]
        except RuntimeError:  # started inside a Task: that Task stays the current one
            entered = False
        else:
            entered = True
        try:
            try:
                yielded = (self._coroutine.send(None) if error is None
                           else self._coroutine.throw(error))
            finally:
                if entered:
                    _leave_task(loop, self)  # type: ignore[arg-type]
        except StopIteration:
            self._finish(None)
            return
        except BaseException as failure:
            self._finish(failure)
            return
        if yielded is None:  # asyncio.sleep(0): resume on the loop's next pass
            self._loop.call_soon(self._step, None)
            return
        if getattr(yielded, "_asyncio_future_blocking", None) is not True:
            self._loop.call_soon(self._step, RuntimeError(
                f"a driven coroutine yielded {yielded!r}, not an asyncio future"))
            return
        yielded._asyncio_future_blocking = False
        self._waiting = yielded
        yielded.add_done_callback(self._wake)
        if self._cancel_requested and yielded.cancel():
            self._cancel_requested = False

    def _wake(self, future: asyncio.Future[Any]) -> None:
        self._waiting = None
        self._step(None)

    def _finish(self, error: BaseException | None) -> None:
        self.finished = True
        self._waiting = None
        self._done(error)
