"""Fill a spool directory quickly with the spool library (not timed by any benchmark).

Each message is written by `MessageWriter` with `finish(sync=False)` and accepted by
`Spool.commit` in large batches; two worker processes share the work for big spools; one
`os.sync()` at the end so that write-back does not run into the timed part. Writes only
into the given spool directory.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from bench.common import RECIPIENT, SENDER, BenchError, message_bytes
from spool import Envelope, Spool

BATCH = 2000
_ENVELOPE = Envelope(sender=SENDER, to_remote=(RECIPIENT,), client="127.0.0.1")


def fill_part(directory: str, prefix: str, first: int, count: int, size: int) -> int:
    """Store messages first..first+count-1 (tokens prefix.N) in *directory*; returns count."""
    spool = Spool(directory)
    pending = []
    for number in range(first, first + count):
        writer = spool.writer()
        writer.write(message_bytes(f"{prefix}.{number}", size))
        pending.append(writer.finish(_ENVELOPE, sync=False))
        if len(pending) >= BATCH:
            _commit(spool, pending)
            pending = []
    if pending:
        _commit(spool, pending)
    return count


def _commit(spool: Spool, pending: list) -> None:  # type: ignore[type-arg]
    errors = [error for error in spool.commit(pending) if error is not None]
    if errors:
        raise BenchError(f"filling the spool failed: {errors[0]}")


def fill(directory: Path, count: int, size: int, prefix: str = "q", workers: int = 2) -> None:
    """Put *count* accepted messages of *size* bytes into the spool *directory*."""
    if count < 4 * BATCH or workers <= 1:
        fill_part(str(directory), prefix, 0, count, size)
    else:
        share = -(-count // workers)
        parts = [(str(directory), prefix, n * share, min(share, count - n * share), size)
                 for n in range(workers)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.starmap(fill_part, parts)
    os.sync()
