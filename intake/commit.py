"""Group commit: writer threads write and fsync messages; one committer thread commits them
in batches.

Sessions hand their message (content chunks + envelope) to `GroupCommitter` and await a
future. A small pool of writer threads writes and fsyncs each message through
`spool.MessageWriter` (fsyncs of different files proceed in parallel: the file system
folds them into shared journal commits). Written messages go to one committer thread,
which takes everything that arrived while it was busy with the previous batch and commits
it with `Spool.commit`: each `.envelope.new` renamed, then ONE directory fsync for the
batch. The futures are resolved in one event-loop callback per batch. So the event loop
never waits for the disk and the directory fsync is shared by every waiting session.

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
WRITER_THREADS = 8  # parallel fsyncs; more brings nothing on a journaling file system


class GroupCommitter:
    """The writer threads and the committer thread; `start()` in the loop, `stop()` to drain."""

    def __init__(self, spool: Spool, writers: int = WRITER_THREADS) -> None:
        self.spool = spool
        self._writes: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._commits: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer_count = writers
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.messages = 0

    def start(self) -> None:
        """Start the threads (call from the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._threads = [threading.Thread(target=self._commit_loop, name="relay-committer",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._write_loop, name=f"relay-writer-{n}",
                                           daemon=True) for n in range(self._writer_count)]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Finish the queued work, then end the threads."""
        if not self._threads:
            return
        committer, writers = self._threads[0], self._threads[1:]
        for _ in writers:
            self._writes.put(_STOP)
        for thread in writers:
            await asyncio.to_thread(thread.join)
        self._commits.put(_STOP)  # after the writers, so that their last messages commit
        await asyncio.to_thread(committer.join)
        self._threads = []

    def _submit(self, job: _Job) -> asyncio.Future[PendingMessage]:
        # Jobs queued before start() wait for the threads (the committer's first batch).
        (self._commits if job.pending is not None else self._writes).put(job)
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

    # -- the threads -------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (job := self._writes.get()) is not None:
            self._write(job)
            if job.outcome is None:
                self._commits.put(job)
            else:
                self._deliver([job])

    def _write(self, job: _Job) -> None:
        """Write and fsync content and `.envelope.new`; sets outcome unless a commit follows."""
        assert job.envelope is not None
        try:
            writer = self.spool.writer()
        except OSError as error:
            job.outcome = error
            return
        try:
            for chunk in job.content:
                writer.write(chunk)
            job.pending = writer.finish(job.envelope)
        except BaseException as error:  # reported to the session
            writer.abort()
            job.outcome = error
            return
        if not job.commit:
            job.outcome = job.pending

    def _commit_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._commits.get()
            batch: list[_Job] = []
            if first is _STOP:
                stopping = True
            else:
                batch.append(first)
            # Everything that arrived while the previous batch was syncing joins this one.
            while True:
                try:
                    job = self._commits.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                else:
                    batch.append(job)
            if batch:
                self._commit(batch)
                self._deliver(batch)

    def _commit(self, batch: list[_Job]) -> None:
        pendings = [job.pending for job in batch if job.pending is not None]
        try:
            results: list[OSError | None] = self.spool.commit(pendings)
        except BaseException as error:  # every message of the batch fails
            for pending in pendings:
                pending.discard()
            failure = error if isinstance(error, OSError) else OSError(str(error))
            results = [failure] * len(pendings)
        for job, result in zip(batch, results, strict=True):
            job.outcome = job.pending if result is None else result
        self.batches += 1
        self.messages += len(batch)

    def _deliver(self, batch: list[_Job]) -> None:
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
