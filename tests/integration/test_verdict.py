"""The verdict on a noisy backend, through the real pipeline (collector → bus → replayer
→ comparer → store): noise never reported, every value and status regression reported
with its exact count, the slow route a latency regression; nothing for an identical
candidate. With a secondary, and without one (the baseline probes). Counts, not timings
(bench/verdict.py prints the same as figures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.noisy_scenario import CARTS, LISTING, PRODUCTS, RPC, SEARCH, run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("secondary", [True, False], ids=["secondary", "probes"])
async def test_noisy_backend_regressions_found_exactly_and_noise_never(tmp_path: Path, secondary: bool) -> None:
    out = await run(tmp_path, secondary=secondary, regressions=True)
    assert out.compared == 3000
    assert out.noise_reported == 0
    assert len(out.expected["value"]) > 100 and len(out.expected["status"]) > 50
    assert out.found("value") == len(out.expected["value"])
    assert out.found("status") == len(out.expected["status"])
    v = out.views
    assert v[PRODUCTS].diverged == len(out.expected["value"]) and v[CARTS].diverged == len(out.expected["status"])
    assert [f.path for f in v[PRODUCTS].fields if f.real] == ["$.price"]
    assert [f.path for f in v[CARTS].fields][0] == "status"
    assert {f.path: f.state for f in v[PRODUCTS].fields}["$.served_by"] == "noise"
    for name in (SEARCH, LISTING, RPC):
        assert v[name].diverged == 0, (name, [(f.path, f.state, f.raw, f.twin) for f in v[name].fields])
    assert out.latency_regressions == [SEARCH]
    assert v[SEARCH].latency.candidate_p50_ms is not None and v[SEARCH].latency.baseline_p50_ms is not None
    assert v[SEARCH].latency.candidate_p50_ms - v[SEARCH].latency.baseline_p50_ms > 50
    if secondary:
        assert out.probes == 0 and v[PRODUCTS].paired == v[PRODUCTS].compared
    else:
        assert 0 < out.probes < 600 and 0 < v[PRODUCTS].paired < v[PRODUCTS].compared


@pytest.mark.parametrize("secondary", [True, False], ids=["secondary", "probes"])
async def test_identical_candidate_gives_no_divergence_and_no_latency_regression(tmp_path: Path, secondary: bool) -> None:
    out = await run(tmp_path, secondary=secondary, regressions=False)
    assert out.compared == 3000
    assert {name: v.diverged for name, v in out.views.items() if v.diverged} == {}
    assert out.latency_regressions == []


async def test_a_candidate_that_refuses_connections_is_not_compared_and_logged_once(
    tmp_path: Path, unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses
    import logging

    import aiohttp

    from shadowreplay.app import Pipeline
    from shadowreplay.contract.record import RequestRecord, encode_request
    from tests.conftest import loopback_config
    from tests.noisy_scenario import BASE_NS, NoisyBackend
    from waiting import until

    baseline, candidate = NoisyBackend(), NoisyBackend()
    base_url = await baseline.start()
    cfg = loopback_config(tmp_path / "bus.db", candidate=f"http://127.0.0.1:{unused_port}", baseline=base_url, speed=1000.0)
    cfg = dataclasses.replace(cfg, comparer=dataclasses.replace(
        cfg.comparer, store=dataclasses.replace(cfg.comparer.store, path=str(tmp_path / "diffs.db"))))
    caplog.set_level(logging.INFO, logger="shadowreplay.comparer.reach")

    try:
        async with Pipeline(cfg, ("replay", "compare")) as pipeline:
            assert pipeline.bus is not None and pipeline.comparer is not None
            comparer = pipeline.comparer
            producer = pipeline.bus.producer()

            def publish(first: int, count: int) -> None:
                for i in range(first, first + count):
                    rec = RequestRecord(id=f"r{i}", ts=BASE_NS + i * 1_000_000, method="GET", target=f"/api/products/{i}")
                    producer.publish(cfg.bus.requests_topic, encode_request(rec), key=rec.id.encode(), timestamp_ns=rec.ts)
                producer.flush()

            publish(0, 40)
            await until(lambda: comparer.not_compared == 40, "40 results not compared")
            assert (comparer.compared, comparer.diverged) == (0, 0)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{pipeline.metrics_server.port}/readyz") as r:
                    body = await r.json()
                    assert r.status == 503 and "40 results not compared" in body["checks"]["results:candidate"]
                async with http.get(f"http://127.0.0.1:{pipeline.metrics_server.port}/metrics") as r:
                    text = await r.text()
            assert 'shadow_compare_not_compared_total{reason="connect",target="candidate"} 40.0' in text
            assert 'shadow_compare_target_unreachable{target="candidate"} 1.0' in text

            await candidate.start(unused_port)  # the candidate comes back
            publish(100, 40)
            await until(lambda: comparer.compared == 40, "40 results compared")
            producer.close()
            assert comparer.diverged == 0 and comparer.not_compared == 40
            assert pipeline.comparer.reach.down() == {}
    finally:
        await baseline.stop()
        await candidate.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "shadowreplay.comparer.reach"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("candidate not reached (connect)")
    window = f"--from={BASE_NS // 10**9}.{BASE_NS % 10**9:09d}"
    assert "40 results not compared (connect)" in lines[1] and window in lines[1] and "--to=" in lines[1]
