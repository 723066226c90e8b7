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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shadowreplay.contract.bus import Bus, Consumer, Message, PartitionLag, next_positions
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
    owned = {(lag.topic, lag.partition) for lag in lags}
    if not owned or (partitions is not None and len(owned) < partitions):
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
    return read_group_to_end([consumer], want=want, partitions=partitions, positions=positions,
                             timeout_seconds=timeout_seconds)[0]


def read_group_to_end(members: Sequence[Consumer], *, want: int = 0, partitions: int | None = None,
                      positions: dict[tuple[str, int], int] | None = None,
                      timeout_seconds: float = DEADLINE_SECONDS) -> list[list[Message]]:
    """``read_to_end`` for several members of one group, polled in turn (a member that stops
    polling is declared dead and its partitions dealt to the others): what each one read,
    until ``want`` in all and the partitions the members own between them (all ``partitions``,
    when given) are each read to the end. A partition read by one member and then dealt to
    another counts as read as far as either got."""
    out: list[list[Message]] = [[] for _ in members]
    positions = {} if positions is None else positions
    deadline = time.monotonic() + timeout_seconds
    while True:
        empty = True
        for member, got in zip(members, out, strict=True):
            batch = member.poll(max_records=2000, timeout_seconds=0.1)
            got.extend(batch)
            empty = empty and not batch
            for tp, offset in next_positions(batch).items():
                positions[tp] = max(positions.get(tp, 0), offset)
        if empty and sum(map(len, out)) >= want and _at_end([lag for m in members for lag in m.lag()],
                                                             positions, partitions):
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"read {sum(map(len, out))} messages (want {want}) and not at the end after "
                                 f"{timeout_seconds:.0f} s: {[m.lag() for m in members]}")


def read_group(bus: Bus, topics: Sequence[str], group: str, *, want: int = 0,
               partitions: int | None = None) -> list[Message]:
    """What ``group`` has not committed on ``topics`` (everything, for a new group), read to
    the end of every partition by a new member that commits nothing (``read_to_end``; with
    ``partitions``, once the group has dealt it all of them: the other members must have left)."""
    consumer = bus.consumer(topics, group)
    try:
        return read_to_end(consumer, want=want, partitions=partitions)
    finally:
        consumer.close()


def group_lag(bus: Bus, topics: Sequence[str], group: str, partitions: int, *,
              timeout_seconds: float = DEADLINE_SECONDS) -> list[PartitionLag]:
    """What ``group`` has not committed, on each of the ``partitions`` partitions of
    ``topics``: asked by a new member that takes nothing (keep-alive polls) until the group
    has dealt it every partition, so call it once the group's other members have left."""
    member = bus.consumer(topics, group)
    deadline = time.monotonic() + timeout_seconds
    try:
        while len(member.assignment()) < partitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group} never dealt all {partitions} partitions to a new member "
                                     f"(another member still owns {partitions - len(member.assignment())})")
            member.poll(max_records=0, timeout_seconds=0.1)
        return sorted(member.lag())
    finally:
        member.close()


async def aread_to_end(consumer: AsyncConsumer, *, want: int = 0, partitions: int | None = None,
                       positions: dict[tuple[str, int], int] | None = None,
                       timeout_seconds: float = DEADLINE_SECONDS) -> list[Message]:
    """``read_to_end`` for the asyncio wrapper, run on the consumer's own thread."""
    return await consumer._call(read_to_end, consumer._consumer, want=want, partitions=partitions,
                                positions=positions, timeout_seconds=timeout_seconds)
