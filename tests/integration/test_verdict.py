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
