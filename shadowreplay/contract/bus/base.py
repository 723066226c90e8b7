"""The bus interface every backend implements.

A bus is a set of named, partitioned, append-only topics (Kafka's model). Producers
``publish`` messages (buffered) and ``flush`` them: when ``flush`` returns, every message
published before it is durable on the bus — that is what lets the collector acknowledge
a forward-protocol chunk truthfully. Consumers belong to a group; the partitions of the
subscribed topics are split among the live members of a group; each member ``poll``s
messages and ``commit``s them once the work they caused is done (at-least-once).

The interface is synchronous (kafka-python and sqlite3 both are). Async code uses
:mod:`shadowreplay.contract.bus.aio`, which runs each producer or consumer on a thread of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol

from shadowreplay.contract.errors import BusError

TP = tuple[str, int]


class Message(NamedTuple):
    """One message read from the bus. A named tuple: immutable like a frozen dataclass,
    but much cheaper to make, which matters because the SQLite bus makes one per message
    it reads; the garbage collector also stops tracking it (its fields hold no
    containers)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ns: int


class PartitionLag(NamedTuple):
    """Where a consumer group stands on one partition (``Consumer.lag``)."""

    topic: str
    partition: int
    committed: int  # the group's committed offset: the first message it has not finished (0: none committed)
    end: int  # the offset the partition's next message will get

    @property
    def records(self) -> int:
        """Messages on the partition that the group has not finished."""
        return max(0, self.end - self.committed)


def next_positions(messages: Iterable[Message]) -> dict[tuple[str, int], int]:
    """For each (topic, partition) in ``messages``, the offset after the highest one seen."""
    out: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic, m.partition)
        if m.offset + 1 > out.get(tp, -1):
            out[tp] = m.offset + 1
    return out


class Producer(Protocol):
    def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        timestamp_ns: int | None = None,
    ) -> None:
        """Queue one message. It is durable only after the next successful ``flush``."""

    def flush(self, timeout_seconds: float = 30.0) -> None:
        """Block until every message published so far is durable, or raise BusError."""

    def close(self) -> None:
        """Flush what is pending (best effort) and release resources."""


class Consumer(Protocol):
    def poll(self, max_records: int = 500, timeout_seconds: float = 1.0) -> list[Message]:
        """Return up to ``max_records`` messages (possibly none, after the timeout).

        Messages of one partition come in offset order. Polling again continues after
        the last message returned, whether or not it was committed.

        ``max_records=0`` takes no message: it only keeps the membership alive
        (heartbeats, taking part in a rebalance) for up to the timeout. A caller that
        cannot take more messages for a while calls it instead of not polling at all,
        so the group neither waits for this member nor declares it dead.
        """

    def joined(self) -> bool:
        """Whether this member has joined its group: its assignment (possibly empty) is
        known, and ``assignment()`` says what it owns."""

    def rebalancing(self) -> bool:
        """Whether the group is moving partitions right now and this member does not yet
        know which it keeps: work done meanwhile on what it polled may not be committable
        (Kafka refuses commits until the group has settled), so its next owner would do it
        again. Callers hold back new work while it is True."""

    def commit(self, messages: Sequence[Message]) -> None:
        """Mark ``messages`` done: each of their partitions' committed offset becomes
        the highest offset given + 1. Call only when all earlier messages of those
        partitions are done too. A group that is rebalancing may defer the commit: the
        backend then commits it once the rebalance is over, or before it gives the
        partitions up, and logs the partitions it could not commit before they moved."""

    def seek_to_time(self, timestamp_ns: int) -> None:
        """Position every assigned partition at (or before) its first message whose
        timestamp is >= ``timestamp_ns``. Callers that need an exact window also filter
        on the message timestamp, since a backend may only narrow the position."""

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this member currently owns."""

    def lag(self) -> list[PartitionLag]:
        """For each partition this member owns: the group's committed offset and the
        partition's end offset (for consumer-lag metrics; a few cheap reads, no waiting
        for messages)."""

    def close(self) -> None:
        """Leave the group and release resources. Does not commit."""


class Reader(Protocol):
    """Reads every partition of some topics directly: it joins no consumer group (so
    it never makes one rebalance, and needs no join to start) and commits nothing."""

    def poll(self, max_records: int = 500, timeout_seconds: float = 1.0) -> list[Message]:
        """Up to ``max_records`` messages (none after the timeout), each partition's in
        offset order."""

    def positions(self) -> dict[TP, int]:
        """The offset of the next message to read, per partition."""

    def ends(self) -> dict[TP, int | None]:
        """Each partition's end offset (its next message's) as last learned from the
        bus; None until known (Kafka learns it from the first fetch)."""

    def close(self) -> None: ...


def read_to_end(reader: Reader, max_records: int = 500, stall_seconds: float = 30.0) -> Iterator[list[Message]]:
    """Yield ``reader``'s messages until every partition has been read up to the end it
    had when its end was first learned: what was on the topic when reading began.
    A bus that answers nothing for ``stall_seconds`` is a retriable BusError."""
    targets: dict[TP, int] = {}
    deadline = time.monotonic() + stall_seconds
    while True:
        batch = reader.poll(max_records, 0.2)
        if batch:
            deadline = time.monotonic() + stall_seconds
            yield batch
        ends = reader.ends()
        for tp, end in ends.items():
            if end is not None and tp not in targets:
                targets[tp] = end
                deadline = time.monotonic() + stall_seconds
        positions = reader.positions()
        if len(targets) == len(ends) and all(positions.get(tp, 0) >= end for tp, end in targets.items()):
            return
        if time.monotonic() >= deadline:
            missing = sorted(tp for tp in ends if tp not in targets)
            raise BusError(f"reading {missing or sorted(targets)} to the end: the bus did not answer "
                           f"for {stall_seconds:.0f}s", retriable=True)


class Bus(Protocol):
    url: str

    def ensure_topic(self, topic: str, partitions: int) -> None:
        """Create ``topic`` with ``partitions`` partitions if it does not exist."""

    def producer(self, *, power_safe: bool = True) -> Producer:
        """A new producer. ``power_safe=False`` lets a backend return from ``flush`` once
        the messages survive the crash of any process, without waiting for them to
        survive an OS crash or power loss too (the SQLite bus skips its per-flush fsync).
        It suits messages that can be made again: the replayer's results, whose offsets
        are committed with them, so a flush that power loss takes back only means those
        requests are replayed again. The collector's producers stay power-safe: it
        acknowledges on the strength of ``flush``. The Kafka bus treats both alike
        (``acks=all``)."""
        ...

    def consumer(self, topics: Sequence[str], group: str) -> Consumer: ...

    def reader(self, topics: Sequence[str], *, group: str | None = None, from_ns: int | None = None) -> Reader:
        """A Reader of every partition of ``topics`` (which must exist): from the
        beginning, or from ``group``'s committed offsets (read, never changed); with
        ``from_ns``, from the first message whose timestamp is >= it (the later of the
        two), and messages older than ``from_ns`` are left out."""
        ...

    def close(self) -> None: ...
