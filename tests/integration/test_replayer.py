"""The replayer end to end on the embedded SQLite bus against two real aiohttp backends."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from http_backends import Backend, serve, start_backend
from timing import production_gc
from waiting import group_lag, read_group
from shadowreplay.replayer.loop import Replayer
from shadowreplay.replayer.metrics import ReplayerMetrics
from shadowreplay.replayer.schedule import Anchor
from shadowreplay.contract.bus import open_bus
from shadowreplay.contract.bus.aio import AsyncConsumer, AsyncProducer
from shadowreplay.contract.bus.base import Bus, Message
from shadowreplay.contract.config import ReplayerConfig
from shadowreplay.contract.record import Origin, RequestRecord, decode_request, decode_result, encode_request

pytestmark = pytest.mark.integration

REQUESTS = "shadow.requests"
RESULTS = "shadow.results"
GROUP = "replayers"
LOG_T0 = 1_700_000_000_000_000_000


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    b = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    b.ensure_topic(REQUESTS, 4)
    b.ensure_topic(RESULTS, 4)
    yield b
    b.close()


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backend, Backend]]:
    candidate, r1 = await start_backend("candidate")
    baseline, r2 = await start_backend("baseline")
    yield candidate, baseline
    await r1.cleanup()
    await r2.cleanup()


def _records(n: int, gap_ns: int) -> list[RequestRecord]:
    return [
        RequestRecord(
            id=f"r{i:05d}",
            ts=LOG_T0 + i * gap_ns,
            method="GET",
            target=f"/items/{i}?b=2&a=1&b=1&q=%20x",
            host="prod.example.com",
            headers=(("Accept", "application/json"), ("Connection", "keep-alive")),
            client=f"10.0.{i % 3}.{i % 7}",
            origin=Origin(status=200, bytes=10, duration=0.01),
        )
        for i in range(n)
    ]


def _publish(bus: Bus, records: list[RequestRecord], extra: Sequence[bytes] = ()) -> None:
    producer = bus.producer()
    for r in records:
        producer.publish(REQUESTS, encode_request(r), key=r.partition_key(), timestamp_ns=r.ts)
    for raw in extra:
        producer.publish(REQUESTS, raw, key=b"x", timestamp_ns=LOG_T0)
    producer.flush()
    producer.close()


def _read(bus: Bus, topic: str, group: str, want: int = 0) -> list[Message]:
    return read_group(bus, [topic], group, want=want, partitions=4)


def _uncommitted(bus: Bus, topic: str = REQUESTS, group: str = GROUP) -> list[int]:
    """Per partition, how many records ``group`` has not committed on ``topic`` (asked once
    the replayer has left the group)."""
    return [lag.records for lag in group_lag(bus, [topic], group, 4)]


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    v = registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def _run_replayer(
    bus: Bus,
    cfg: ReplayerConfig,
    anchor: Anchor | None,
    stop: asyncio.Event,
    registry: CollectorRegistry,
) -> Replayer:
    consumer = AsyncConsumer(bus, [REQUESTS], GROUP)
    producer = AsyncProducer(bus)
    replayer = Replayer(cfg, consumer, producer, RESULTS, ReplayerMetrics(registry), anchor=anchor)
    try:
        with production_gc():
            await asyncio.wait_for(replayer.run(stop), timeout=30)
    finally:
        await consumer.close()
        await producer.close()
    return replayer


async def test_replays_each_record_once_on_schedule(
    bus: Bus, backends: tuple[Backend, Backend]
) -> None:
    candidate, baseline = backends
    # 20 s of log in 2 s: 250 records/s, 500 requests/s — modest, since the backends share
    # this process's event loop (bench/ measures the replayer alone).
    n, gap_ns, speed = 500, 40_000_000, 10.0
    records = _records(n, gap_ns)
    post = RequestRecord(id="post-1", ts=LOG_T0 + 5, method="POST", target="/orders", body=b"{}")
    _publish(bus, records + [post], extra=[b"not json at all"])

    cfg = ReplayerConfig(
        candidate=candidate.url,
        baseline=baseline.url,
        speed=speed,
        concurrency=64,
        idle_exit_seconds=0.5,
        noise_probe_percent=0.0,  # no baseline asked twice: each target sees each record once
    )
    anchor = Anchor(log_t0_ns=LOG_T0, wall_t0_ns=time.time_ns() + 300_000_000, speed=speed)
    registry = CollectorRegistry()
    replayer = await _run_replayer(bus, cfg, anchor, asyncio.Event(), registry)

    ids = [r.id for r in records]
    assert replayer.replayed == n
    for backend in (candidate, baseline):
        # each exactly once, and never the POST
        assert Counter(h.id for h in backend.hits) == Counter(ids), backend.name
        by_id = {h.id: h for h in backend.hits}
        for r in records:
            assert by_id[r.id].raw_path == r.target
            assert by_id[r.id].forwarded_for == r.client

    # Each record is due at the anchor plus its recorded offset divided by the speed, and
    # reaches the backends no earlier (how much later is bench/replayer.py's business).
    due = {r.id: anchor.wall_t0_ns + round((r.ts - LOG_T0) / speed) for r in records}
    lags = sorted((h.arrival_ns - due[h.id]) / 1e9 for b in backends for h in b.hits)
    assert lags[0] > -0.0005, lags[:5]

    # One result per record on the results topic, each with both targets' answers.
    results = [decode_result(m.value) for m in _read(bus, RESULTS, "checker", n)]
    assert sorted(r.id for r in results) == sorted(ids)
    candidate_hits = {h.id: h for h in candidate.hits}
    for res in results:
        rec = records[int(res.id[1:])]
        # the request as sent: the logged one after the safety rewrites, exactly what the
        # candidate received (Host its own, Connection dropped, X-Forwarded-For, X-Shadow-Replay)
        got = candidate_hits[res.id]
        assert {k.lower(): v for k, v in res.request.headers} == {k.lower(): v for k, v in got.headers.items()}
        assert res.request.host == candidate.url.split("//", 1)[1]
        assert res.request.header("Connection") is None and res.request.header("X-Forwarded-For") == rec.client
        assert (res.request.method, res.request.target, res.request.body) == (rec.method, rec.target, rec.body)
        assert res.endpoint == "GET /items/{id}"
        assert res.scheduled == due[res.id]  # the schedule, exactly: gaps divided by the speed
        assert res.sent >= res.scheduled - 200_000
        assert res.origin == rec.origin
        assert set(res.responses) == {"candidate", "baseline"}
        for name, resp in res.responses.items():
            assert resp.status == 200 and resp.error is None
            path = f"/items/{int(res.id[1:])}"
            assert orjson.loads(resp.body) == {"backend": name, "path": path}
            assert resp.ttfb is not None and resp.latency is not None and resp.ttfb <= resp.latency

    # Offsets committed: the group has nothing left, while a new group sees everything.
    assert _uncommitted(bus) == [0, 0, 0, 0]
    assert len(_read(bus, REQUESTS, "someone-else", n + 2)) == n + 2

    assert _value(registry, "shadow_replay_records_total") == n
    assert _value(registry, "shadow_replay_skipped_total", reason="bad_record") == 1
    assert _value(registry, "shadow_replay_skipped_total", reason="method_not_allowed") == 1
    for name in ("candidate", "baseline"):
        assert _value(registry, "shadow_replay_requests_total", target=name, outcome="ok") == n
        assert _value(registry, "shadow_replay_response_seconds_count", target=name) == n
    assert _value(registry, "shadow_replay_schedule_lag_seconds_count") == n
    assert _value(registry, "shadow_replay_inflight") == 0


async def test_stop_finishes_inflight_and_leaves_the_rest_uncommitted(
    bus: Bus, backends: tuple[Backend, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, baseline = backends
    n, stop_at = 300, 20
    records = _records(n, 10_000_000)  # 3 s of log at speed 1: stopped long before the end
    _publish(bus, records)
    stop, polling_over = asyncio.Event(), asyncio.Event()
    poll_loop = Replayer._poll_loop

    async def noting_the_end_of_polling(self: Replayer, *args: Any) -> None:
        try:
            await poll_loop(self, *args)
        finally:
            polling_over.set()

    monkeypatch.setattr(Replayer, "_poll_loop", noting_the_end_of_polling)
    sent: list[str] = []

    async def candidate(request: web.Request) -> web.Response:
        """The 20th request stops the replay; it and every later one are still in flight
        when the replayer has stopped polling, and slow to answer (a replayer that does not
        wait for them would have flushed its last results and left by then)."""
        sent.append(request.headers["X-Shadow-Replay"])
        if len(sent) >= stop_at:
            stop.set()
            await polling_over.wait()
            await asyncio.sleep(0.5)
        return web.Response(text="ok")

    url, runner = await serve(candidate)
    cfg = ReplayerConfig(candidate=url, baseline=baseline.url, speed=1.0, concurrency=16)
    try:
        # no anchor given: the replayer anchors on the first record it polls
        replayer = await _run_replayer(bus, cfg, None, stop, CollectorRegistry())
    finally:
        await runner.cleanup()

    assert stop_at <= replayer.replayed < n
    assert set(sent) == {h.id for h in baseline.hits}
    results = {decode_result(m.value).id for m in _read(bus, RESULTS, "checker", replayer.replayed)}
    # every request that reached a backend has its result on the bus, and nothing else does
    assert results == set(sent)
    assert len(results) == replayer.replayed == len(sent)
    # at-least-once: whatever has no result yet is redelivered to the group
    redelivered = {decode_request(m.value).id for m in _read(bus, REQUESTS, GROUP)}
    assert redelivered
    assert len(redelivered) < n  # the done prefix of each partition was committed
    assert results | redelivered == {r.id for r in records}


async def test_unreachable_target_gives_error_results_not_a_crash(
    bus: Bus, backends: tuple[Backend, Backend]
) -> None:
    candidate, _ = backends
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    n = 20
    records = _records(n, 1_000_000)
    _publish(bus, records)
    cfg = ReplayerConfig(candidate=candidate.url, baseline=dead, speed=1.0, idle_exit_seconds=0.3)
    registry = CollectorRegistry()
    replayer = await _run_replayer(bus, cfg, None, asyncio.Event(), registry)

    assert replayer.replayed == n
    results = [decode_result(m.value) for m in _read(bus, RESULTS, "checker", n)]
    assert sorted(r.id for r in results) == [r.id for r in records]
    for res in results:
        assert res.responses["candidate"].status == 200
        assert res.responses["baseline"].status is None
        assert res.responses["baseline"].error == "connect"
    assert _value(registry, "shadow_replay_requests_total", target="baseline", outcome="error") == n
    assert _value(registry, "shadow_replay_requests_total", target="candidate", outcome="ok") == n
    assert _uncommitted(bus) == [0, 0, 0, 0]


async def test_a_full_window_before_the_anchor_does_not_stall_the_replay(
    bus: Bus, backends: tuple[Backend, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Self-anchoring waits for every owned partition to answer, at most ANCHOR_WAIT_SECONDS.
    With all records in one partition of four, the window of polled messages filled up
    before that and polling stopped for good: the replay never started."""
    candidate, _ = backends
    monkeypatch.setattr("shadowreplay.replayer.loop.MAX_PENDING", 120)
    records = [RequestRecord(id=f"r{i:05d}", ts=LOG_T0 + i * 1_000_000, method="GET", target=f"/items/{i}",
                             client="10.9.9.9") for i in range(600)]
    _publish(bus, records)
    assert len({m.partition for m in _read(bus, REQUESTS, "peek", len(records))}) == 1
    cfg = ReplayerConfig(candidate=candidate.url, speed=1000.0, concurrency=4, idle_exit_seconds=0.5)
    replayer = await _run_replayer(bus, cfg, None, asyncio.Event(), CollectorRegistry())
    assert replayer.replayed == len(records)
    assert Counter(h.id for h in candidate.hits) == Counter(r.id for r in records)


