"""Replayer features on the embedded bus against real aiohttp backends: rules, targets,
late policy, window, rate, anchoring across partitions, capture, restart."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import logging
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import brotli
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from http_backends import Backend, serve, start_backend
from timing import production_gc
from waiting import DEADLINE_SECONDS, group_lag, read_group, until
from shadowreplay.replayer.loop import Replayer
from shadowreplay.replayer.metrics import ReplayerMetrics
from shadowreplay.replayer.schedule import EARLY_TOLERANCE_NS, Anchor
from shadowreplay.contract.bus import open_bus
from shadowreplay.contract.bus.aio import AsyncConsumer, AsyncProducer
from shadowreplay.contract.bus.base import Bus, Message
from shadowreplay.contract.config import ReplayerConfig, ReplayRule
from shadowreplay.contract.record import RequestRecord, decode_request, decode_result, encode_request

pytestmark = pytest.mark.integration

REQUESTS, RESULTS, GROUP = "shadow.requests", "shadow.results", "replayers"
T0 = 1_700_000_000_000_000_000
MS = 1_000_000
PAYLOAD = b'{"items": [' + b",".join(b'{"n": %d}' % i for i in range(300)) + b"]}"


def _respond(request: web.Request) -> web.Response | None:
    enc = request.path.rsplit("/", 1)[-1]
    if enc == "gzip":
        return web.Response(body=gzip.compress(PAYLOAD), headers={"Content-Encoding": "gzip"})
    if enc == "deflate":
        return web.Response(body=zlib.compress(PAYLOAD), headers={"Content-Encoding": "deflate"})
    if enc == "br":
        return web.Response(body=brotli.compress(PAYLOAD), headers={"Content-Encoding": "br"})
    if enc == "big":
        return web.Response(body=PAYLOAD)
    return None  # the default JSON answer


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backend, Backend, Backend]]:
    started = [await start_backend(n, _respond) for n in ("candidate", "baseline", "secondary")]
    yield started[0][0], started[1][0], started[2][0]
    for _, runner in started:
        await runner.cleanup()


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    b = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    b.ensure_topic(REQUESTS, 4)
    b.ensure_topic(RESULTS, 4)
    yield b
    b.close()


def _rec(i: int, ts: int, target: str = "", **kw: object) -> RequestRecord:
    return RequestRecord(id=f"r{i:05d}", ts=ts, method=str(kw.pop("method", "GET")),  # type: ignore[arg-type]
                         target=target or f"/items/{i}", client=f"10.0.0.{i % 250}", **kw)  # type: ignore[arg-type]


def _publish(bus: Bus, records: list[RequestRecord], key: bytes | None = None) -> None:
    p = bus.producer()
    for r in records:
        p.publish(REQUESTS, encode_request(r), key=key or r.partition_key(), timestamp_ns=r.ts)
    p.flush()
    p.close()


def _read(bus: Bus, topic: str, group: str, want: int = 0) -> list[Message]:
    return read_group(bus, [topic], group, want=want, partitions=4)


def _uncommitted(bus: Bus) -> list[int]:
    """Per partition, how many requests the replayers' group has not committed."""
    return [lag.records for lag in group_lag(bus, [REQUESTS], GROUP, 4)]


async def _run(bus: Bus, cfg: ReplayerConfig, registry: CollectorRegistry, anchor: Anchor | None = None,
               stop: asyncio.Event | None = None, consumer: AsyncConsumer | None = None) -> Replayer:
    consumer = consumer or AsyncConsumer(bus, [REQUESTS], GROUP)
    producer = AsyncProducer(bus)
    replayer = Replayer(cfg, consumer, producer, RESULTS, ReplayerMetrics(registry), anchor=anchor)
    try:
        with production_gc():
            await asyncio.wait_for(replayer.run(stop or asyncio.Event()), timeout=30)
    finally:
        await consumer.close()
        await producer.close()
    return replayer


