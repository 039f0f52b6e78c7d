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
would in a Task. Inside a driven coroutine there is no current task: code that needs one
(`asyncio.timeout`, Python 3.12's `wait_for`) must run in a Task of its own.
"""

from __future__ import annotations

import asyncio
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

    __slots__ = ("_cancel_requested", "_coroutine", "_done", "_loop", "_waiting", "finished")

    def __init__(self, coroutine: Coroutine[Any, Any, Any],
                 done: Callable[[BaseException | None], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._coroutine = coroutine
        self._done = done
        self._loop = loop
        self._waiting: asyncio.Future[Any] | None = None
        self._cancel_requested = False
        self.finished = False

    def start(self) -> None:
        """Run the coroutine now, up to its first wait (or to its end)."""
        self._step(None)

    def cancel(self) -> None:
        """Raise CancelledError in the coroutine where it waits (at once if it waits on a
        future that can still be cancelled, else when it next runs or waits)."""
        if self.finished:
            return
        waiting = self._waiting
        if waiting is not None and waiting.cancel():
            return
        self._cancel_requested = True

    def _step(self, error: BaseException | None) -> None:
        if self._cancel_requested:
            self._cancel_requested = False
            error = asyncio.CancelledError()
        try:
            yielded = (self._coroutine.send(None) if error is None
                       else self._coroutine.throw(error))
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
