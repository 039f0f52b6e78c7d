"""intake.storage_process's batches in flight at once, with its real process and spool.

A batch's disk flushes are held at `fsync_directory` (spool.testhooks' RELAY_TEST_HOLD_AT)
to stand for a slow disk: what arrives meanwhile must become a batch of its own and be
made durable beside the held one, up to CONCURRENT_BATCHES at once, and nothing may be
left unanswered when intake closes the pipe.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from intake.commit import GroupCommitter
from intake.storage_process import CONCURRENT_BATCHES
from spool import Envelope, PendingMessage, Spool

ENVELOPE = Envelope(sender="a@example.org", to_remote=("b@example.com",), client="127.0.0.1")


def arrived(release: Path) -> int:
    """How many batches have reached the held point."""
    return len(list(release.parent.glob(f"{release.name}.arrived-*")))


async def until(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture()
def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file that lets held batches go on; the storage process holds them until then."""
    path = tmp_path / "release"
    monkeypatch.setenv("RELAY_TEST_HOLD_AT", f"fsync_directory:{path}")
    return path


def test_a_batch_arriving_while_another_waits_for_the_disk_is_made_durable_beside_it(
        spool: Spool, spool_dir: Path, release: Path) -> None:
    """The second message does not wait for the first batch's flush to end."""

    async def scenario() -> tuple[PendingMessage, PendingMessage, int]:
        committer = GroupCommitter(spool)
        await committer.start()
        first = asyncio.ensure_future(committer.store((b"first\r\n",), ENVELOPE))
        assert await until(lambda: arrived(release) == 1)
        second = asyncio.ensure_future(committer.store((b"second\r\n",), ENVELOPE))
        # One batch at a time would keep the second away from the disk until release.
        assert await until(lambda: arrived(release) == 2), "the second batch waited"
        assert not first.done() and not second.done()
        release.touch()
        done = await first, await second
        await committer.stop()
        return done[0], done[1], committer.batches

    first, second, batches = asyncio.run(scenario())
    assert batches == 2
    assert first.content_path.read_bytes() == b"first\r\n"
    assert second.content_path.read_bytes() == b"second\r\n"
    assert len(list(spool_dir.glob("*.envelope"))) == 2
    assert not list(spool_dir.glob("*.new"))


def test_no_more_than_the_limit_of_batches_wait_at_once(
        spool: Spool, spool_dir: Path, release: Path) -> None:
    """With every batch thread busy, what arrives waits (and gathers) for the first free one."""
    count = CONCURRENT_BATCHES + 3

    async def scenario() -> int:
        committer = GroupCommitter(spool)
        await committer.start()
        stores = []
        for number in range(CONCURRENT_BATCHES):
            stores.append(asyncio.ensure_future(
                committer.store((f"{number}\r\n".encode(),), ENVELOPE)))
            assert await until(lambda n=number: arrived(release) == n + 1)
        for number in range(CONCURRENT_BATCHES, count):  # these three find no free thread
            stores.append(asyncio.ensure_future(
                committer.store((f"{number}\r\n".encode(),), ENVELOPE)))
        await asyncio.sleep(0.5)
        assert arrived(release) == CONCURRENT_BATCHES
        assert not any(store.done() for store in stores)
        release.touch()
        await asyncio.gather(*stores)
        await committer.stop()
        return committer.batches

    batches = asyncio.run(scenario())
    # The three that waited were gathered into batches as threads came free (one or more).
    assert CONCURRENT_BATCHES + 1 <= batches <= count
    assert arrived(release) == batches
    assert len(list(spool_dir.glob("*.envelope"))) == count


def test_intake_closing_the_pipe_lets_every_batch_in_flight_end(
        spool: Spool, spool_dir: Path, release: Path) -> None:
    """stop() while two batches are held: both are still committed and answered."""

    async def scenario() -> list[PendingMessage]:
        committer = GroupCommitter(spool)
        await committer.start()
        stores = []
        for number in range(2):
            stores.append(asyncio.ensure_future(
                committer.store((f"{number}\r\n".encode(),), ENVELOPE)))
            assert await until(lambda n=number: arrived(release) == n + 1)
        stopping = asyncio.ensure_future(committer.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done()  # the storage process waits for its batches
        release.touch()
        stored = list(await asyncio.gather(*stores))
        await stopping
        return stored

    stored = asyncio.run(scenario())
    assert sorted(p.content_path.read_bytes() for p in stored) == [b"0\r\n", b"1\r\n"]
    assert len(list(spool_dir.glob("*.envelope"))) == 2
