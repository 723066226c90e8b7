"""Replayer features on the embedded bus against real aiohttp backends: rules, targets,
late policy, window, rate, anchoring across partitions, capture, restart."""

from __future__ import annotations

import asyncio
import gzip
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
from shadowreplay.replayer.loop import Replayer
from shadowreplay.replayer.metrics import ReplayerMetrics
from shadowreplay.replayer.schedule import Anchor
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


def _drain(bus: Bus, topic: str, group: str, max_seconds: float = 5.0) -> list[Message]:
    consumer = bus.consumer([topic], group)
    out: list[Message] = []
    empty, deadline = 0, time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline and empty < 2:
            got = consumer.poll(500, 0.3)
            out.extend(got)
            empty = 0 if got else empty + 1
    finally:
        consumer.close()
    return out


async def _run(bus: Bus, cfg: ReplayerConfig, registry: CollectorRegistry, anchor: Anchor | None = None,
               stop: asyncio.Event | None = None) -> Replayer:
    consumer, producer = AsyncConsumer(bus, [REQUESTS], GROUP), AsyncProducer(bus)
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
    results = [decode_result(m.value) for m in _drain(bus, RESULTS, "check")]
    assert len(results) == len(kept)
    assert all(set(r.responses) == {"candidate", "baseline", "secondary"} for r in results)
    assert all(r.request.target.startswith("/v2/") for r in results)  # the request as sent
    assert _v(registry, "shadow_replay_rule_hits_total", rule="0:exclude_path", action="drop") == 1
    assert _v(registry, "shadow_replay_rule_hits_total", rule="1:sample", action="drop") == 200 - len(kept)
    assert _v(registry, "shadow_replay_rule_hits_total", rule="2:rewrite_path", action="rewrite") == len(kept)
    assert _v(registry, "shadow_replay_rule_hits_total", rule="methods", action="drop") == 1
    assert _v(registry, "shadow_replay_skipped_total", reason="sampled_out") == 200 - len(kept)
    assert _v(registry, "shadow_replay_skipped_total", reason="filtered") == 1
    assert _drain(bus, REQUESTS, GROUP) == []  # everything committed, dropped ones included


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
    results = _drain(bus, RESULTS, "check")
    if policy == "send":
        assert replayer.replayed == n and len(cand.hits) == n and len(results) == n
        assert _v(registry, "shadow_replay_dropped_total") == 0
        assert replayer.summary().startswith(f"{n} records replayed ({n} late)")
    else:
        assert replayer.replayed == 0 and cand.hits == [] and results == []
        assert _v(registry, "shadow_replay_dropped_total") == n
        assert f"{n} dropped as late" in replayer.summary()  # the exit line tells, not only the metric
    assert _drain(bus, REQUESTS, GROUP) == []


async def test_a_request_waiting_for_a_slot_is_never_dropped_as_late(bus: Bus) -> None:
    """--late-policy drop with --concurrency 1 and a backend slower than the log: requests
    queue for the one slot and go out late, none dropped (lateness is judged once a slot
    is free). Stopped before the queue drains, the replayer says they were due."""
    seen: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        seen.append(request.headers["X-Shadow-Replay"])
        return web.Response(text="ok")

    url, runner = await serve(slow)
    n = 200
    _publish(bus, [_rec(i, T0 + i * 5 * MS) for i in range(n)], key=b"one")  # 1 s of log, one partition
    cfg = ReplayerConfig(candidate=url, late_policy="drop", concurrency=1)
    registry = CollectorRegistry()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(2.0, stop.set)  # the slot can send about 100 by then
    try:
        replayer = await _run(bus, cfg, registry, Anchor(T0, time.time_ns() + 200 * MS, 1.0), stop)
    finally:
        await runner.cleanup()
    assert replayer.dropped_late == 0 and _v(registry, "shadow_replay_dropped_total") == 0
    assert 0 < replayer.replayed < n and seen == [f"r{i:05d}" for i in range(replayer.replayed)]
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
    t0 = time.monotonic()
    await _run(bus, cfg, CollectorRegistry())  # exits by itself at the end of the window
    assert time.monotonic() - t0 < 5
    assert cand.ids() == Counter(f"r{i:05d}" for i in range(20, 60))
    arrivals = sorted(h.arrival_ns for h in cand.hits)
    assert (arrivals[-1] - arrivals[0]) / 1e9 == pytest.approx(39 / 100, abs=0.03)
    # What lies past --to is left for a later window: the group still has it.
    left = {decode_request(m.value).id for m in _drain(bus, REQUESTS, GROUP)}
    assert left == {f"r{i:05d}" for i in range(60, 100)}


