"""Latency per endpoint: the log-scale sketch, order-statistic intervals, the regression rule."""

from __future__ import annotations

import random

import pytest

from shadowreplay.comparer.latency import GAMMA, LatencyRules, LogSketch, judge_latency
from shadowreplay.comparer.noise import z_for


def sketch(values: list[float]) -> LogSketch:
    s = LogSketch()
    for v in values:
        s.add(v)
    return s


def test_quantiles_within_one_percent_and_bounded_bins() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-4, 1.0) for _ in range(50_000)]
    s = sketch(values)
    values.sort()
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert s.quantile(q) == pytest.approx(exact, rel=0.012)
    assert len(s.bins) < 1200 and s.count == 50_000
    assert sketch([0.0, 1e-9]).quantile(0.5) is not None  # tiny and zero latencies have a bin


def test_intervals_cover_the_true_median_about_99_times_in_100() -> None:
    rng = random.Random(3)
    z = z_for(0.99)
    misses = 0
    for _ in range(300):
        s = sketch([rng.uniform(0.010, 0.030) for _ in range(200)])
        lo_hi = s.interval(0.5, z)
        assert lo_hi is not None
        misses += not (lo_hi[0] <= 0.020 <= lo_hi[1])
    assert misses <= 9  # expected about 3


def test_too_few_values_give_no_interval() -> None:
    assert sketch([0.01] * 5).interval(0.5, z_for(0.99)) is None
    assert sketch([0.01] * 100).interval(0.95, z_for(0.99)) is None


def test_60_ms_slower_is_a_regression_identical_is_not() -> None:
    rng = random.Random(11)
    base = [0.002 + rng.expovariate(1000) for _ in range(500)]
    rules = LatencyRules()
    slow = judge_latency(sketch(base), sketch([b + 0.060 for b in base]), rules)
    assert slow.regression and slow.quantile == 0.5 and slow.slower_ms is not None and slow.slower_ms > 50
    assert slow.candidate_p50_ms is not None and slow.baseline_p50_ms is not None
    assert slow.candidate_p50_ms - slow.baseline_p50_ms == pytest.approx(60, rel=0.05)
    same = judge_latency(sketch(base), sketch([0.002 + rng.expovariate(1000) for _ in range(500)]), rules)
    assert not same.regression and same.quantile is None


def test_both_thresholds_must_be_exceeded() -> None:
    base = [0.100 * GAMMA ** (i % 5) for i in range(400)]
    cand = [v * 1.3 for v in base]  # 30 % and ~30 ms slower
    assert judge_latency(sketch(base), sketch(cand), LatencyRules(share=0.2, min_ms=10)).regression
    assert not judge_latency(sketch(base), sketch(cand), LatencyRules(share=0.5, min_ms=10)).regression
    assert not judge_latency(sketch(base), sketch(cand), LatencyRules(share=0.2, min_ms=50)).regression


def test_a_slower_tail_alone_is_found_at_p95() -> None:
    rng = random.Random(5)
    base = [0.010 + rng.random() * 0.002 for _ in range(2000)]
    cand = [v + (0.2 if i % 10 == 0 else 0.0) for i, v in enumerate(base)]
    v = judge_latency(sketch(base), sketch(cand), LatencyRules())
    assert v.regression and v.quantile == 0.95


def test_no_baseline_no_verdict() -> None:
    v = judge_latency(None, sketch([0.5] * 100), LatencyRules())
    assert not v.regression and v.baseline_p50_ms is None and v.candidate_samples == 100