def _v(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_rules_rewrites_and_three_targets(bus: Bus, backends: tuple[Backend, Backend, Backend]) -> None:
    cand, base, sec = backends
    records = [
        _rec(i, T0 + i * MS, target=f"/v1/items/{i}?b=2&a=%20", headers=(("X-User", f"u{i % 40}"), ("Cookie", "s=1")))
        for i in range(200)
    ]
    records += [_rec(900, T0, target="/admin/x"), _rec(901, T0, method="DELETE")]
    _publish(bus, records)
    rules = (
        ReplayRule(kind="exclude_path", pattern="^/admin"),
        ReplayRule(kind="sample", percent=50.0, key="header:X-User"),
        ReplayRule(kind="rewrite_path", pattern=r"^/v1/", value="/v2/"),
        ReplayRule(kind="set_header", name="X-Env", value="staging"),
        ReplayRule(kind="remove_header", name="Cookie"),
        ReplayRule(kind="set_query", name="a", value="z"),
    )
    cfg = ReplayerConfig(candidate=cand.url, baseline=base.url, secondary=sec.url, speed=50.0,
                         idle_exit_seconds=0.5, rules=rules)
    registry = CollectorRegistry()
    replayer = await _run(bus, cfg, registry)

    users_in = {h.headers["X-User"] for h in cand.hits}
    assert 10 <= len(users_in) <= 30  # about half of 40 users
    kept = [r for r in records[:200] if r.header("X-User") in users_in]
    assert replayer.replayed == len(kept)
    for b in (cand, base, sec):
        assert b.ids() == Counter(r.id for r in kept), b.name  # each once, on every target
        for h in b.hits:
            i = int(h.id[1:])
            assert h.raw_path == f"/v2/items/{i}?b=2&a=z"
            assert h.headers["X-Env"] == "staging" and "Cookie" not in h.headers
            assert h.headers["X-Forwarded-For"] == f"10.0.0.{i % 250}"
            assert h.headers["X-Shadow-Replay"] == h.id
    results = [decode_result(m.value) for m in _read(bus, RESULTS, "check", len(kept))]
    assert sorted(r.id for r in results) == sorted(r.id for r in kept)
    assert all(set(r.responses) == {"candidate", "baseline", "secondary"} for r in results)
    assert all(r.request.target.startswith("/v2/") for r in results)  # the request as sent
    assert _v(registry, "shadow_replay_rule_hits_total", rule="0:exclude_path", action="drop") == 1
    assert _v(registry, "shadow_replay_rule_hits_total", rule="1:sample", action="drop") == 200 - len(kept)
    assert _v(registry, "shadow_replay_rule_hits_total", rule="2:rewrite_path", action="rewrite") == len(kept)
    assert _v(registry, "shadow_replay_rule_hits_total", rule="methods", action="drop") == 1
    assert _v(registry, "shadow_replay_skipped_total", reason="sampled_out") == 200 - len(kept)
    assert _v(registry, "shadow_replay_skipped_total", reason="filtered") == 1
    assert _uncommitted(bus) == [0, 0, 0, 0]  # everything committed, dropped ones included


@pytest.mark.parametrize("policy", ["send", "drop"])
async def test_late_policy(
    bus: Bus, backends: tuple[Backend, Backend, Backend], policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    cand = backends[0]
    n = 50
    _publish(bus, [_rec(i, T0 + i * MS) for i in range(n)])
    # anchored 100 s in the past (a stale anchor): every record is already 100 s late
    anchor = Anchor(T0, time.time_ns() - 100 * 10**9, 1.0)
    cfg = ReplayerConfig(candidate=cand.url, late_policy=policy, idle_exit_seconds=0.5)
    registry = CollectorRegistry()
    caplog.set_level(logging.WARNING, logger="shadowreplay.replayer.loop")
    replayer = await _run(bus, cfg, registry, anchor)
    assert _v(registry, "shadow_replay_late_total") == n
    lag_sum = _v(registry, "shadow_replay_schedule_lag_seconds_sum")
    assert lag_sum > n * 99.9
    stale = [r.getMessage() for r in caplog.records if "late under this schedule" in r.getMessage()]
    assert len(stale) == 1 and "--clear" in stale[0], stale
    results = _read(bus, RESULTS, "check", n if policy == "send" else 0)
    if policy == "send":
        assert replayer.replayed == n and len(cand.hits) == n and len(results) == n
        assert _v(registry, "shadow_replay_dropped_total") == 0
        assert replayer.summary().startswith(f"{n} records replayed ({n} late)")
    else:
        assert replayer.replayed == 0 and cand.hits == [] and results == []
        assert _v(registry, "shadow_replay_dropped_total") == n
        assert f"{n} dropped as late" in replayer.summary()  # the exit line tells, not only the metric
    assert _uncommitted(bus) == [0, 0, 0, 0]


async def test_a_request_waiting_for_a_slot_is_never_dropped_as_late(bus: Bus) -> None:
    """--late-policy drop with --concurrency 1 and a backend slower than the log: requests
    queue for the one slot and go out late, none dropped (lateness is judged once a slot
    is free). Stopped before the queue drains, the replayer says they were due."""
    seen: list[str] = []
    stop = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        seen.append(request.headers["X-Shadow-Replay"])
        if len(seen) == 60:  # at least 1.2 s after the first was sent: the whole log is due
            stop.set()
        return web.Response(text="ok")

    url, runner = await serve(slow)
    n = 200
    _publish(bus, [_rec(i, T0 + i * 5 * MS) for i in range(n)], key=b"one")  # 1 s of log, one partition
    cfg = ReplayerConfig(candidate=url, late_policy="drop", concurrency=1)
    registry = CollectorRegistry()
    try:
        replayer = await _run(bus, cfg, registry, Anchor(T0, time.time_ns() + 200 * MS, 1.0), stop)
    finally:
        await runner.cleanup()
    assert replayer.dropped_late == 0 and _v(registry, "shadow_replay_dropped_total") == 0
    assert 60 <= replayer.replayed < n and seen == [f"r{i:05d}" for i in range(replayer.replayed)]
    assert replayer.late_sent > 0 and _v(registry, "shadow_replay_late_total") == replayer.late_sent
    summary = replayer.summary()
    assert f"{n - replayer.replayed} due but not yet sent" in summary and "not yet due" not in summary, summary
    assert "dropped" not in summary


async def test_window_from_to_seeks_and_stops(bus: Bus, backends: tuple[Backend, Backend, Backend]) -> None:
    cand = backends[0]
    s = 10**9
    records = [_rec(i, T0 + i * s) for i in range(100)]  # 100 s of log, one a second
    _publish(bus, records)
    cfg = ReplayerConfig(candidate=cand.url, speed=100.0, window_from=str(T0 // s + 20), window_to=str(T0 // s + 60))
    await _run(bus, cfg, CollectorRegistry())  # exits by itself at the end of the window
    window = [f"r{i:05d}" for i in range(20, 60)]
    assert cand.ids() == Counter(window)
    # Scheduled a second of log per 10 ms (speed 100) from the window's first record, and
    # none sent before its time (how late is bench/replayer.py's business).
    results = sorted((decode_result(m.value) for m in _read(bus, RESULTS, "check", len(window))), key=lambda r: r.id)
    assert [r.id for r in results] == window
    assert {b.scheduled - a.scheduled for a, b in itertools.pairwise(results)} == {10 * MS}
    arrival = {h.id: h.arrival_ns for h in cand.hits}
    assert all(arrival[r.id] >= r.scheduled - EARLY_TOLERANCE_NS for r in results)
    # What lies past --to is left for a later window: the group still has it.
    left = {decode_request(m.value).id for m in _read(bus, REQUESTS, GROUP, 40)}
    assert left == {f"r{i:05d}" for i in range(60, 100)}


async def test_rate_paces_without_drops(bus: Bus, backends: tuple[Backend, Backend, Backend]) -> None:
    cand = backends[0]
    n = 120
    _publish(bus, [_rec(i, T0) for i in range(n)], key=b"one")  # all logged at once
    cfg = ReplayerConfig(candidate=cand.url, rate=200.0, speed=0.0, idle_exit_seconds=0.5)
    replayer = await _run(bus, cfg, CollectorRegistry())
    assert cand.ids() == Counter(f"r{i:05d}" for i in range(n))  # each once, none dropped
    # One every 5 ms from the anchor, in log order, none sent before its time.
    assert replayer.anchor is not None
    results = sorted((decode_result(m.value) for m in _read(bus, RESULTS, "check", n)), key=lambda r: r.scheduled)
    assert [r.id for r in results] == [f"r{i:05d}" for i in range(n)]
    assert [r.scheduled for r in results] == [replayer.anchor.wall_t0_ns + i * 5 * MS for i in range(n)]
    arrival = {h.id: h.arrival_ns for h in cand.hits}
    assert all(arrival[r.id] >= r.scheduled - EARLY_TOLERANCE_NS for r in results)


class HoldingBack(AsyncConsumer):
    """A member whose bus answers for one partition only once every other partition it owns
    has delivered records: the order a loaded bus may answer in, made certain."""

    def __init__(self, bus: Bus, held: int) -> None:
        super().__init__(bus, [REQUESTS], GROUP)
        self.held_partition = held
        self.order: list[int] = []  # partitions, in the order they first delivered records
        self._held: list[Message] = []
        self._released = False

    async def poll(self, max_records: int = 500, timeout_seconds: float = 0.5) -> list[Message]:
        if self._released and self._held:
            out, self._held = self._held[:max_records], self._held[max_records:]
        else:
            out = await super().poll(max_records, timeout_seconds)
            if not self._released:
                self._held += [m for m in out if m.partition == self.held_partition]
                out = [m for m in out if m.partition != self.held_partition]
                others = {p for _, p in await self.assignment()} - {self.held_partition}
                self._released = bool(others) and others <= set(self.order) | {m.partition for m in out}
        self.order += [p for p in dict.fromkeys(m.partition for m in out) if p not in self.order]
        return out


async def test_anchor_is_the_earliest_record_of_all_partitions(
    bus: Bus, backends: tuple[Backend, Backend, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replayer anchors on the earliest record of all its partitions, however late the
    partition holding it answers (it waits for every partition, up to ANCHOR_WAIT_SECONDS,
    set beyond any test here). Anchored on the first records polled, it would schedule the
    log from 2 s in, and send the first 0.2 s of it late, all at once."""
    cand = backends[0]
    monkeypatch.setattr("shadowreplay.replayer.loop.ANCHOR_WAIT_SECONDS", DEADLINE_SECONDS)
    early = [_rec(1000 + i, T0 + i * 10 * MS) for i in range(20)]  # the first 0.2 s, one partition
    late = [_rec(i, T0 + 2 * 10**9 + i * 10 * MS) for i in range(200)]  # from 2 s on, every partition
    _publish(bus, early, key=b"early")
    _publish(bus, late)
    on_the_bus = _read(bus, REQUESTS, "peek", 220)
    [held] = {m.partition for m in on_the_bus if m.timestamp_ns == T0}
    assert {m.partition for m in on_the_bus if m.timestamp_ns >= T0 + 2 * 10**9} == {0, 1, 2, 3}
    consumer = HoldingBack(bus, held)
    cfg = ReplayerConfig(candidate=cand.url, speed=4.0, idle_exit_seconds=0.5)
    replayer = await _run(bus, cfg, CollectorRegistry(), consumer=consumer)
    assert consumer.order[-1] == held and sorted(consumer.order) == [0, 1, 2, 3]  # it did answer last
    assert replayer.anchor is not None and replayer.anchor.log_t0_ns == T0
    assert cand.ids() == Counter(r.id for r in early + late)
    # Every record on the schedule of that anchor, sent in log order and never early.
    results = sorted((decode_result(m.value) for m in _read(bus, RESULTS, "check", 220)), key=lambda r: r.sent)
    logged = {r.id: r.ts for r in early + late}
    assert all(r.scheduled == replayer.anchor.due_ns(logged[r.id]) for r in results)
    assert [logged[r.id] for r in results] == sorted(logged.values())
    arrival = {h.id: h.arrival_ns for h in cand.hits}
    assert all(arrival[r.id] >= r.scheduled - EARLY_TOLERANCE_NS for r in results)


async def test_capture_decodes_and_caps(bus: Bus, backends: tuple[Backend, Backend, Backend]) -> None:
    cand = backends[0]
    targets = ["/gzip", "/deflate", "/br", "/big"]
    _publish(bus, [_rec(i, T0 + i * MS, target=t) for i, t in enumerate(targets)])
    cfg = ReplayerConfig(candidate=cand.url, idle_exit_seconds=0.5)
    registry = CollectorRegistry()
    await _run(bus, cfg, registry)
    results = {r.request.target: r.responses["candidate"] for r in map(lambda m: decode_result(m.value),
                                                                       _read(bus, RESULTS, "check", len(targets)))}
    assert set(results) == set(targets)
    for t, resp in results.items():
        assert resp.status == 200 and resp.body == PAYLOAD and not resp.truncated, t
        assert resp.ttfb is not None and resp.latency is not None and resp.ttfb <= resp.latency

    # the cap: kept to max_body_bytes, marked truncated, counted
    _publish(bus, [_rec(10, T0, target="/br")])
    capped = replace(cfg, max_body_bytes=100)
    registry = CollectorRegistry()
    await _run(bus, capped, registry)
    every = [decode_result(m.value) for m in _read(bus, RESULTS, "check2", len(targets) + 1)]
    assert sorted(r.id for r in every) == ["r00000", "r00001", "r00002", "r00003", "r00010"]
    last = next(r for r in every if r.id == "r00010").responses["candidate"]
    assert last.truncated and last.body == PAYLOAD[:100]
    assert _v(registry, "shadow_replay_truncated_total", target="candidate") == 1


async def test_restart_resumes_without_replaying_committed_work(
    bus: Bus, backends: tuple[Backend, Backend, Backend]
) -> None:
    cand = backends[0]
    n = 300
    records = [_rec(i, T0 + i * 10 * MS) for i in range(n)]  # 3 s of log at speed 1
    _publish(bus, records)
    cfg = ReplayerConfig(candidate=cand.url, speed=1.0, idle_exit_seconds=0.5)
    stop = asyncio.Event()

    async def stop_at_the_50th() -> None:
        await until(lambda: len(cand.hits) >= 50, "50 requests sent")
        stop.set()

    stopper = asyncio.create_task(stop_at_the_50th())
    first = await _run(bus, cfg, CollectorRegistry(), stop=stop)
    await stopper
    assert 50 <= first.replayed < n
    second = await _run(bus, replace(cfg, speed=20.0), CollectorRegistry())
    assert first.replayed + second.replayed == n
    assert cand.ids() == Counter(r.id for r in records)  # every record exactly once
    results = Counter(decode_result(m.value).id for m in _read(bus, RESULTS, "check", n))
    assert results == Counter(r.id for r in records)