async def test_rate_paces_without_drops(bus: Bus, backends: tuple[Backend, Backend, Backend]) -> None:
    cand = backends[0]
    n = 120
    _publish(bus, [_rec(i, T0) for i in range(n)], key=b"one")  # all logged at once
    cfg = ReplayerConfig(candidate=cand.url, rate=200.0, speed=0.0, idle_exit_seconds=0.5)
    await _run(bus, cfg, CollectorRegistry())
    assert len(cand.hits) == n
    arrivals = sorted(h.arrival_ns for h in cand.hits)
    span = (arrivals[-1] - arrivals[0]) / 1e9
    assert span == pytest.approx((n - 1) / 200, abs=0.03)
    gaps = [(b - a) / 1e6 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(5.0, abs=1.0)


async def test_anchor_is_the_earliest_record_of_all_partitions(
    bus: Bus, backends: tuple[Backend, Backend, Backend]
) -> None:
    cand = backends[0]
    # Partition of key "late" holds 400 records starting 2 s into the log; "early" holds
    # 20 records in the first 0.2 s. Whatever partition answers first, the earliest goes first.
    late = [_rec(i, T0 + 2 * 10**9 + i * 10 * MS) for i in range(400)]
    early = [_rec(1000 + i, T0 + i * 10 * MS) for i in range(20)]
    _publish(bus, late, key=b"late")
    _publish(bus, early, key=b"early")
    cfg = ReplayerConfig(candidate=cand.url, speed=4.0, idle_exit_seconds=0.5)
    replayer = await _run(bus, cfg, CollectorRegistry())
    assert replayer.anchor is not None and replayer.anchor.log_t0_ns == T0
    by_id = {h.id: h.arrival_ns for h in cand.hits}
    lags = [(by_id[r.id] - replayer.anchor.due_ns(r.ts)) / 1e9 for r in early + late]
    assert min(lags) > -0.0005  # never early; how late is bench/replayer.py's business


async def test_capture_decodes_and_caps(bus: Bus, backends: tuple[Backend, Backend, Backend]) -> None:
    cand = backends[0]
    targets = ["/gzip", "/deflate", "/br", "/big"]
    _publish(bus, [_rec(i, T0 + i * MS, target=t) for i, t in enumerate(targets)])
    cfg = ReplayerConfig(candidate=cand.url, idle_exit_seconds=0.5)
    registry = CollectorRegistry()
    await _run(bus, cfg, registry)
    results = {r.request.target: r.responses["candidate"] for r in map(lambda m: decode_result(m.value),
                                                                       _drain(bus, RESULTS, "check"))}
    assert set(results) == set(targets)
    for t, resp in results.items():
        assert resp.status == 200 and resp.body == PAYLOAD and not resp.truncated, t
        assert resp.ttfb is not None and resp.latency is not None and resp.ttfb <= resp.latency

    # the cap: kept to max_body_bytes, marked truncated, counted
    _publish(bus, [_rec(10, T0, target="/br")])
    capped = replace(cfg, max_body_bytes=100)
    registry = CollectorRegistry()
    await _run(bus, capped, registry)
    last = [decode_result(m.value) for m in _drain(bus, RESULTS, "check2")][-1].responses["candidate"]
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
    asyncio.get_running_loop().call_later(1.0, stop.set)
    first = await _run(bus, cfg, CollectorRegistry(), stop=stop)
    assert 0 < first.replayed < n
    second = await _run(bus, replace(cfg, speed=20.0), CollectorRegistry())
    assert first.replayed + second.replayed == n
    assert cand.ids() == Counter(r.id for r in records)  # every record exactly once
    results = Counter(decode_result(m.value).id for m in _drain(bus, RESULTS, "check"))
    assert results == Counter(r.id for r in records)
