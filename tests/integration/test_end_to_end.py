"""The whole pipeline: fluent-logger → collector → bus → replayer → two backends → comparer.

Runs on both bus backends (the embedded SQLite log and a real Kafka-protocol broker).
The candidate backend is built to diverge on known requests, so the test knows exactly
how many divergences the comparer must report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest
from fluent import sender

from shadowreplay.app import Pipeline
from shadowreplay.contract.bus import Bus, open_bus
from shadowreplay.contract.config import Config
from shadowreplay.demo.backends import Backend, expected_divergence
from shadowreplay.demo.run import load_sample
from shadowreplay.contract.record import decode_request, decode_result
from waiting import read_to_end, until

pytestmark = pytest.mark.integration

N_RECORDS = 1200
BASE_NS = 1_795_600_800_000_000_000


def _lines() -> list[dict[str, str]]:
    """1,200 sample log lines, re-timed 1 ms (+ odd nanoseconds) apart."""
    sample = load_sample()[:N_RECORDS]
    assert len(sample) == N_RECORDS
    return sample


def _ts(i: int) -> int:
    return BASE_NS + i * 1_000_000 + 7 * i + 1  # nanoseconds that EventTime must keep


def _emit(lines: list[dict[str, str]], port: int) -> None:
    fluent = sender.FluentSender("nginx.access", host="127.0.0.1", port=port, nanosecond_precision=True, timeout=10.0)
    try:
        for i, rec in enumerate(lines):
            assert fluent.emit_with_time(None, sender.EventTime.from_unix_nano(_ts(i)), rec), fluent.last_error
    finally:
        fluent.close()


def _scrape_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def test_pipeline_end_to_end(bus_url: str, tmp_path: Path) -> None:
    lines = _lines()
    replayable = [(i, r) for i, r in enumerate(lines) if r["request_method"] == "GET"]
    expected = {r["request_id"]: expected_divergence(r["request_method"], r["request_uri"]) for _, r in replayable}
    n_diverge = sum(1 for v in expected.values() if v)
    assert 100 < n_diverge < len(replayable)

    baseline, candidate = Backend(candidate=False), Backend(candidate=True)
    base_url, cand_url = await baseline.start(), await candidate.start()
    suffix = uuid.uuid4().hex[:8]
    d = Config()
    cfg = dataclasses.replace(
        d,
        bus=dataclasses.replace(d.bus, url=bus_url, requests_topic=f"req-{suffix}", results_topic=f"res-{suffix}"),
        collector=dataclasses.replace(d.collector, listen="127.0.0.1:0"),
        replayer=dataclasses.replace(
            d.replayer, candidate=cand_url, baseline=base_url, speed=2.0, group=f"rep-{suffix}"
        ),
        comparer=dataclasses.replace(
            d.comparer, group=f"cmp-{suffix}", store=dataclasses.replace(d.comparer.store, path=str(tmp_path / "diffs.db"))
        ),
        metrics=dataclasses.replace(d.metrics, listen="127.0.0.1:0"),
    )
    try:
        async with Pipeline(cfg) as pipeline:
            assert pipeline.collector and pipeline.comparer and pipeline.replayer
            await asyncio.to_thread(_emit, lines, pipeline.collector.port)
            comparer = pipeline.comparer
            await until(lambda: comparer.compared >= len(replayable), "every replayable request compared", timeout_seconds=120)
            # The end marker: both groups committed every message, so nothing is left that
            # could be replayed or compared (again) — a duplicate would be counted by now.
            await until(lambda: _caught_up(pipeline), "both groups to commit everything")
            assert pipeline.comparer.compared == len(replayable)
            assert pipeline.replayer.replayed == len(replayable)

            # Every replayable request reached each backend exactly once, and nothing else did,
            # except the noise probes: a sample asked of the baseline a second time.
            for backend in (baseline, candidate):
                assert set(backend.seen) == set(expected)
            assert max(candidate.seen.values()) == 1
            probed = {rid for rid, n in baseline.seen.items() if n == 2}
            assert max(baseline.seen.values()) <= 2 and 150 <= len(probed) < len(replayable) // 2

            assert pipeline.comparer.diverged == n_diverge
            by_endpoint = {s.endpoint: s for s in pipeline.comparer.summary()}
            assert by_endpoint["GET /api/users/{id}/cart"].diverged == sum(1 for v in expected.values() if v == "status")
            assert by_endpoint["GET /api/products/{id}"].diverged == sum(1 for v in expected.values() if v == "field")
            assert "$.price" in by_endpoint["GET /api/products/{id}"].fields
            assert by_endpoint["GET /api/search"].diverged == 0
            assert by_endpoint["GET /api/search"].latency.regression  # 40 ms slower, judged per endpoint
            assert not by_endpoint["GET /api/products/{id}"].latency.regression

            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{pipeline.metrics_server.port}/metrics") as resp:
                    assert resp.status == 200
                    text = await resp.text()
            assert _scrape_sum(text, "shadow_compare_compared_total") == len(replayable)
            # The run's verdict, re-judged: exact. The counters judge each request as it
            # arrives, so the first few changes, before a field is known real, are not in them.
            assert _scrape_sum(text, "shadow_compare_run_diverged") == n_diverge
            assert _scrape_sum(text, "shadow_compare_latency_regression", endpoint="GET /api/search") == 1
            matched = _scrape_sum(text, "shadow_compare_matched_total")
            assert n_diverge - 60 < len(replayable) - matched <= n_diverge
            status = sum(1 for v in expected.values() if v == "status")
            assert status - 30 < _scrape_sum(text, "shadow_compare_diverged_total", kind="status") <= status
            assert _scrape_sum(text, "shadow_collector_records_total") == N_RECORDS
            assert _scrape_sum(text, "shadow_replay_records_total") == len(replayable)
    finally:
        await baseline.stop()
        await candidate.stop()

    # The bus holds every request once, with its nanosecond timestamp, and one result each.
    bus = open_bus(cfg.bus.url)
    try:
        topics = [cfg.bus.requests_topic, cfg.bus.results_topic]
        on_bus = _read_all(bus, topics, N_RECORDS + len(replayable))
        requests, results = on_bus[topics[0]], on_bus[topics[1]]
    finally:
        bus.close()
    recs = {r.id: r for r in map(decode_request, requests)}
    assert len(requests) == len(recs) == N_RECORDS
    ts_by_id = {r["request_id"]: _ts(i) for i, r in enumerate(lines)}
    assert all(rec.ts == ts_by_id[rid] for rid, rec in recs.items())
    res = [decode_result(v) for v in results]
    assert sorted(r.id for r in res) == sorted(expected)
    assert {r.id for r in res if "probe" in r.responses} == probed
    assert all(set(r.responses) - {"probe"} == {"candidate", "baseline"} for r in res)


async def _caught_up(pipeline: Pipeline) -> bool:
    """A fresh sample of both groups' lag, and both at 0."""
    monitors = (pipeline.lag["replayer"], pipeline.lag["comparer"])
    return all([await m.sample() for m in monitors]) and all(m.records == 0 for m in monitors)


def _read_all(bus: Bus, topics: list[str], want: int) -> dict[str, list[bytes]]:
    """Every message on ``topics`` (by topic), read to the end of each partition: one
    consumer group for all, since a group takes seconds to form on the Kafka broker."""
    consumer = bus.consumer(topics, f"check-{uuid.uuid4().hex[:8]}")
    out: dict[str, list[bytes]] = {topic: [] for topic in topics}
    try:
        for m in read_to_end(consumer, want=want):
            out[m.topic].append(m.value)
    finally:
        consumer.close()
    return out


def test_bus_dump_prints_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shadowreplay.cli import main

    url = f"sqlite:///{tmp_path / 'b.db'}"
    bus = open_bus(url)
    producer = bus.producer()
    for i in range(3):
        producer.publish("t", orjson.dumps({"i": i}), key=None, timestamp_ns=i)
    producer.flush()
    producer.close()
    bus.close()
    assert main(["bus", "dump", "--bus", url, "--topic", "t", "--idle-seconds", "0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(orjson.loads(line)["i"] for line in out) == [0, 1, 2]