async def test_large_records_fill_the_window_by_bytes(
    bus: Bus, backends: tuple[Backend, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window of polled, uncommitted messages is bounded in bytes too: records with
    large bodies stop polling before the count cap, and everything is still replayed."""
    candidate, _ = backends
    cap = 64 * 1024
    monkeypatch.setattr("shadowreplay.replayer.loop.MAX_PENDING_BYTES", cap)
    monkeypatch.setattr("shadowreplay.replayer.loop.POLL_MAX_RECORDS", 20)
    pad = "x" * 4000
    records = [RequestRecord(id=f"r{i:05d}", ts=LOG_T0 + i * 1_000_000, method="GET", target=f"/items/{i}",
                             headers=(("X-Pad", pad),), client=f"10.0.0.{i % 5}") for i in range(300)]
    _publish(bus, records)
    size = len(encode_request(records[0]))
    consumer, producer = AsyncConsumer(bus, [REQUESTS], GROUP), AsyncProducer(bus)
    cfg = ReplayerConfig(candidate=candidate.url, speed=100.0, concurrency=4, idle_exit_seconds=0.5)
    replayer = Replayer(cfg, consumer, producer, RESULTS, ReplayerMetrics(CollectorRegistry()),
                        anchor=Anchor(LOG_T0, time.time_ns() + 100_000_000, 100.0))
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, replayer._pending_bytes)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(replayer.run(asyncio.Event()), timeout=30)
    finally:
        watcher.cancel()
        await consumer.close()
        await producer.close()
    assert replayer.replayed == len(records)
    assert replayer._pending_bytes == 0
    assert cap <= peak <= cap + 20 * size  # reached the cap, overshot by at most one poll
    assert peak < len(records) * size / 3  # far below what an uncapped window would hold


async def test_on_the_sqlite_bus_results_and_offsets_share_one_transaction(
    bus: Bus, backends: tuple[Backend, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    candidate, _ = backends
    separate_commits = []

    async def commit(self: AsyncConsumer, messages: Sequence[Message]) -> None:
        separate_commits.append(messages)

    monkeypatch.setattr(AsyncConsumer, "commit", commit)
    records = _records(200, 1_000_000)
    _publish(bus, records)
    cfg = ReplayerConfig(candidate=candidate.url, speed=100.0, concurrency=8, idle_exit_seconds=0.5)
    anchor = Anchor(log_t0_ns=LOG_T0, wall_t0_ns=time.time_ns() + 100_000_000, speed=100.0)
    replayer = await _run_replayer(bus, cfg, anchor, asyncio.Event(), CollectorRegistry())
    assert replayer.replayed == len(records)
    assert separate_commits == []
    assert _uncommitted(bus) == [0, 0, 0, 0]  # all committed, by the flushes
    assert len(_read(bus, RESULTS, "checker", len(records))) == len(records)
