"""The storage process: writes, syncs and commits messages for relay-intake, in batches.

relay-intake starts it (`python -m intake.storage_process SPOOL_DIR`) and talks to it over
a pipe pair (see `intake.commit` for the frames). It does all of intake's file work, so
the SMTP event loop never waits for the disk and never shares its interpreter lock with a
thread that does. Each batch is every request that has arrived: the files of all its
messages are written, then made durable together (`syncfs`, the default: one syncfs(2) of
the spool's file system for the whole batch; `fsync`: an fsync of every file, several at
once), renamed into place, and the directory fsynced once.

With `--processes N`, one storage process serves all N intake workers, each over a socket
of its own (`intake.shared_storage`): a batch then takes what every worker sent, so the
workers share its flushes instead of each paying for its own.

Reads requests on stdin (or those sockets), answers there; writes message files only
through `spool`. Ignores SIGINT and SIGTERM: it ends when intake closes the pipe (every
worker its socket), after the last batch, so a Ctrl-C to the process group cannot cut a
batch short.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from common.process import USER_ENV, drop_privileges
from intake.frames import (
    MAX_BATCH,
    OP_COMMIT,
    OP_PREPARE,
    OP_STORE,
    REQUEST,
    reply_frame,
)
from spool import PendingMessage, Spool
from spool.store import MessageWriter, sync_batch, sync_pending

READ_SIZE = 1 << 20
# fsyncs of one batch run side by side: the file system folds them into shared journal
# commits. The threads are this process's own, so they never slow intake's event loop.
SYNC_THREADS = 8


@dataclass
class Request:
    """One request of a batch and, once written, its pending message or its error."""

    op: bytes
    request_id: int
    pending: PendingMessage | None = None
    error: OSError | None = None


class StorageWorker:
    """Reads frames from a descriptor, handles them in batches, answers on another."""

    def __init__(self, spool: Spool, read_fd: int, write_fd: int, sync: str = "syncfs") -> None:
        self.spool = spool
        self.sync = sync
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.buffer = bytearray()
        self.eof = False
        self.batches = 0
        # Only the fsync mode syncs file by file; syncfs needs no threads.
        self.executor = (ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="relay-fsync")
                         if sync == "fsync" else None)

    def _fill(self, block: bool) -> bool:
        """Read what is there (waiting for it if *block*); False at end of input."""
        if not block and not select.select([self.read_fd], [], [], 0)[0]:
            return True
        try:
            data = os.read(self.read_fd, READ_SIZE)
        except ConnectionResetError:  # a channel's worker died
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill(block=True):
                raise EOFError("intake closed the pipe in the middle of a request")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def _next_request(self, block: bool) -> Request | None:
        """The next whole request: waits for it if *block*, else only if it has begun."""
        if not self.buffer and (not self._fill(block) or not self.buffer):
            return None
        op, request_id, meta_size, content_size = REQUEST.unpack(self._take(REQUEST.size))
        meta = self._take(meta_size)
        request = Request(op, request_id)
        if op in (OP_STORE, OP_PREPARE):
            self._write_message(request, meta, content_size)
        elif op == OP_COMMIT:
            request.pending = PendingMessage(self.spool, meta.decode("utf-8"))
        else:
            raise ValueError(f"unknown request {op!r}")
        return request

    def _write_message(self, request: Request, envelope: bytes, content_size: int) -> None:
        """Write the content (streamed when big) and `.envelope.new`, without fsync."""
        writer: MessageWriter | None = None
        remaining = content_size
        try:
            writer = self.spool.writer()
            while remaining:
                if not self.buffer:
                    self._fill(block=True)
                    if self.eof:
                        raise EOFError("intake closed the pipe in the middle of a message")
                taken = min(remaining, len(self.buffer))
                writer.write(bytes(self.buffer[:taken]))
                del self.buffer[:taken]
                remaining -= taken
            request.pending = writer.finish(envelope, sync=False)
        except OSError as error:
            if writer is not None:
                writer.abort()
            request.error = error
            self._take(remaining)  # keep the stream in step: skip the rest of the message
        except BaseException:
            if writer is not None:
                writer.abort()
            raise

    def gather(self, batch: list[tuple[StorageWorker, Request]]) -> None:
        """Add to *batch* every whole request that has arrived (the first one waited for).

        A request cut off by the end of input is dropped (its files removed) and the
        channel ends: its intake worker is gone, the other channels go on.
        """
        try:
            first = self._next_request(block=True)
            if first is None:
                return
            batch.append((self, first))
            while len(self.buffer) >= REQUEST.size or (
                not self.eof and select.select([self.read_fd], [], [], 0)[0]
            ):
                more = self._next_request(block=False)
                if more is None:
                    break
                batch.append((self, more))
                if len(batch) >= MAX_BATCH:
                    break
        except EOFError:
            self.eof = True
            self.buffer.clear()

    def run(self) -> None:
        """Serve until intake closes the pipe."""
        serve([self])

    def answer(self, requests: list[Request], batch_number: int) -> None:
        """Send the replies to *requests*, all in one write."""
        answer = bytearray()
        for request in requests:
            if request.error is not None:
                code = request.error.errno or 0
                answer += reply_frame(request.request_id, code, batch_number,
                                      str(request.error))
            else:
                message_id = request.pending.message_id if request.pending else ""
                answer += reply_frame(request.request_id, 0, batch_number, message_id)
        view = memoryview(answer)
        try:
            while view:
                view = view[os.write(self.write_fd, view) :]
        except (BrokenPipeError, ConnectionResetError):
            # The worker is gone: its clients got no reply (they send again: at worst a
            # duplicate, never a loss). The other channels go on.
            self.eof = True
            self.buffer.clear()


def commit_batch(worker: StorageWorker, batch: list[Request]) -> None:
    """Make the batch's messages durable together and accept them (errors per request)."""
    commits = [r for r in batch if r.op in (OP_STORE, OP_COMMIT) and r.error is None]
    pendings = [r.pending for r in commits if r.pending is not None]
    if not pendings:
        return
    try:
        if worker.sync == "syncfs":
            synced = sync_batch(worker.spool.path, pendings)
        else:
            synced = sync_pending(pendings, worker.executor)
        kept = [p for p, error in zip(pendings, synced, strict=True) if error is None]
        committed = iter(worker.spool.commit(kept))
        results = [error if error is not None else next(committed) for error in synced]
    except OSError as error:
        for pending in pendings:
            pending.discard()
        results = [error] * len(pendings)
    for request, result in zip(commits, results, strict=True):
        request.error = result


