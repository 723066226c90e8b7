"""Replayer metrics: histograms fed in batches read the same as fed one value at a time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shadowreplay.replayer.metrics import HistogramBatch, ReplayerMetrics

VALUES = [0.0, 0.0001, 0.00011, 0.001, 0.0049, 0.005, 0.3, 7.0, 10.0, 10.5, 1e9, -1.0]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        if m.name in ("shadow_replay_schedule_lag_seconds", "shadow_replay_response_seconds")
        for s in m.samples
        if not s.name.endswith("_created")
    }


def test_batched_histograms_match_one_by_one() -> None:
    one, batched = CollectorRegistry(), CollectorRegistry()
    m1, m2 = ReplayerMetrics(one), ReplayerMetrics(batched)
    lag, resp = HistogramBatch(m2.schedule_lag), HistogramBatch(m2.response_seconds.labels(target="candidate"))
    for i, v in enumerate(VALUES):
        m1.schedule_lag.observe(v)
        m1.response_seconds.labels(target="candidate").observe(v)
        lag.values.append(v)
        resp.values.append(v)
        if i % 5 == 4:  # several folds add up
            lag.fold()
            resp.fold()
    lag.fold()
    resp.fold()
    lag.fold()  # nothing new: no change
    assert _samples(batched) == _samples(one)
    assert _samples(one)[("shadow_replay_schedule_lag_seconds_count", ())] == len(VALUES)
