"""Group commit: concurrent flushes merge; each waiter returns only after its own flush."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from shadowreplay.collector.commit import GroupCommit
from shadowreplay.contract.errors import BusError


class RecordingProducer:
    """A stand-in for AsyncProducer that records each flush and can be told to fail."""

    def __init__(self) -> None:
        self.flushes: list[list[Any]] = []
        self.gate = asyncio.Event()
        self.fail = False

    async def publish_and_flush(self, topic: str, items: Sequence[Any], timeout_seconds: float = 30.0) -> None:
        await self.gate.wait()
        self.flushes.append(list(items))
        if self.fail:
            raise BusError("disk full", retriable=False)


async def test_waiting_commits_share_the_next_flush() -> None:
    producer = RecordingProducer()
    commit = GroupCommit(producer, "t", max_records=5)  # type: ignore[arg-type]
    first = asyncio.create_task(commit.commit([1]))
    await asyncio.sleep(0)  # the first flush starts and blocks on the gate
    rest = [asyncio.create_task(commit.commit([n, n])) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert not first.done() and not any(t.done() for t in rest)
    producer.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    # [1] alone (it was in flight), then the waiters merged up to max_records.
    assert producer.flushes == [[1], [2, 2, 3, 3], [4, 4]]


async def test_a_failed_flush_fails_every_commit_it_carried() -> None:
    producer = RecordingProducer()
    producer.fail = True
    commit = GroupCommit(producer, "t")  # type: ignore[arg-type]
    tasks = [asyncio.create_task(commit.commit([n])) for n in range(3)]
    await asyncio.sleep(0)
    producer.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, BusError) for r in results)
    producer.fail = False
    await asyncio.wait_for(commit.commit([9]), 5)  # the next commit starts a fresh flush
    assert producer.flushes[-1] == [9]


async def test_a_cancelled_waiter_does_not_stop_the_others() -> None:
    producer = RecordingProducer()
    commit = GroupCommit(producer, "t")  # type: ignore[arg-type]
    a = asyncio.create_task(commit.commit([1]))
    b = asyncio.create_task(commit.commit([2]))
    await asyncio.sleep(0)
    a.cancel()
    producer.gate.set()
    await asyncio.wait_for(b, 5)
    with pytest.raises(asyncio.CancelledError):
        await a
