"""The replayer's Prometheus metrics, registered on a registry handed in (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
RESPONSE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class ReplayerMetrics:
    """Counters, gauges and histograms of one replayer. Labels: target, outcome, reason."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "shadow_replay_requests_total",
            "Requests sent to a target, by outcome (ok: got a status; error: none).",
            ["target", "outcome"],
            registry=registry,
        )
        self.records = Counter(
            "shadow_replay_records_total",
            "Records consumed and replayed.",
            registry=registry,
        )
        self.skipped = Counter(
            "shadow_replay_skipped_total",
            "Records consumed but not replayed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.schedule_lag = Histogram(
            "shadow_replay_schedule_lag_seconds",
            "Send time minus due time.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.late = Counter(
            "shadow_replay_late_total",
            "Records sent later than the lateness tolerance after their due time.",
            registry=registry,
        )
        self.response_seconds = Histogram(
            "shadow_replay_response_seconds",
            "Total time of a replayed request on a target (headers and capped body).",
            ["target"],
            buckets=RESPONSE_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "shadow_replay_inflight",
            "Records being sent right now.",
            registry=registry,
        )