def serve(channels: list[StorageWorker]) -> None:
    """Serve every channel until each has ended: one batch takes what all of them sent.

    With several intake workers (`--processes`) sharing this process, the messages of all
    of them are made durable by one syncfs and one directory fsync per batch.
    """
    open_channels = list(channels)
    batch_number = 0
    while open_channels:
        if len(open_channels) == 1:
            ready = open_channels
        else:
            readable = set(select.select([c.read_fd for c in open_channels], [], [])[0])
            ready = [c for c in open_channels
                     if c.read_fd in readable or len(c.buffer) >= REQUEST.size]
        batch: list[tuple[StorageWorker, Request]] = []
        for channel in ready:
            channel.gather(batch)
        _drop_ended(channels, open_channels)
        if not batch:
            continue
        batch_number += 1
        for channel in channels:
            channel.batches = batch_number
        commit_batch(channels[0], [request for _channel, request in batch])
        for channel in channels:
            mine = [request for owner, request in batch if owner is channel]
            if mine:
                channel.answer(mine, batch_number)
        _drop_ended(channels, open_channels)


def _drop_ended(channels: list[StorageWorker], open_channels: list[StorageWorker]) -> None:
    """Stop serving the channels whose input has ended and whose requests are all read."""
    for channel in [c for c in open_channels if c.eof and not c.buffer]:
        open_channels.remove(channel)
        if len(channels) > 1:
            os.close(channel.read_fd)  # its worker's reader sees the end now


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m intake.storage_process SPOOL_DIR [fsync|syncfs] [FD,...]`.

    Without descriptors it serves one intake process on stdin and stdout; with them, each
    descriptor is a connected socket to one intake worker (`intake.shared_storage`).
    """
    arguments = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # intake started as root with --user: become that user before the first message.
    drop_privileges(os.environ.pop(USER_ENV, None))
    spool = Spool(arguments[0], check=False)  # intake checked it before starting us
    try:
        sync = arguments[1] if len(arguments) > 1 else "syncfs"
        if len(arguments) > 2:
            serve([StorageWorker(spool, int(fd), int(fd), sync)
                   for fd in arguments[2].split(",")])
        else:
            StorageWorker(spool, sys.stdin.fileno(), sys.stdout.fileno(), sync).run()
    except (EOFError, BrokenPipeError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
