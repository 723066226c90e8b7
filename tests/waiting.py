"""Waiting on conditions, never on the clock.

A test waits for what it needs to see (``until``/``wait_until`` poll a condition) and
asserts order and counts. The deadline only bounds a failure: a test that passes does so
as soon as the condition holds, however loaded the machine, so deadlines are generous.

"Nothing more arrives" is shown with a positive end marker, never by sleeping a while:
``read_to_end`` reads a topic up to the end offset of every partition, which, once the
writers are done (every chunk acknowledged, every stage stopped), is everything there is.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shadowreplay.contract.bus import Consumer, Message, PartitionLag, next_positions
from shadowreplay.contract.bus.aio import AsyncConsumer

#: How long a condition may take before the test fails. Only a failing test waits this long.
DEADLINE_SECONDS = 60.0


def wait_until(check: Callable[[], Any], what: str, *, timeout_seconds: float = DEADLINE_SECONDS,
               interval_seconds: float = 0.02) -> None:
    """Poll ``check()`` until it is truthy; AssertionError naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(interval_seconds)


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, *,
                timeout_seconds: float = DEADLINE_SECONDS, interval_seconds: float = 0.02) -> None:
    """``wait_until`` for coroutines: ``check`` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        await asyncio.sleep(interval_seconds)


def _at_end(lags: list[PartitionLag], positions: dict[tuple[str, int], int], partitions: int | None) -> bool:
    if not lags or (partitions is not None and len(lags) < partitions):
        return False  # the group is still forming, or another member still owns some partitions
    return all(max(lag.committed, positions.get((lag.topic, lag.partition), 0)) >= lag.end for lag in lags)


def read_to_end(consumer: Consumer, *, want: int = 0, partitions: int | None = None,
                positions: dict[tuple[str, int], int] | None = None,
                timeout_seconds: float = DEADLINE_SECONDS) -> list[Message]:
    """Every message from the group's position (without committing) until at least ``want``
    were read and the position of every partition the consumer owns (all ``partitions`` of
    them, when given) reached the partition's end offset. Call it when nothing writes any
    more: what it returns is then all there is, repeats and strays included. A consumer
    read from more than once keeps its ``positions`` (updated here) between the calls.

    The end is checked only after a poll came back empty, so the Kafka consumer has parsed
    every fetch response it holds (its end offsets count on the high watermark they carry)."""
    out: list[Message] = []
    positions = {} if positions is None else positions
    deadline = time.monotonic() + timeout_seconds
    while True:
        batch = consumer.poll(max_records=2000, timeout_seconds=0.1)
        out.extend(batch)
        positions.update(next_positions(batch))  # offsets of one partition only grow
        if not batch and len(out) >= want and _at_end(consumer.lag(), positions, partitions):
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"read {len(out)} messages (want {want}) and not at the end after "
                                 f"{timeout_seconds:.0f} s: {consumer.lag()}")


async def aread_to_end(consumer: AsyncConsumer, *, want: int = 0, partitions: int | None = None,
                       positions: dict[tuple[str, int], int] | None = None,
                       timeout_seconds: float = DEADLINE_SECONDS) -> list[Message]:
    """``read_to_end`` for the asyncio wrapper, run on the consumer's own thread."""
    return await consumer._call(read_to_end, consumer._consumer, want=want, partitions=partitions,
                                positions=positions, timeout_seconds=timeout_seconds)
