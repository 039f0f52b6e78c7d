"""intake.commit.GroupCommitter with its real storage process, on a real spool directory."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from intake.commit import GroupCommitter
from spool import Envelope, EnvelopeError, Spool, parse_envelope

ENVELOPE = Envelope(sender="a@example.org", to_remote=("b@example.com",), client="127.0.0.1")


def test_messages_waiting_together_share_one_batch(spool: Spool, spool_dir: Path) -> None:
    """Ten messages sent while the storage process starts up are committed as ONE batch."""

    async def scenario() -> GroupCommitter:
        committer = GroupCommitter(spool)
        await committer.start()  # the process takes far longer to start than ten writes
        stored = await asyncio.gather(*[
            committer.store((b"Received: x\r\n", f"Subject: {n}\r\n\r\nbody\r\n".encode()),
                            ENVELOPE) for n in range(10)])
        await committer.stop()
        assert len({p.message_id for p in stored}) == 10
        for number, pending in enumerate(stored):
            assert pending.content_path.read_bytes().endswith(f"Subject: {number}\r\n\r\nbody\r\n"
                                                              .encode())
        return committer

    committer = asyncio.run(scenario())
    assert committer.messages == 10 and committer.batches == 1
    envelopes = sorted(spool_dir.glob("*.envelope"))
    assert len(envelopes) == 10
    assert all(parse_envelope(p.read_bytes()) == ENVELOPE for p in envelopes)
    assert not list(spool_dir.glob("*.new"))


def test_prepare_commit_and_discard(spool: Spool, spool_dir: Path) -> None:
    """A prepared message is only `.envelope.new` until committed; a discarded one is gone."""

    async def scenario() -> None:
        committer = GroupCommitter(spool)
        await committer.start()
        kept = await committer.prepare((b"kept\r\n",), ENVELOPE)
        dropped = await committer.prepare((b"dropped\r\n",), ENVELOPE)
        assert kept.new_path.exists() and not list(spool_dir.glob("*.envelope"))
        await committer.commit(kept)
        dropped.discard()  # as intake's handler does when a filter refuses
        await committer.stop()

    asyncio.run(scenario())
    assert [p.name for p in spool_dir.glob("*.envelope")] != []
    assert len(list(spool_dir.glob("*.content"))) == 1
    assert not list(spool_dir.glob("*.new"))


def test_a_failed_message_does_not_affect_the_others(spool: Spool, spool_dir: Path) -> None:
    """A message whose envelope cannot be formatted fails alone; the rest are stored."""

    async def scenario() -> list[object]:
        committer = GroupCommitter(spool)
        await committer.start()
        bad = Envelope(sender="a\nb@example.org", to_remote=("b@example.com",))
        results = await asyncio.gather(
            committer.store((b"one\r\n",), ENVELOPE), committer.store((b"two\r\n",), bad),
            committer.store((b"three\r\n",), ENVELOPE), return_exceptions=True)
        await committer.stop()
        return list(results)

    results = asyncio.run(scenario())
    assert isinstance(results[1], EnvelopeError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert len(list(spool_dir.glob("*.envelope"))) == 2
    assert len(list(spool_dir.glob("*.content"))) == 2


def test_a_dead_storage_process_fails_waiting_sessions_and_is_replaced(
        spool: Spool, spool_dir: Path) -> None:
    """Killing the storage process: the waiting store fails (OSError), the next one works."""

    async def scenario() -> None:
        committer = GroupCommitter(spool)
        await committer.start()
        await committer.store((b"first\r\n",), ENVELOPE)
        process = committer._process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)  # hold it so the next store surely waits
        waiting = asyncio.ensure_future(committer.store((b"lost\r\n",), ENVELOPE))
        await asyncio.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(OSError, match="storage process"):
            await waiting
        for _ in range(100):  # the replacement starts in the background
            if committer._process is not process:
                break
            await asyncio.sleep(0.05)
        await committer.store((b"after\r\n",), ENVELOPE)
        await committer.stop()

    asyncio.run(scenario())
    contents = sorted(p.read_bytes() for p in spool_dir.glob("*.content")
                      if p.with_suffix(".envelope").exists())
    assert contents == [b"after\r\n", b"first\r\n"]
