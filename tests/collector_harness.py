"""A real collector (CollectorServer) on a fresh embedded SQLite bus, for integration tests.

``async with collectors(tmp_path) as start: c = await start(**CollectorConfig fields)``
starts as many collectors as a test needs, each on its own bus, all stopped on exit;
``read_messages`` and ``RunningCollector.records`` read back what reached the bus."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from shadowreplay.collector.metrics import CollectorMetrics
from shadowreplay.collector.server import CollectorServer
from shadowreplay.contract.bus import Bus, open_bus
from shadowreplay.contract.bus.aio import AsyncConsumer, AsyncProducer
from shadowreplay.contract.config import CollectorConfig
from shadowreplay.contract.record import RequestRecord, decode_request
from waiting import DEADLINE_SECONDS, aread_to_end

TOPIC = "shadow.requests"


def open_sqlite_bus(path: Path, partitions: int) -> Bus:
    """An embedded bus at ``path`` with TOPIC created with ``partitions`` partitions."""
    bus = open_bus(f"sqlite:///{path}", partitions=partitions)
    bus.ensure_topic(TOPIC, partitions)
    return bus


async def read_messages(
    bus: Bus, want: int, group: str, timeout: float = DEADLINE_SECONDS
) -> list[tuple[RequestRecord, int]]:
    """(record, bus timestamp) of each message on TOPIC for a new ``group``: at least
    ``want``, and then everything up to the end of every partition, so that anything beyond
    ``want`` (repeats, strays) shows up too. Call it once the chunks that matter were
    acknowledged: the collector acknowledges only what is on the bus."""
    consumer = AsyncConsumer(bus, [TOPIC], group)
    try:
        got = await aread_to_end(consumer, want=want, timeout_seconds=timeout)
    finally:
        await consumer.close()
    return [(decode_request(m.value), m.timestamp_ns) for m in got]


class RunningCollector:
    """A started collector, its metrics registry and the bus it publishes to."""

    def __init__(self, server: CollectorServer, registry: CollectorRegistry, bus: Bus) -> None:
        self.server = server
        self.registry = registry
        self.bus = bus

    @property
    def port(self) -> int:
        return self.server.port

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def records(self, want: int, timeout: float = DEADLINE_SECONDS) -> dict[str, int]:
        """id → ts of every record on the bus (at least ``want``, read to the end of the
        log: see ``read_messages``); fails if any id arrived twice."""
        got = await read_messages(self.bus, want, f"check-{time.monotonic_ns()}", timeout)
        out = {r.id: r.ts for r, _ in got}
        dupes = len(got) - len(out)
        assert dupes == 0
        return out


StartCollector = Callable[..., Awaitable[RunningCollector]]


@asynccontextmanager
async def collectors(
    tmp_path: Path, *, partitions: int = 2, environ: Mapping[str, str] | None = None
) -> AsyncIterator[StartCollector]:
    """Yields ``start(environ=None, **CollectorConfig fields)``: a started collector (listening
    on 127.0.0.1:0 unless ``listen`` is given) on a fresh bus of ``partitions`` partitions.
    Secrets come from ``environ`` (per call, else the one given here, else the process
    environment). Every collector started is stopped, and its bus closed, on exit."""
    default_environ = environ
    stack: list[tuple[CollectorServer, AsyncProducer, Bus]] = []

    async def start(environ: Mapping[str, str] | None = None, **fields: Any) -> RunningCollector:
        bus = open_sqlite_bus(tmp_path / f"bus{len(stack)}.db", partitions)
        producer = AsyncProducer(bus)
        registry = CollectorRegistry()
        config = dataclasses.replace(CollectorConfig(listen="127.0.0.1:0"), **fields)
        env = default_environ if environ is None else environ
        server = CollectorServer(config, producer, TOPIC, CollectorMetrics(registry), environ=env)
        await server.start()
        stack.append((server, producer, bus))
        return RunningCollector(server, registry, bus)

    try:
        yield start
    finally:
        for server, producer, bus in reversed(stack):
            await server.stop()
            await producer.close()
            bus.close()
