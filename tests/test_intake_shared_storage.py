"""intake.shared_storage: one real storage process serving several GroupCommitters (the
workers of --processes), each over its own socket, on a real spool directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

from intake.commit import GroupCommitter
from intake.frames import OP_STORE, request_frame
from intake.shared_storage import SharedStorage
from spool import Envelope, Spool, format_envelope, parse_envelope

ENVELOPE = Envelope(sender="a@example.org", to_remote=("b@example.com",), client="127.0.0.1")


def _committers(spool: Spool, storage: SharedStorage) -> list[GroupCommitter]:
    committers = []
    for end in storage.worker_ends:
        committer = GroupCommitter(spool)
        committer.shared = end
        committers.append(committer)
    return committers


def test_workers_messages_share_one_batch(spool: Spool, spool_dir: Path) -> None:
    """Two workers send five messages each while the shared process starts: all ten are
    made durable in ONE batch (one syncfs, one directory fsync), each worker gets its own
    five replies, and the process ends (exit 0) once both have closed their sockets."""
    storage = SharedStorage(spool, "syncfs", 2, None)

    async def scenario() -> list[GroupCommitter]:
        committers = _committers(spool, storage)
        for committer in committers:
            await committer.start()
        stored = await asyncio.gather(*[
            committer.store((f"Subject: {worker}-{n}\r\n\r\nbody\r\n".encode(),), ENVELOPE)
            for worker, committer in enumerate(committers) for n in range(5)])
        assert len({pending.message_id for pending in stored}) == 10
        for position, pending in enumerate(stored):
            worker, number = divmod(position, 5)
            assert pending.content_path.read_bytes().startswith(
                f"Subject: {worker}-{number}\r\n".encode())
        for committer in committers:
            await committer.stop()
        return committers

    committers = asyncio.run(scenario())
    storage.wait()
    assert storage.process.returncode == 0
    assert [(c.messages, c.batches) for c in committers] == [(5, 1), (5, 1)]
    envelopes = sorted(spool_dir.glob("*.envelope"))
    assert len(envelopes) == 10
    assert all(parse_envelope(path.read_bytes()) == ENVELOPE for path in envelopes)
    assert not list(spool_dir.glob("*.new"))


def test_a_worker_gone_mid_message_leaves_nothing_and_the_others_go_on(
        spool: Spool, spool_dir: Path) -> None:
    """Worker 0 dies after half a message: its files are removed, the storage process keeps
    serving worker 1, whose message is committed."""
    storage = SharedStorage(spool, "syncfs", 2, None)
    dying, living = storage.worker_ends
    meta = format_envelope(ENVELOPE)
    dying.sendall(request_frame(OP_STORE, 1, meta, 1000) + b"x" * 100)
    dying.close()

    async def scenario() -> GroupCommitter:
        committer = GroupCommitter(spool)
        committer.shared = living
        await committer.start()
        pending = await committer.store((b"Subject: kept\r\n\r\nbody\r\n",), ENVELOPE)
        assert pending.content_path.read_bytes().startswith(b"Subject: kept\r\n")
        await committer.stop()
        return committer

    committer = asyncio.run(scenario())
    storage.wait()
    assert storage.process.returncode == 0 and committer.messages == 1
    assert len(list(spool_dir.glob("*.envelope"))) == 1
    assert len(list(spool_dir.glob("*.content"))) == 1
    assert not list(spool_dir.glob("*.new"))


def test_a_shared_process_that_dies_is_replaced_by_one_of_the_workers_own(
        spool: Spool, spool_dir: Path) -> None:
    """kill -9 of the shared process: the waiting message fails (nothing accepted), and
    the worker starts a storage process of its own that stores the next message."""
    storage = SharedStorage(spool, "syncfs", 1, None)

    async def scenario() -> None:
        committer = GroupCommitter(spool)
        committer.shared = storage.worker_ends[0]
        await committer.start()
        await committer.store((b"Subject: first\r\n\r\nbody\r\n",), ENVELOPE)
        storage.process.kill()
        storage.process.wait()
        for _attempt in range(200):  # refused until the worker has started its own
            try:
                pending = await committer.store((b"Subject: second\r\n\r\nbody\r\n",),
                                                ENVELOPE)
                break
            except OSError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("no storage process took over")
        assert pending.content_path.read_bytes().startswith(b"Subject: second\r\n")
        await committer.stop()

    asyncio.run(scenario())
    assert len(list(spool_dir.glob("*.envelope"))) == 2
