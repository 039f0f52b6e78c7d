"""Group commit for relay-intake: sessions hand messages to the storage process and await.

`GroupCommitter` starts `intake.storage_process` and talks to it over a pipe pair (frames
in `intake.frames`). A session's `store()` costs the event loop one buffered pipe write;
the storage process writes, fsyncs and commits everything that arrived while it was busy
with the previous batch (one directory fsync per batch) and answers each request. Doing
the file work in another process keeps it off this process's interpreter lock: with a
thread, every file system call in the thread made the event loop wait to get the lock
back, which cost more than the disk itself.

If the storage process dies (it never should), every waiting session gets an OSError
(answered 451, nothing accepted) and a new storage process is started. Writes nothing
itself: the files are the storage process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import socket
import stat
import sys
import time

import structlog

from common.logs import Logger
from common.metrics import IntakeMetrics
from common.process import USER_ENV
from intake.frames import (
    OP_COMMIT,
    OP_PREPARE,
    OP_STORE,
    REPLY,
    request_frame,
)
from spool import Envelope, PendingMessage, Spool, format_envelope

# Content bigger than this is handed over in slices of this size with flow control
# (drain), so that a 50 MB message does not sit in the pipe transport's buffer a second time.
DRAIN_ABOVE = 256 * 1024
log: Logger = structlog.get_logger("relay-intake")


class GroupCommitter:
    """The storage process and the requests waiting for it."""

    def __init__(self, spool: Spool, sync: str = "syncfs") -> None:
        self.spool = spool
        self.sync = sync
        self._process: asyncio.subprocess.Process | None = None  # its own storage process
        # --processes: a socket to the storage process all workers share (until it ends)
        self.shared: socket.socket | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._stdout: asyncio.StreamReader | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[str]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._stopping = False
        self._last_batch = 0
        self.messages = 0  # committed by the storage processes of this run
        self.batches = 0  # the batches they were committed in
        self.user: str | None = None  # --user: the storage process runs as this user
        self.metrics: IntakeMetrics | None = None  # --metrics: commit latency, batch sizes
        self._committing: dict[int, float] = {}  # request id -> when it was sent (commits)
        self._batch_sizes: dict[int, int] = {}  # batch number -> commits answered so far
        self._batch_report_due = False

    @property
    def running(self) -> bool:
        """The storage process is there and has not ended."""
        if self._stdin is None or self._stdin.is_closing():
            return False
        return self._process is None or self._process.returncode is None

    async def start(self) -> None:
        """Start the storage process, or connect to the shared one (from the event loop)."""
        self._last_batch = 0  # a new process numbers its batches from 1 again
        if self.shared is not None:
            self._stdout, self._stdin = await asyncio.open_unix_connection(sock=self.shared)
            self.shared = None  # once: if that process ends, this worker starts its own
            self._reader = asyncio.create_task(self._read_replies(None))
            return
        environment = dict(os.environ)
        environment["RELAY_TEST_CRASH_PARENT"] = "1"  # a test crash there is intake's crash
        if self.user:
            environment[USER_ENV] = self.user  # it switches before reading a message
        self._process = await asyncio.create_subprocess_exec(
            # -P: the working directory is not put on sys.path (a `spool` folder there
            # would shadow the spool package).
            sys.executable, "-P", "-m", "intake.storage_process", str(self.spool.path),
            self.sync,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=environment,
        )
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        self._reader = asyncio.create_task(self._read_replies(self._process))

    async def stop(self) -> None:
        """Let the storage process finish what it has, then end it."""
        self._stopping = True
        if self._stdin is None:
            return
        with contextlib.suppress(OSError):
            if self._process is None and self._stdin.can_write_eof():
                self._stdin.write_eof()  # shared: read the replies to what was sent
            else:
                self._stdin.close()
        process = self._process
        if process is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), 30)
            if process.returncode is None:
                process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):  # the shared one: its last batch
                await asyncio.wait_for(asyncio.shield(self._reader), 30)
            self._reader.cancel()
        self._stdin.close()
        self._process = None
        self._stdin = self._stdout = None

    async def store(self, content: tuple[bytes, ...], envelope: Envelope) -> PendingMessage:
        """Write and commit one message; returns when it is durable. Raises OSError."""
        return self._pending(await self._request(OP_STORE, format_envelope(envelope), content))

    async def prepare(self, content: tuple[bytes, ...], envelope: Envelope) -> PendingMessage:
        """Write one message as `.envelope.new` (for filters); not yet accepted."""
        return self._pending(await self._request(OP_PREPARE, format_envelope(envelope), content))

    async def commit(self, pending: PendingMessage) -> PendingMessage:
        """Accept a prepared message (fsyncs, rename, the batch's directory fsync)."""
        return self._pending(await self._request(OP_COMMIT, pending.message_id.encode(), ()))

    def _pending(self, message_id: str) -> PendingMessage:
        return PendingMessage(self.spool, message_id)

    async def _request(self, op: bytes, meta: bytes, content: tuple[bytes, ...]) -> str:
        stdin = self._stdin
        if stdin is None or not self.running:
            raise OSError(errno.EIO, "the storage process is not running")
        request_id = next(self._ids)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        if self.metrics is not None and op in (OP_STORE, OP_COMMIT):
            self._committing[request_id] = time.monotonic()
        size = sum(len(chunk) for chunk in content)
        try:
            async with self._lock:  # one request's frames are never interleaved with another's
                frame = request_frame(op, request_id, meta, size)
                if size <= DRAIN_ABOVE:  # one pipe write (one system call) for the request
                    stdin.write(b"".join((frame, *content)))
                else:  # a big message: in slices, so the pipe's buffer never holds a copy
                    stdin.write(frame)
                    for chunk in content:
                        view = memoryview(chunk)
                        for start in range(0, len(view), DRAIN_ABOVE):
                            stdin.write(view[start : start + DRAIN_ABOVE])
                            await stdin.drain()
        except (ConnectionError, RuntimeError) as error:
            self._waiting.pop(request_id, None)
            raise OSError(errno.EIO, f"the storage process is gone: {error}") from None
        return await future

    async def _read_replies(self, process: asyncio.subprocess.Process | None) -> None:
        """Answer the waiting requests; *process* is this worker's own, None when shared."""
        stdout = self._stdout
        assert stdout is not None
        try:
            while True:
                header = await stdout.readexactly(REPLY.size)
                request_id, code, batch, size = REPLY.unpack(header)
                if batch != self._last_batch:
                    self._last_batch = batch
                    self.batches += 1
                text = (await stdout.readexactly(size)).decode("utf-8", "replace")
                future = self._waiting.pop(request_id, None)
                if future is None or future.done():
                    continue
                sent = self._committing.pop(request_id, None)
                if code:
                    future.set_exception(OSError(code, text))
                else:
                    future.set_result(text)
                    self.messages += 1
                    if sent is not None:
                        self._count_commit(batch, sent)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        failure = OSError(errno.EIO, "the storage process ended; message not stored")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(failure)
        self._waiting.clear()
        if not self._stopping:
            if process is None:
                assert self._stdin is not None
                self._stdin.close()
                log.error("storage_process_died", outcome="starting one of its own",
                          reason="the storage process shared by the workers ended")
            else:
                await process.wait()
                log.error("storage_process_died", outcome="restarting",
                          reason=f"exit status {process.returncode}")
            await self.start()


    def _count_commit(self, batch: int, sent: float) -> None:
        """--metrics: the commit's latency now; its batch's size once the replies that came
        together have all been read (the loop runs callbacks only when the reader waits)."""
        assert self.metrics is not None
        self.metrics.commit_seconds.observe(time.monotonic() - sent)
        self._batch_sizes[batch] = self._batch_sizes.get(batch, 0) + 1
        if not self._batch_report_due:
            self._batch_report_due = True
            asyncio.get_running_loop().call_soon(self._report_batches)

    def _report_batches(self) -> None:
        self._batch_report_due = False
        if self.metrics is not None:
            for size in self._batch_sizes.values():
                self.metrics.commit_batch.observe(size)
        self._batch_sizes.clear()


async def abandoned_commit(committer: GroupCommitter, pending: PendingMessage) -> bool:
    """After a filter's exit 100/102: commit the message if it left both files, as
    E-MailRelay makes "a token effort" to; otherwise remove whatever is left. True if kept."""
    try:
        present = all(stat.S_ISREG(os.lstat(path).st_mode)
                      for path in (pending.content_path, pending.new_path))
    except OSError:
        present = False
    if present:
        try:
            await committer.commit(pending)
            return True
        except OSError as error:
            log.warning("abandoned_commit_failed", msg_id=pending.message_id, reason=str(error))
    pending.discard()
    return False
