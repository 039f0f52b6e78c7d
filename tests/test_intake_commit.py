"""intake.commit.GroupCommitter on a real spool directory: batching and failure isolation."""

from __future__ import annotations

import asyncio
from pathlib import Path

from intake.commit import GroupCommitter
from spool import Envelope, Spool, parse_envelope

ENVELOPE = Envelope(sender="a@example.org", to_remote=("b@example.com",), client="127.0.0.1")


def test_messages_waiting_together_share_one_commit(spool: Spool, spool_dir: Path) -> None:
    """Ten prepared messages queued while the committer is busy form ONE batch (one dir fsync)."""

    async def scenario() -> GroupCommitter:
        committer = GroupCommitter(spool)
        pendings = []
        for number in range(10):
            writer = spool.writer()
            writer.write(f"Subject: {number}\r\n\r\nbody\r\n".encode())
            pendings.append(writer.finish(ENVELOPE))
        waiting = [asyncio.ensure_future(committer.commit(p)) for p in pendings]
        await asyncio.sleep(0)  # every job is queued before the committer runs
        committer.start()
        done = await asyncio.gather(*waiting)
        assert [p.message_id for p in done] == [p.message_id for p in pendings]
        stored = await committer.store((b"Received: x\r\n", b"Subject: s\r\n\r\nb\r\n"), ENVELOPE)
        await committer.stop()
        assert (spool_dir / f"{stored.message_id}.envelope").exists()
        return committer

    committer = asyncio.run(scenario())
    assert committer.messages == 11 and committer.batches == 2
    envelopes = sorted(spool_dir.glob("*.envelope"))
    assert len(envelopes) == 11
    assert all(parse_envelope(p.read_bytes()) == ENVELOPE for p in envelopes)
    assert not list(spool_dir.glob("*.new"))


def test_a_failed_write_does_not_affect_the_others(spool: Spool, spool_dir: Path) -> None:
    """A message whose envelope cannot be formatted fails alone; the rest are stored."""

    async def scenario() -> list[object]:
        committer = GroupCommitter(spool)
        committer.start()
        bad = Envelope(sender="a\nb@example.org", to_remote=("b@example.com",))
        results = await asyncio.gather(
            committer.store((b"one\r\n",), ENVELOPE), committer.store((b"two\r\n",), bad),
            committer.store((b"three\r\n",), ENVELOPE), return_exceptions=True)
        await committer.stop()
        return list(results)

    results = asyncio.run(scenario())
    assert isinstance(results[1], ValueError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert len(list(spool_dir.glob("*.envelope"))) == 2
    assert len(list(spool_dir.glob("*.content"))) == 2
    assert not list(spool_dir.glob("*.new"))
