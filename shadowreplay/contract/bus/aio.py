"""Asyncio adapters over the synchronous bus: each wrapped object gets a thread of its own.

kafka-python's clients and sqlite3 connections must not be used from two threads at
once; a single-worker executor per producer/consumer serialises every call on it while
the event loop keeps running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from collections.abc import Callable

from shadowreplay.contract.bus.base import Bus, Consumer, Message, PartitionLag, Producer, Reader

T = TypeVar("T")


class _OnOwnThread:
    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True)


class AsyncProducer(_OnOwnThread):
    """``publish`` many, then ``await flush()``: when it returns, all are durable."""

    def __init__(self, bus: Bus, *, power_safe: bool = True) -> None:
        """``power_safe``: as :meth:`Bus.producer`."""
        super().__init__("bus-producer")
        self.power_safe = power_safe
        self._producer: Producer = self._executor.submit(bus.producer, power_safe=power_safe).result()

    async def flush(self, timeout_seconds: float = 30.0) -> None:
        await self._call(self._producer.flush, timeout_seconds)

    def commits_for(self, consumer: AsyncConsumer) -> bool:
        """Whether ``publish_and_flush(..., commit=...)`` can take ``consumer``'s offsets
        into the flush's own transaction. The SQLite bus can, for a consumer of the
        same file; elsewhere the caller commits after the flush, as usual."""
        commits_for = getattr(self._producer, "commits_for", None)
        return commits_for is not None and bool(commits_for(consumer._consumer))

    async def publish_and_flush(
        self, topic: str, items: Sequence[tuple[bytes | None, bytes, int | None]], timeout_seconds: float = 30.0,
        commit: tuple[AsyncConsumer, Sequence[Message]] | None = None,
    ) -> None:
        """Queue and flush in one hop to the bus thread. With ``commit=(consumer, messages)``
        (only where ``commits_for(consumer)``), the flush also commits ``messages`` for the
        consumer's group, in the same transaction."""

        def _do() -> None:
            # Backends may offer publish_batch(topic, items): the same as publishing
            # each item, much cheaper (the collector sends thousands per flush).
            batch = getattr(self._producer, "publish_batch", None)
            if batch is not None:
                batch(topic, items)
            else:
                for key, value, ts in items:
                    self._producer.publish(topic, value, key=key, timestamp_ns=ts)
            if commit is None:
                self._producer.flush(timeout_seconds)
            else:
                consumer, messages = commit
                self._producer.flush_and_commit(consumer._consumer, messages, timeout_seconds)  # type: ignore[attr-defined]

        await self._call(_do)

    async def close(self) -> None:
        await self._call(self._producer.close)
        self._shutdown()


class AsyncConsumer(_OnOwnThread):
    def __init__(self, bus: Bus, topics: Sequence[str], group: str) -> None:
        super().__init__("bus-consumer")
        self.group = group
        self._consumer: Consumer = self._executor.submit(bus.consumer, topics, group).result()

    async def poll(self, max_records: int = 500, timeout_seconds: float = 0.5) -> list[Message]:
        return await self._call(self._consumer.poll, max_records, timeout_seconds)

    async def commit(self, messages: Sequence[Message]) -> None:
        if messages:
            await self._call(self._consumer.commit, messages)

    async def seek_to_time(self, timestamp_ns: int) -> None:
        await self._call(self._consumer.seek_to_time, timestamp_ns)

    async def assignment(self) -> list[tuple[str, int]]:
        return await self._call(self._consumer.assignment)

    async def lag(self) -> list[PartitionLag]:
        return await self._call(self._consumer.lag)

    def joined(self) -> bool:
        """A read of the consumer's own state (no bus call): safe from the event loop."""
        return self._consumer.joined()

    def rebalancing(self) -> bool:
        """As ``joined``: a read of the consumer's own state."""
        return self._consumer.rebalancing()

    async def close(self) -> None:
        await self._call(self._consumer.close)
        self._shutdown()


class AsyncReader(_OnOwnThread):
    """A ``Bus.reader`` on a thread of its own."""

    def __init__(self, reader: Reader) -> None:
        super().__init__("bus-reader")
        self._reader = reader

    async def poll(self, max_records: int = 500, timeout_seconds: float = 0.5) -> list[Message]:
        return await self._call(self._reader.poll, max_records, timeout_seconds)

    async def progress(self) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int | None]]:
        """(positions, ends) in one hop to the reader's thread."""
        return await self._call(lambda: (self._reader.positions(), self._reader.ends()))

    async def close(self) -> None:
        await self._call(self._reader.close)
        self._shutdown()
