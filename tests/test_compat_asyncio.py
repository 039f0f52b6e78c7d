"""common/compat_asyncio.py: Driven runs a coroutine as a Task would (results, exceptions,
sleeps, cancellation, asyncio.timeout and wait_for: it is the current task while it runs)
on the internals of asyncio it relies on; the early-talker
check works with no greeting delay; and the socket transport still reads at most its
`max_size`, which relay-deliver sets.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

from support.intake import IntakeThread

from common import compat_asyncio


def drive(coroutine: Any) -> tuple[compat_asyncio.Driven, list[BaseException | None]]:
    ended: list[BaseException | None] = []
    driven = compat_asyncio.Driven(coroutine, ended.append, asyncio.get_running_loop())
    driven.start()
    return driven, ended


def test_asyncio_futures_still_announce_themselves_when_awaited() -> None:
    """The internals Driven reads: Future.__await__ yields the future itself with
    _asyncio_future_blocking set; asyncio.sleep(0) yields None."""

    async def check() -> None:
        future = asyncio.get_running_loop().create_future()
        awaiting = future.__await__()
        assert next(awaiting) is future and future._asyncio_future_blocking is True
        sleeping = asyncio.sleep(0).__await__()
        assert next(sleeping) is None
        sleeping.close()
        awaiting.close()

    asyncio.run(check())


def test_a_coroutine_that_never_waits_ends_inside_start() -> None:
    """No Task and no pass of the loop: done is called before start() returns."""

    async def check() -> None:
        steps: list[str] = []

        async def command() -> None:
            steps.append("ran")

        driven, ended = drive(command())
        assert steps == ["ran"] and ended == [None] and driven.finished
        assert asyncio.current_task() is not None  # the test's own task, untouched

    asyncio.run(check())


def test_a_waiting_coroutine_gets_results_exceptions_and_sleeps() -> None:
    """Resumed by what it waits for: a future's result, a future's exception (caught
    inside), asyncio.sleep(0) and a timed sleep; ends with its own exception."""

    async def check() -> None:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        seen: list[object] = []

        async def command() -> None:
            seen.append(await first)
            try:
                await second
            except KeyError as error:
                seen.append(error.args[0])
            await asyncio.sleep(0)
            await asyncio.sleep(0.01)
            raise ValueError("the end")

        driven, ended = drive(command())
        assert seen == [] and ended == []
        first.set_result("one")
        await asyncio.sleep(0)
        assert seen == ["one"]
        second.set_exception(KeyError("two"))
        for _ in range(50):
            if ended:
                break
            await asyncio.sleep(0.01)
        assert seen == ["one", "two"] and driven.finished
        (error,) = ended
        assert isinstance(error, ValueError) and str(error) == "the end"

    asyncio.run(check())


def test_cancel_reaches_the_coroutine_where_it_waits() -> None:
    """cancel() while it waits: CancelledError at its await, its finally runs, and done
    gets the CancelledError; cancel() asked while it runs takes effect at its next wait."""

    async def check() -> None:
        loop = asyncio.get_running_loop()
        cleaned: list[str] = []
        holder: list[compat_asyncio.Driven] = []

        async def waits() -> None:
            try:
                await loop.create_future()
            finally:
                cleaned.append("waits")

        driven, ended = drive(waits())
        driven.cancel()
        await asyncio.sleep(0)
        assert cleaned == ["waits"] and len(ended) == 1
        assert isinstance(ended[0], asyncio.CancelledError)

        async def cancels_itself() -> None:
            holder[0].cancel()  # as aiosmtpd's QUIT cancels "its" task
            try:
                await loop.create_future()
            finally:
                cleaned.append("itself")

        ended2: list[BaseException | None] = []
        holder.append(compat_asyncio.Driven(cancels_itself(), ended2.append, loop))
        holder[0].start()
        await asyncio.sleep(0)
        assert cleaned[-1] == "itself" and isinstance(ended2[0], asyncio.CancelledError)

        async def quick() -> None:
            holder[1].cancel()  # asked, but it never waits: it just ends

        ended3: list[BaseException | None] = []
        holder.append(compat_asyncio.Driven(quick(), ended3.append, loop))
        holder[1].start()
        assert ended3 == [None]
        holder[1].cancel()  # after the end: nothing
        assert ended3 == [None]

    asyncio.run(check())


def drive_outside_a_task(coroutine: Any, loop: asyncio.AbstractEventLoop,
                         ) -> tuple[list[compat_asyncio.Driven], asyncio.Future[Any]]:
    """Start *coroutine* from a plain callback, as intake's protocol callbacks do (no Task
    is current there); the future gets what done was called with."""
    ended: asyncio.Future[Any] = loop.create_future()
    holder: list[compat_asyncio.Driven] = []

    def begin() -> None:
        holder.append(compat_asyncio.Driven(coroutine, ended.set_result, loop))
        holder[0].start()
        assert asyncio.current_task(loop) is None  # registered only while it runs

    loop.call_soon(begin)
    return holder, ended


def test_a_driven_coroutine_is_the_current_task_so_timeouts_work() -> None:
    """asyncio.timeout and wait_for in a driven coroutine, as intake's PROXY header, greeting
    delay, filters and verifiers use them: on Python 3.12 and later both need the current
    task, and failed with "Timeout should be used inside a task" before Driven was one."""

    async def check() -> None:
        loop = asyncio.get_running_loop()
        seen: dict[str, Any] = {}

        async def quick() -> int:
            await asyncio.sleep(0)
            return 42

        async def command() -> None:
            seen["current"] = asyncio.current_task()
            try:
                async with asyncio.timeout(0.05):
                    await loop.create_future()
            except TimeoutError:
                seen["timeout"] = "expired"
            seen["wait_for"] = await asyncio.wait_for(quick(), 5)
            try:
                await asyncio.wait_for(loop.create_future(), 0.05)
            except TimeoutError:
                seen["wait_for expired"] = True
            seen["cancelling"] = seen["current"].cancelling()

        holder, ended = drive_outside_a_task(command(), loop)
        assert await asyncio.wait_for(ended, 10) is None
        assert seen == {"current": holder[0], "timeout": "expired", "wait_for": 42,
                        "wait_for expired": True, "cancelling": 0}

    asyncio.run(check())


def test_a_cancel_during_a_timeout_is_a_cancellation_not_a_timeout() -> None:
    """The session's own cancel (a QUIT, a lost connection) inside asyncio.timeout ends the
    coroutine with CancelledError, as it would in a Task."""

    async def check() -> None:
        loop = asyncio.get_running_loop()
        cleaned: list[str] = []

        async def command() -> None:
            try:
                async with asyncio.timeout(30):
                    await loop.create_future()
            finally:
                cleaned.append("done")

        holder, ended = drive_outside_a_task(command(), loop)
        await asyncio.sleep(0.05)
        assert holder[0].cancel() and holder[0].cancelling() == 1
        error = await asyncio.wait_for(ended, 10)
        assert isinstance(error, asyncio.CancelledError) and cleaned == ["done"]
        assert not holder[0].cancel()  # it has ended

    asyncio.run(check())


def test_a_coroutine_yielding_something_else_is_told_so() -> None:
    """A bare `yield` of a non-future (not asyncio's protocol) raises RuntimeError in it."""

    class Odd:
        def __await__(self) -> Any:
            yield "not a future"

    async def check() -> None:
        async def command() -> None:
            await Odd()

        _driven, ended = drive(command())
        await asyncio.sleep(0)
        assert len(ended) == 1 and isinstance(ended[0], RuntimeError)

    asyncio.run(check())


def test_early_talker_is_refused_with_no_greeting_delay(spool_dir: Path) -> None:
    """With --greeting-delay 0 a client whose command is already there when the session
    starts gets 554 5.5.1. The server's loop is held for 0.5 s so that the bytes arrive
    before it accepts the connection."""
    with IntakeThread(spool_dir) as intake:
        assert intake.server is not None and intake.server.loop is not None
        intake.server.loop.call_soon_threadsafe(time.sleep, 0.5)
        time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as sock:
            sock.sendall(b"EHLO early.test\r\n")
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"554 5.5.1"), reply
        with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as polite:
            assert polite.recv(1024).startswith(b"220")  # one that waits is greeted


def test_the_socket_transport_reads_at_most_the_size_set() -> None:
    """With the read size set to 7, 100 bytes sent at once arrive in pieces of 7 or less."""
    received: list[bytes] = []

    class Collect(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.append(data)

    async def run() -> bool:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        transport, _protocol = await loop.create_connection(Collect, sock=ours)
        assert isinstance(getattr(transport, "max_size", None), int), \
            "asyncio's socket transport has no max_size any more"
        changed = compat_asyncio.set_read_size(transport, 7)
        theirs.sendall(b"x" * 100)
        for _ in range(200):
            if sum(map(len, received)) >= 100:
                break
            await asyncio.sleep(0.01)
        transport.close()
        theirs.close()
        return changed

    assert asyncio.run(run()) is True
    assert sum(map(len, received)) == 100
    assert max(map(len, received)) <= 7, "the transport no longer reads max_size at a time"


def test_a_transport_without_the_setting_is_left_alone() -> None:
    """An object without max_size (uvloop's transports, TLS) is not changed."""

    class Other:
        pass

    other = Other()
    assert compat_asyncio.set_read_size(other, 7) is False
    assert not hasattr(other, "max_size")
