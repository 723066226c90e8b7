"""Consecutive windows over a disordered log: every record exactly once, equal times in log order.

The log goes through the real path: a fluent-logger client sends access-log records
(second resolution, shuffled within each minute, as a real log written by several
workers is) to the collector, which puts them on the bus under test (the embedded
SQLite log, or the Kafka-protocol test broker with a plain URL). Three replays of one
consumer group then cover consecutive windows whose bounds cut through shuffled
minutes.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable

import pytest
from fluent import sender
from prometheus_client import CollectorRegistry

from shadowreplay.collector.metrics import CollectorMetrics
from shadowreplay.collector.server import CollectorServer
from http_backends import Backend, start_backend
from shadowreplay.replayer.loop import Replayer
from shadowreplay.replayer.metrics import ReplayerMetrics
from shadowreplay.contract.bus import open_bus, read_to_end
from shadowreplay.contract.bus.aio import AsyncConsumer, AsyncProducer
from shadowreplay.contract.config import CollectorConfig, ReplayerConfig
from shadowreplay.contract.record import decode_request

pytestmark = pytest.mark.integration

S = 10**9
START = 1_790_000_000  # a minute boundary (seconds)
MINUTES = 6
PER_SECOND = 3
LATENESS = 90.0  # the log is out of order by up to a minute


def _log() -> list[tuple[int, dict[str, str]]]:
    """(epoch second, nginx JSON record) in the order written: each minute shuffled."""
    rng = random.Random(17)
    lines: list[tuple[int, dict[str, str]]] = []
    n = 0
    for minute in range(MINUTES):
        block = []
        for second in range(60):
            for _ in range(PER_SECOND):
                client = f"10.1.{n % 7}.{n % 13}"
                block.append((START + minute * 60 + second, {
                    "request_id": f"r{n:05d}", "remote_addr": client, "request_method": "GET",
                    "request_uri": f"/w/{n}", "host": "shop.example.com", "status": "200",
                }))
                n += 1
        rng.shuffle(block)
        lines += block
    return lines


def _ship(lines: list[tuple[int, dict[str, str]]], port: int) -> None:
    fluent = sender.FluentSender("nginx.access", host="127.0.0.1", port=port, timeout=10.0)
    try:
        for second, rec in lines:
            assert fluent.emit_with_time(None, second, rec), fluent.last_error
    finally:
        fluent.close()


async def _collect(bus_url: str, requests: str, lines: list[tuple[int, dict[str, str]]]) -> None:
    bus = open_bus(bus_url, 4)
    producer = AsyncProducer(bus)
    server = CollectorServer(CollectorConfig(listen="127.0.0.1:0"), producer, requests,
                             CollectorMetrics(CollectorRegistry()))
    await server.start()
    try:
        await asyncio.to_thread(_ship, lines, server.port)
        reader = bus.reader([requests])
        try:
            stored = [m for batch in read_to_end(reader) for m in batch]
        finally:
            reader.close()
        while len(stored) < len(lines):  # the last chunk may still be on its way
            await asyncio.sleep(0.2)
            reader = bus.reader([requests])
            try:
                stored = [m for batch in read_to_end(reader) for m in batch]
            finally:
                reader.close()
        assert all(decode_request(m.value).seq for m in stored)  # the collector's ingest order
    finally:
        await server.stop()
        await producer.close()
        bus.close()


async def _window(bus_url: str, requests: str, results: str, group: str, backend: Backend,
                  window: tuple[int, int], lateness: float) -> Replayer:
    bus = open_bus(bus_url, 4)
    consumer = AsyncConsumer(bus, [requests], group)
    producer = AsyncProducer(bus)
    cfg = ReplayerConfig(candidate=backend.url, speed=100.0, concurrency=1, lead_seconds=1.0,
                         window_from=str(window[0]), window_to=str(window[1]), lateness_seconds=lateness,
                         group=group)
    replayer = Replayer(cfg, consumer, producer, results, ReplayerMetrics(CollectorRegistry()))
    try:
        await asyncio.wait_for(replayer.run(asyncio.Event()), timeout=120)
    finally:
        await consumer.close()
        await producer.close()
        bus.close()
    return replayer


async def _replay_windows(bus_url: str, unique: Callable[[str], str], lateness: float
                          ) -> tuple[list[tuple[int, dict[str, str]]], list[tuple[int, int]], list[list[str]]]:
    requests, results, group = unique("req"), unique("res"), unique("rep")
    bus = open_bus(bus_url, 4)
    bus.ensure_topic(requests, 4)
    bus.ensure_topic(results, 4)
    bus.close()
    lines = _log()
    await _collect(bus_url, requests, lines)
    # Bounds in the middle of shuffled minutes; the last runs past the end of the log.
    bounds = [START + 17, START + 137, START + 230, START + MINUTES * 60 + 30]
    windows = list(zip(bounds, bounds[1:], strict=False))
    sent: list[list[str]] = []
    for window in windows:
        backend, runner = await start_backend("candidate")
        try:
            await _window(bus_url, requests, results, group, backend, window, lateness)
        finally:
            await runner.cleanup()
        sent.append([h.id for h in backend.hits])  # in arrival order (one request at a time)
    return lines, windows, sent


async def test_consecutive_windows_replay_every_record_once_in_log_order(
    bus_url: str, unique: Callable[[str], str]
) -> None:
    lines, windows, sent = await _replay_windows(bus_url, unique, LATENESS)
    second = {rec["request_id"]: ts for ts, rec in lines}
    position = {rec["request_id"]: i for i, (_, rec) in enumerate(lines)}
    everything: Counter[str] = Counter()
    for (lo, hi), ids in zip(windows, sent, strict=True):
        expected = {rid for rid, ts in second.items() if lo <= ts < hi}
        assert Counter(ids) == Counter(expected), f"window {lo - START}..{hi - START}: " \
            f"{len(set(ids) - expected)} extra, {len(expected - set(ids))} missing, " \
            f"{sum(c - 1 for c in Counter(ids).values())} twice"
        everything.update(ids)
        # time order, and equal times in the order they were logged
        assert ids == sorted(ids, key=lambda rid: (second[rid], position[rid]))
    assert everything == Counter(rid for rid, ts in second.items() if windows[0][0] <= ts < windows[-1][1])


async def test_without_lateness_a_disordered_log_loses_records(bus_url: str, unique: Callable[[str], str]) -> None:
    """The test above can fail: with no lateness allowed, the windows miss records."""
    lines, windows, sent = await _replay_windows(bus_url, unique, 0.0)
    total = sum(len(ids) for ids in sent)
    inside = sum(1 for ts, _ in lines if windows[0][0] <= ts < windows[-1][1])
    assert total < inside
