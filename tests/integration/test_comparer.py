"""The comparer against a real SQLite bus: publish known results, compare, read the metrics."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shadowreplay.comparer.loop import Comparer, format_table
from shadowreplay.comparer.metrics import ComparerMetrics
from shadowreplay.comparer.store import diffs_to_json
from shadowreplay.contract.bus import Bus, open_bus
from shadowreplay.contract.bus.aio import AsyncConsumer
from shadowreplay.contract.config import ComparerConfig, ReplayRule
from shadowreplay.contract.record import Origin, ReplayResult, RequestRecord, Response, encode_result
from waiting import DEADLINE_SECONDS

pytestmark = pytest.mark.integration

TOPIC = "shadow.results"
GROUP = "shadow-comparer"
JSON = (("content-type", "application/json"),)


def jresp(value: Any, *, status: int = 200, latency: float | None = 0.01) -> Response:
    return Response(status=status, headers=JSON, body=orjson.dumps(value), latency=latency)


def make(
    i: int,
    endpoint: str,
    candidate: Response | None,
    baseline: Response | None = None,
    origin: Origin | None = None,
) -> ReplayResult:
    responses = {}
    if candidate is not None:
        responses["candidate"] = candidate
    if baseline is not None:
        responses["baseline"] = baseline
    method, path = endpoint.split(" ", 1)
    req = RequestRecord(
        id=f"r{i}",
        ts=1_700_000_000_000_000_000 + i,
        method=method,
        target=path.replace("{id}", str(i)),
    )
    return ReplayResult(
        id=f"r{i}",
        request=req,
        endpoint=endpoint,
        scheduled=req.ts,
        sent=req.ts + 1,
        responses=responses,
        origin=origin,
    )


def scenario() -> list[ReplayResult]:
    users, orders, health = "GET /users/{id}", "GET /orders", "GET /health"
    out: list[ReplayResult] = []
    user = {"id": 1, "name": "ann", "tags": ["a", "b"]}
    for _ in range(5):  # matching
        out.append(make(len(out), users, jresp(user), jresp(user)))
    for i in range(3):  # $.name differs; the last also has a status diff
        status = 500 if i == 2 else 200
        out.append(
            make(len(out), users, jresp({**user, "name": f"bob{i}"}, status=status), jresp(user))
        )
    out.append(make(len(out), orders, jresp({"items": [1, 2, 3]}), jresp({"items": [1, 2, 4, 5]})))
    out.append(make(len(out), orders, jresp({"items": [1]}), jresp({"items": [1.0]})))
    out.append(make(len(out), health, jresp({}), origin=Origin(status=200, bytes=2)))
    out.append(make(len(out), health, jresp({}, status=503), origin=Origin(status=200, bytes=2)))
    out.append(make(len(out), users, None, jresp(user, latency=None)))  # no candidate
    return out


def publish(bus: Bus, results: list[ReplayResult], extra: tuple[bytes, ...] = ()) -> None:
    producer = bus.producer()
    for r in results:
        producer.publish(TOPIC, encode_result(r), key=r.id.encode(), timestamp_ns=r.request.ts)
    for raw in extra:
        producer.publish(TOPIC, raw, key=b"garbage")
    producer.flush()
    producer.close()


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def run_until(comparer: Comparer, total: int, timeout_seconds: float = DEADLINE_SECONDS) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(comparer.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout_seconds
        while comparer.compared + comparer.skipped < total:
            assert not task.done(), task.exception()
            assert asyncio.get_running_loop().time() < deadline, (
                comparer.compared,
                comparer.skipped,
            )
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def drain(consumer: AsyncConsumer, want: int, polls: int = 40) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(polls):
        got.extend(m.value for m in await consumer.poll(500, 0.1))
        if len(got) >= want and len(await consumer.assignment()) == 2:
            break
    return got


@pytest.fixture
def bus(tmp_path: Path) -> Any:
    b = open_bus(f"sqlite:///{tmp_path / 'bus.db'}", partitions=2)
    b.ensure_topic(TOPIC, 2)
    yield b
    b.close()


async def test_comparer_counts_summary_metrics_and_commits(bus: Bus) -> None:
    results = scenario()
    publish(bus, results, extra=(b"not json", orjson.dumps({"v": 1, "id": "x"})))
    total = len(results) + 2

    registry = CollectorRegistry()
    metrics = ComparerMetrics(registry)
    consumer = AsyncConsumer(bus, [TOPIC], GROUP)
    comparer = Comparer(ComparerConfig(), consumer, metrics, poll_timeout_seconds=0.1)
    await run_until(comparer, total)
    await consumer.close()

    assert (comparer.compared, comparer.diverged, comparer.skipped) == (12, 5, 3)
    summary = {s.endpoint: s for s in comparer.summary()}
    assert [s.endpoint for s in comparer.summary()] == [
        "GET /health",
        "GET /orders",
        "GET /users/{id}",
    ]
    users = summary["GET /users/{id}"]
    assert (users.compared, users.diverged) == (8, 3)
    assert users.kinds == {"value": 3, "status": 1}
    assert users.fields == {"$.name": 3, "status": 1}
    orders = summary["GET /orders"]
    assert (orders.compared, orders.diverged, orders.kinds) == (
        2,
        1,
        {"array_length": 1, "value": 1},
    )
    assert orders.fields == {"$.items": 1, "$.items[*]": 1}  # fields: indexes are [*]
    health = summary["GET /health"]
    assert (health.compared, health.diverged, health.kinds, health.fields) == (
        2,
        1,
        {"status": 1},
        {"status": 1},
    )
    table = format_table(comparer.summary())
    assert "GET /users/{id}" in table and "37.5%" in table and "$.name (3)" in table

    found = samples(registry)
    for s in summary.values():
        assert value(found, "shadow_compare_compared_total", endpoint=s.endpoint) == s.compared
        assert (
            value(found, "shadow_compare_matched_total", endpoint=s.endpoint)
            == s.compared - s.diverged
        )
        for kind, n in s.kinds.items():
            assert (
                value(found, "shadow_compare_diverged_total", endpoint=s.endpoint, kind=kind) == n
            )
    assert (
        value(found, "shadow_compare_field_diffs_total", endpoint="GET /users/{id}", kind="value")
        == 3
    )
    assert value(found, "shadow_compare_errors_total", reason="undecodable") == 2
    assert value(found, "shadow_compare_errors_total", reason="no_candidate") == 1
    assert value(found, "shadow_compare_errors_total", reason="no_reference") == 0
    assert (
        value(
            found,
            "shadow_compare_latency_seconds_count",
            target="candidate",
            endpoint="GET /users/{id}",
        )
        == 8
    )
    assert (
        value(
            found, "shadow_compare_latency_seconds_count", target="baseline", endpoint="GET /orders"
        )
        == 2
    )

    # Offsets were committed: the group resumes after everything it compared...
    late = make(99, "GET /late", jresp({"late": True}), jresp({"late": True}))
    publish(bus, [late])
    again = AsyncConsumer(bus, [TOPIC], GROUP)
    try:
        assert await drain(again, 1) == [encode_result(late)]
    finally:
        await again.close()
    # ...while another group still sees every message on the topic.
    other = AsyncConsumer(bus, [TOPIC], "someone-else")
    try:
        assert len(await drain(other, total + 1)) == total + 1
    finally:
        await other.close()


async def test_endpoint_labels_are_bounded(bus: Bus) -> None:
    results = [make(i, f"GET /e{i}", jresp({"i": i}), jresp({"i": 0})) for i in range(6)]
    publish(bus, results)
    registry = CollectorRegistry()
    consumer = AsyncConsumer(bus, [TOPIC], GROUP)
    comparer = Comparer(
        ComparerConfig(max_endpoints=2), consumer, ComparerMetrics(registry, max_endpoints=2)
    )
    await run_until(comparer, len(results))
    await consumer.close()

    found = samples(registry)
    compared = {
        dict(labels)["endpoint"]: v
        for (name, labels), v in found.items()
        if name == "shadow_compare_compared_total"
    }
    assert len(compared) == 3 and "other" in compared
    assert sum(compared.values()) == 6 and compared["other"] == 4
    assert {s.endpoint for s in comparer.summary()} == set(compared)
    assert sum(s.diverged for s in comparer.summary()) == 5  # every result but e0 differs


# -- issue 5: noise with a secondary, the divergence sink, new metrics, noise learn ----


class ListSink:
    """A real DivergenceSink that keeps what it got; records flush order against commits."""

    def __init__(self) -> None:
        self.added: list[tuple[str, Any]] = []
        self.flushed = 0

    def add(self, result: ReplayResult, verdict: Any, *, real: bool = True) -> None:
        assert verdict.diverged
        orjson.dumps(diffs_to_json(verdict.diffs + verdict.noise))  # what the store persists must serialise
        self.added.append((result.id, verdict))

    def flush(self) -> None:
        self.flushed += 1


def with_secondary(r: ReplayResult, secondary: Response) -> ReplayResult:
    return ReplayResult(
        id=r.id,
        request=r.request,
        endpoint=r.endpoint,
        scheduled=r.scheduled,
        sent=r.sent,
        responses={**r.responses, "secondary": secondary},
        origin=r.origin,
    )


async def test_noise_cancelled_sink_called_and_new_metrics(bus: Bus) -> None:
    ep = "GET /items/{id}"
    results = []
    for i in range(40):
        base = {"id": i, "ts": 1000 + i, "price": 5}
        sec = {"id": i, "ts": 2000 + i, "price": 5}  # ts is noise: differs between two baselines
        cand = {"id": i, "ts": 3000 + i, "price": 6 if i % 4 == 0 else 5}  # price: a real change
        r = make(i, ep, jresp(cand, latency=0.02), jresp(base, latency=0.01))
        results.append(with_secondary(r, jresp(sec, latency=0.01)))
    results.append(make(99, ep, Response(error="timeout: 10s"), jresp({"id": 99})))
    publish(bus, results)

    registry = CollectorRegistry()
    sink = ListSink()
    consumer = AsyncConsumer(bus, [TOPIC], GROUP)
    comparer = Comparer(
        ComparerConfig(), consumer, ComparerMetrics(registry), store=sink, poll_timeout_seconds=0.1
    )
    await run_until(comparer, len(results))
    await consumer.close()

    # One candidate timeout among 41 requests (none in 40 pairs of baseline and secondary)
    # is too little evidence to call the error field real: it stays undecided, not diverged.
    assert (comparer.compared, comparer.diverged) == (41, 10)
    # Kept: the price changes, and the undecided error; never the noise-only results.
    assert sorted(rid for rid, _ in sink.added) == sorted([f"r{i}" for i in range(0, 40, 4)] + ["r99"])
    assert sink.flushed >= 1
    (summary,) = comparer.summary()
    assert (summary.compared, summary.diverged, summary.noisy) == (41, 10, 31)
    assert summary.fields == {"$.price": 10}
    judged = {j.endpoint: j for j in comparer.judgements()}
    stats = {s.path: s for s in judged[ep].fields}
    assert (stats["$.price"].raw, stats["$.price"].noise, stats["$.price"].real) == (10, 0, True)
    assert (stats["$.ts"].raw, stats["$.ts"].noise, stats["$.ts"].twin, stats["$.ts"].state) == (40, 40, 40, "noise")
    assert (stats["error"].raw, stats["error"].state) == (1, "undecided")
    assert judged[ep].fields[0].path == "error"  # status and error first

    found = samples(registry)
    # As judged on arrival: the first price changes came before the field was known real.
    arrival = value(found, "shadow_compare_diverged_total", endpoint=ep, kind="value")
    assert 0 < arrival <= 10
    assert value(found, "shadow_compare_noise_total", endpoint=ep) == 41 - arrival
    assert value(found, "shadow_compare_diverged_total", endpoint=ep, kind="error") == 0
    assert value(found, "shadow_compare_run_diverged", endpoint=ep) == 10
    assert value(found, "shadow_compare_latency_regression", endpoint=ep) == 0
    assert value(found, "shadow_compare_latency_ratio_count", endpoint=ep) == 40
    assert value(found, "shadow_compare_latency_ratio_bucket", endpoint=ep, le="2.0") == 40
    assert value(found, "shadow_compare_latency_ratio_bucket", endpoint=ep, le="1.5") == 0
    assert value(found, "shadow_compare_latency_ratio_bucket", endpoint=ep, le="100.0") == 40
    assert value(found, "shadow_compare_status_total", target="candidate", **{"class": "2xx"}) == 40
    assert value(found, "shadow_compare_status_total", target="candidate", **{"class": "error"}) == 1
    assert value(found, "shadow_compare_status_total", target="secondary", **{"class": "2xx"}) == 40


async def test_latency_regression_and_routes_from_config(bus: Bus) -> None:
    results = [
        make(i, "GET /api/users/{id}/cart", jresp({"a": 1}, latency=0.3), jresp({"a": 1}, latency=0.01))
        for i in range(3)
    ]
    publish(bus, results)
    registry = CollectorRegistry()
    consumer = AsyncConsumer(bus, [TOPIC], GROUP)
    cfg = ComparerConfig(routes=("GET /api/users/*/cart",), latency_ratio_threshold=3.0)
    comparer = Comparer(cfg, consumer, ComparerMetrics(registry), poll_timeout_seconds=0.1)
    await run_until(comparer, len(results))
    await consumer.close()
    (summary,) = comparer.summary()
    assert summary.endpoint == "GET /api/users/*/cart"
    assert (summary.diverged, summary.kinds) == (3, {"latency": 1 * 3})
    found = samples(registry)
    assert value(found, "shadow_compare_diverged_total", endpoint="GET /api/users/*/cart", kind="latency") == 3


async def test_noise_learn_against_a_real_baseline(tmp_path: Path) -> None:
    import itertools

    from aiohttp import web

    from shadowreplay.commands import noise_learn as learn
    from shadowreplay.contract.config import BusConfig, Config

    counter = itertools.count()

    async def item(request: web.Request) -> web.Response:
        n = next(counter)
        # A cookie jar would send this back on the second request, and the answer would differ.
        cookie = request.cookies.get("seen", "")
        resp = web.json_response(
            {"id": int(request.match_info["i"]), "served_at": n, "items": [{"k": 1, "nonce": n}], "stable": "x",
             "cookie": cookie}
        )
        resp.set_cookie("seen", "1")
        return resp

    async def page(request: web.Request) -> web.Response:
        return web.json_response({"took_ms": next(counter), "served_at": next(counter)})

    app = web.Application()
    app.router.add_get("/item/{i}", item)
    app.router.add_get("/page", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        cfg = Config(bus=BusConfig(url=f"sqlite:///{tmp_path / 'learn.db'}", partitions=1))
        b = open_bus(cfg.bus.url, 1)
        b.ensure_topic(cfg.bus.requests_topic, 1)
        producer = b.producer()
        from shadowreplay.contract.record import encode_request

        for i in range(12):
            target = f"/item/{i}" if i % 3 else "/page"
            rec = RequestRecord(id=f"q{i}", ts=1 + i, method="GET", target=target)
            producer.publish(cfg.bus.requests_topic, encode_request(rec), key=rec.id.encode())
        post = RequestRecord(id="p", ts=99, method="POST", target="/item/1")
        producer.publish(cfg.bus.requests_topic, encode_request(post), key=b"p")
        lower = RequestRecord(id="l", ts=100, method="get", target="/item/2")  # not a GET on the wire
        producer.publish(cfg.bus.requests_topic, encode_request(lower), key=b"l")
        producer.flush()
        producer.close()
        b.close()

        records = await asyncio.to_thread(learn.read_sample, cfg, 50, 1.0)
        assert len(records) == 12  # the POST is not replayable by default
        sample = await learn.learn(cfg, records, f"http://127.0.0.1:{port}")
        assert sample.requests == {"GET /item/{id}": 8, "GET /page": 4}
        text = learn.propose(sample)
        import tomllib

        proposal = tomllib.loads(text)
        assert proposal["ignore_paths"] == ["$.served_at"]
        rules = {r["match"]: r["ignore_paths"] for r in proposal["comparer"]["endpoints"]}
        assert rules == {"GET /item/{id}": ["$.items[*].nonce"], "GET /page": ["$.took_ms"]}
        assert "stable" not in text and "$.id" not in text and "cookie" not in text
        assert text.startswith("# Proposed by `shadowreplay noise learn`")

        # The sample goes through the replayer's rules: what a replay would not send (or
        # would send rewritten), noise learn does not send either.
        ruled = dataclasses.replace(
            cfg,
            replayer=dataclasses.replace(
                cfg.replayer,
                rules=(
                    ReplayRule(kind="exclude_path", pattern="^/page"),
                    ReplayRule(kind="set_header", name="X-Learn", value="1"),
                ),
            ),
        )
        records = await asyncio.to_thread(learn.read_sample, ruled, 50, 1.0)
        assert sorted(r.id for r in records) == sorted(f"q{i}" for i in range(12) if i % 3)
        assert all(("X-Learn", "1") in r.headers for r in records)
    finally:
        await runner.cleanup()


async def test_noise_learn_never_leaves_the_baseline_and_takes_any_logged_header() -> None:
    """Targets that name another host (``@host``, ``//host``, absolute-form) reach the
    baseline as paths, and a logged Authorization is sent as a header, not a crash (noise
    learn built ``base + target`` URLs with aiohttp: issue 18)."""
    from ingest_peers import RawBackend

    from shadowreplay.commands import noise_learn as learn
    from shadowreplay.contract.config import Config

    baseline, elsewhere = await RawBackend().start(), await RawBackend().start()
    other = f"127.0.0.1:{elsewhere.port}"
    records = [
        RequestRecord(id=f"h{i}", ts=i, method="GET", target=t, client="10.0.0.9",
                      headers=(("Authorization", "Basic dXNlcjpwYXNz"), ("Cookie", "a=1")))
        for i, t in enumerate([f"@{other}/x", f"//{other}/x", f"http://{other}/x", "/plain"])
    ]
    try:
        sample = await learn.learn(Config(), records, f"http://user:secret@127.0.0.1:{baseline.port}")
    finally:
        await baseline.close()
        await elsewhere.close()
    assert elsewhere.received == []
    assert sum(sample.requests.values()) == 4 and not sample.failed
    lines = sorted(r.request_line for r in baseline.received)  # pairs in flight at once: any order
    assert lines == sorted(f"GET {t} HTTP/1.1".encode() for t in (f"/@{other}/x", f"//{other}/x", "/x", "/plain") * 2)
    for r in baseline.received:  # the baseline URL's userinfo is never sent; the logged one is
        assert r.header(b"Authorization") == b"Basic dXNlcjpwYXNz"
        assert r.header(b"X-Forwarded-For") == b"10.0.0.9"
