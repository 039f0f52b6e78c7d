"""Group commit: one worker thread writes, fsyncs and commits messages in batches.

Sessions hand their message (content bytes + envelope) to `GroupCommitter` and await a
future. The worker takes everything that arrived while it was busy with the previous
batch, writes and fsyncs each message through `spool.MessageWriter`, then commits them
all with `Spool.commit`, which renames each `.envelope.new` and fsyncs the directory ONCE
for the batch. The futures are resolved together, in one event-loop callback, when the
batch is durable. So the event loop never waits for the disk, and the directory fsync, the
dominant cost, is shared by every session that was waiting.

Writes only through `spool` (content, `.envelope.new`, the rename); touches nothing else.
A message whose write fails is aborted (its partial files removed) and its future carries
the OSError; `Spool.commit` withdraws a batch whose directory fsync failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from dataclasses import dataclass, field

from spool import Envelope, PendingMessage, Spool


@dataclass
class _Job:
    """One request: write (and maybe commit) a new message, or commit a written one."""

    future: asyncio.Future[PendingMessage]
    content: tuple[bytes, ...] = ()
    envelope: Envelope | None = None
    pending: PendingMessage | None = None
    commit: bool = True
    outcome: PendingMessage | BaseException | None = field(default=None)


_STOP = None


class GroupCommitter:
    """The worker thread and its queue; `start()` in the event loop, `stop()` to drain."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.messages = 0

    def start(self) -> None:
        """Start the worker (call from the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="relay-committer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish the queued work, then end the worker."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _submit(self, job: _Job) -> asyncio.Future[PendingMessage]:
        # Jobs queued before start() wait for the worker and then form its first batch.
        self._queue.put(job)
        return job.future

    def _new_future(self) -> asyncio.Future[PendingMessage]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.create_future()

    async def store(self, content: tuple[bytes, ...], envelope: Envelope) -> PendingMessage:
        """Write and commit one message; returns when it is durable. Raises OSError."""
        return await self._submit(_Job(self._new_future(), content, envelope))

    async def prepare(self, content: tuple[bytes, ...], envelope: Envelope) -> PendingMessage:
        """Write and fsync one message as `.envelope.new` (for filters); not yet accepted."""
        return await self._submit(_Job(self._new_future(), content, envelope, commit=False))

    async def commit(self, pending: PendingMessage) -> PendingMessage:
        """Accept a prepared message (rename + the batch's directory fsync). Raises OSError."""
        return await self._submit(_Job(self._new_future(), pending=pending))

    # -- the worker thread -----------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            batch: list[_Job] = []
            if first is _STOP:
                stopping = True
            else:
                batch.append(first)
            # Everything that arrived while the previous batch was syncing joins this one.
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                else:
                    batch.append(job)
            if batch:
                self._process(batch)

    def _process(self, batch: list[_Job]) -> None:
        to_commit: list[_Job] = []
        for job in batch:
            if job.pending is not None:
                to_commit.append(job)
                continue
            assert job.envelope is not None
            try:
                writer = self.spool.writer()
            except OSError as error:
                job.outcome = error
                continue
            try:
                for chunk in job.content:
                    writer.write(chunk)
                job.pending = writer.finish(job.envelope)
            except BaseException as error:  # reported to the session
                writer.abort()
                job.outcome = error
                continue
            if job.commit:
                to_commit.append(job)
            else:
                job.outcome = job.pending
        if to_commit:
            pendings = [job.pending for job in to_commit if job.pending is not None]
            try:
                results: list[OSError | None] = self.spool.commit(pendings)
            except BaseException as error:  # every message of the batch fails
                for pending in pendings:
                    pending.discard()
                results = [error if isinstance(error, OSError) else OSError(str(error))] * len(
                    pendings
                )
            for job, result in zip(to_commit, results, strict=True):
                job.outcome = job.pending if result is None else result
        self.batches += 1
        self.messages += len(batch)
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(_resolve, batch)


def _resolve(batch: list[_Job]) -> None:
    """Runs in the event loop: hand each session its outcome."""
    for job in batch:
        if job.future.done():  # the session went away (cancelled)
            if not job.commit and isinstance(job.outcome, PendingMessage):
                job.outcome.discard()  # written for filters that will never run
            continue
        if isinstance(job.outcome, BaseException):
            job.future.set_exception(job.outcome)
        else:
            assert job.outcome is not None
            job.future.set_result(job.outcome)
