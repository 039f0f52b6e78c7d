"""The remover: one long-lived thread that deletes the messages the smarthost has accepted.

A worker hands its `spool.Claim` over right after the smarthost's final 250 and takes its
next message at once; this thread removes the claims in the order they came
(`Claim.remove`: the envelope, then the content, then the close that drops the flock),
everything queued at one wake-up in one batch. Unlinking frees the content's blocks, the
slowest system call per message (on a file system mounted with `discard` it waits for the
device, ~0.1 ms for 4 KiB, ~15 ms for 50 MB), which would stall every connection of the
event loop; and one thread fed by a queue costs far less per message than a round trip
through the default thread pool. The queue is bounded (`MAX_QUEUED`): each waiting claim
holds a descriptor, so when the thread falls that far behind a worker removes its own.

(Removing small messages on the event loop itself was measured too: ~10% less CPU per
message, as the thread's every system call has to win the GIL back from the busy loop,
but a ~10% lower drain rate, as the loop then waits for the device.)

Until it is removed a handed-over envelope stays `.envelope.busy` and flocked, so no worker
and no recovery takes it. A crash in between leaves a `.busy` whose lock is free: the next
start puts it back and sends it again (a second copy at worst, never a loss). A removal
that fails is logged (`removal_failed`), counted, and its lock dropped, so that the
recovery finds the message in the same way.

Touches only the claims handed to it, and only through `Claim.remove`.
"""

from __future__ import annotations

import os
import queue
import threading

import structlog

from common.logs import Logger
from spool import Claim

# At most this many claims (each an open descriptor) wait for the thread. Beyond, a worker
# removes its own message: the event loop slows down rather than run out of descriptors.
MAX_QUEUED = 256


class Remover:
    """Removes handed-over claims in a thread of its own; `close()` waits for the last one."""

    def __init__(self, log: Logger | None = None, max_queued: int = MAX_QUEUED) -> None:
        self.log: Logger = log if log is not None else structlog.get_logger("relay-deliver")
        self.max_queued = max_queued
        self._queue: queue.SimpleQueue[Claim | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the counts below may change in two threads at once
        self.removed = 0
        self.failures = 0
        # Ids whose removal failed with the envelope still there (as `.busy`, lock dropped).
        self.left_behind: list[str] = []

    def hand_over(self, claimed: Claim) -> None:
        """Take over *claimed*, its descriptor and its lock: it is removed soon.

        The caller must not use *claimed* afterwards (it is closed in the remover thread).
        """
        if self._queue.qsize() >= self.max_queued:
            self._remove(claimed)  # the thread is far behind: do this one here and now
            return
        if self._thread is None:
            # Started on first use, so that a run that sends nothing costs no thread.
            self._thread = threading.Thread(target=self._run, name="relay-remover",
                                            daemon=True)
            self._thread.start()
        self._queue.put(claimed)

    def close(self) -> None:
        """Remove everything handed over so far, then end the thread. Blocks: call it from a
        thread of its own (`asyncio.to_thread`), after the last `hand_over`."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:  # whatever else is queued now, without sleeping again
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for claimed in batch:
                if claimed is None:
                    stopping = True  # close(): nothing is handed over after it
                else:
                    self._remove(claimed)

    def _remove(self, claimed: Claim) -> None:
        try:
            claimed.remove()  # closes the descriptor (drops the lock) even when it fails
        except Exception as error:  # the thread must outlive any one message's trouble
            kept = os.path.lexists(claimed.envelope_path)
            with self._lock:
                self.failures += 1
                if kept:
                    self.left_behind.append(claimed.message_id)
            reason = (error.strerror or str(error)) if isinstance(error, OSError) else repr(error)
            self.log.error("removal_failed", msg_id=claimed.message_id, reason=reason,
                           envelope_kept=kept)
        else:
            with self._lock:
                self.removed += 1


__all__ = ["MAX_QUEUED", "Remover"]
