"""Group commit: the flushes of concurrent connections merged into one bus flush.

Each connection hands its records to ``GroupCommit.commit`` and waits; while the bus is
busy with one flush, the records of every connection that asks meanwhile gather and go
out together in the next one. A connection still acknowledges only after the flush that
carried *its* records returned (or sees that flush's error), so the ack-after-durable
promise is unchanged; what changes is that N waiting connections cost one transaction
and one fsync (SQLite) or one producer flush (Kafka), not N in a row.

Memory stays bounded: each connection has at most one batch waiting here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from shadowreplay.contract.bus.aio import AsyncProducer

log = logging.getLogger(__name__)

Item = tuple[bytes | None, bytes, int | None]
# A merged flush stops taking waiting batches past this many records.
MAX_RECORDS = 16_000


class GroupCommit:
    """Publishes to ``topic`` through ``producer``, merging concurrent commits."""

    def __init__(self, producer: AsyncProducer, topic: str, max_records: int = MAX_RECORDS) -> None:
        self._producer = producer
        self._topic = topic
        self._max_records = max_records
        self._waiting: list[tuple[Sequence[Item], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def commit(self, items: Sequence[Item]) -> None:
        """Return once ``items`` are durable on the bus; raise the bus's error if the
        flush that carried them failed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_all(), name="collector-group-commit")
        await done

    async def _flush_all(self) -> None:
        try:
            while self._waiting:
                taken = 0
                size = 0
                for items, _ in self._waiting:
                    if taken and size + len(items) > self._max_records:
                        break
                    taken += 1
                    size += len(items)
                batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
                merged = batch[0][0] if taken == 1 else [item for items, _ in batch for item in items]
                try:
                    await self._producer.publish_and_flush(self._topic, merged)
                except Exception as exc:  # every waiter sees it and closes without ack
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                except BaseException:  # cancelled: nobody may be left waiting
                    for _, done in batch:
                        done.cancel()
                    raise
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._flusher = None
            for _, done in self._waiting:  # only if this task itself was cancelled
                if not done.done():
                    done.cancel()
            self._waiting = []
