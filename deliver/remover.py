"""Removing the messages the smarthost has accepted: small ones at once, big ones in a thread.

`Remover.remove(claim, size)` is called by a worker right after the smarthost's final 250;
the worker takes its next message as soon as it returns. The removal is `Claim.remove`:
the envelope, then the content, then the close that drops the flock.

- A message whose content is smaller than `INLINE_LIMIT` is removed there and then. Its
  unlinks take tens of microseconds; handing them to another thread costs more than that
  in CPU, because every system call of that thread must win the GIL back from the busy
  event loop (measured on the drain benchmark: ~70 us of CPU per 4 KiB message more,
  2.6 against 7.6 context switches per message).
- A bigger one is handed to one long-lived remover thread (a queue; everything queued at
  one wake-up is removed in one batch): unlinking frees its blocks, milliseconds for a big
  file, which would stall every connection of the event loop.

Until it is removed a handed-over envelope stays `.envelope.busy` and flocked, so no worker
and no recovery takes it. A crash in between leaves a `.busy` whose lock is free: the next
start puts it back and sends it again (a second copy at worst, never a loss). A removal
that fails is logged (`removal_failed`), counted, and its lock dropped, so that the
recovery finds the message in the same way.

Touches only the claims given to it, and only through `Claim.remove`.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import structlog

from spool import Claim

# Content sizes from this up go to the remover thread (unlinking 64 KiB took ~0.1 ms here,
# 1 MiB ~0.4 ms, 50 MB ~15 ms).
INLINE_LIMIT = 64 * 1024


class Remover:
    """Removes sent messages; `close()` waits until the last handed-over one is gone."""

    def __init__(self, log: Any = None, inline_limit: int = INLINE_LIMIT) -> None:
        self.log: Any = log if log is not None else structlog.get_logger("relay-deliver")
        self.inline_limit = inline_limit
        self._queue: queue.SimpleQueue[Claim | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the counts below change in two threads
        self.removed = 0
        self.failures = 0
        # Ids whose removal failed with the envelope still there (as `.busy`, lock dropped).
        self.left_behind: list[str] = []

    def remove(self, claimed: Claim, content_size: int) -> None:
        """Remove *claimed* (its message was sent), now or soon: see the module docstring.

        Takes over *claimed*: the caller must not use it afterwards.
        """
        if content_size < self.inline_limit:
            self._remove(claimed)
        else:
            self.hand_over(claimed)

    def hand_over(self, claimed: Claim) -> None:
        """Queue *claimed*, its descriptor and its lock, for the remover thread."""
        if self._thread is None:
            # Started on first use, so that a run of small messages costs no thread.
            self._thread = threading.Thread(target=self._run, name="relay-remover",
                                            daemon=True)
            self._thread.start()
        self._queue.put(claimed)

    def close(self) -> None:
        """Remove everything handed over so far, then end the thread. Blocks: call it from a
        thread of its own (`asyncio.to_thread`), after the last `remove`."""
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
        except Exception as error:  # neither thread may stop for one message's trouble
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


__all__ = ["INLINE_LIMIT", "Remover"]
