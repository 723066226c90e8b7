"""The replayer's Prometheus metrics, registered on a registry handed in (never the global one)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

LAG_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
RESPONSE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
#: Error kinds of a request that got no status (replayer/client.py's error_kind and
#: http1's HTTPFailure kinds), exported at 0 per target from the start. A kind not
#: listed here is still counted; it appears on its first occurrence.
ERROR_KINDS = ("connect", "timeout", "reset", "tls", "protocol", "request", "client")
#: Why a consumed record was not replayed (replayer/loop.py), exported at 0 from the start.
SKIP_REASONS = ("bad_record", "outside_window", "method_not_allowed", "sampled_out", "filtered")
#: The replayer group's consumer lag (records, seconds), exported by shadowreplay.lag.
CONSUMER_LAG = ("shadow_replay_consumer_lag_records", "shadow_replay_consumer_lag_seconds")
#: The parent of ``replay --workers N``: children it runs, and children whose /metrics it read.
WORKERS = ("shadow_replay_workers_expected", "shadow_replay_workers_up")


class ReplayerMetrics:
    """Counters, gauges and histograms of one replayer. Labels: target, outcome, reason.

    ``targets`` (the configured ones: candidate, baseline, secondary) get their request,
    error and truncation counters exported at 0 from the start, as do the skip reasons,
    so a dashboard panel shows 0, not "No data", on a healthy replay."""

    def __init__(self, registry: CollectorRegistry, targets: tuple[str, ...] = ()) -> None:
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
        self.dropped = Counter(
            "shadow_replay_dropped_total",
            "Records not sent because they were late and late_policy is drop.",
            registry=registry,
        )
        self.rule_hits = Counter(
            "shadow_replay_rule_hits_total",
            "Records a rule acted on, by rule (index:kind, or methods) and action (drop, rewrite).",
            ["rule", "action"],
            registry=registry,
        )
        self.errors = Counter(
            "shadow_replay_errors_total",
            "Requests that got no HTTP status, by target and error kind.",
            ["target", "kind"],
            registry=registry,
        )
        self.truncated = Counter(
            "shadow_replay_truncated_total",
            "Responses whose body was cut at max_body_bytes, by target.",
            ["target"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "shadow_replay_assigned_partitions",
            "Bus partitions this replayer owns right now.",
            registry=registry,
        )
        for target in targets:
            for outcome in ("ok", "error"):
                self.requests.labels(target=target, outcome=outcome)
            for kind in ERROR_KINDS:
                self.errors.labels(target=target, kind=kind)
            self.truncated.labels(target=target)
        for reason in SKIP_REASONS:
            self.skipped.labels(reason=reason)


class HistogramBatch:
    """Observations of one histogram (or labelled child) kept in ``values`` and added in
    one go by ``fold()``: a bisect per value and one locked add per bucket touched, instead
    of a locked add and a scan of the buckets per value. Call ``fold`` from the thread
    that appends (the event loop) a few times a second at least."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self.values: list[float] = []
        # prometheus_client keeps per-bucket (not cumulative) values and the sum in these;
        # without them (another version), each value is observed one by one.
        self._bounds: list[float] | None = None
        if hasattr(histogram, "_buckets") and hasattr(histogram, "_sum") and hasattr(histogram, "_upper_bounds"):
            self._bounds = list(histogram._upper_bounds)

    def fold(self) -> None:
        values, self.values = self.values, []
        if not values:
            return
        histogram, bounds = self._histogram, self._bounds
        if bounds is None:
            for value in values:
                histogram.observe(value)
            return
        counts: dict[int, int] = {}
        for value in values:
            i = bisect_left(bounds, value)  # the first bucket with value <= bound (+Inf last)
            counts[i] = counts.get(i, 0) + 1
        histogram._sum.inc(sum(values))
        for i, count in counts.items():
            histogram._buckets[i].inc(count)


class ScheduleCollector:
    """Scrape-time view of the schedule (registered on ``registry``):

    * ``shadow_replay_due_total`` — records whose due time has come, sent or not:
      ``rate()`` of it is the request rate the schedule asks for (speed × recorded rate),
      to compare with ``rate(shadow_replay_records_total)``, the rate achieved;
    * ``shadow_replay_bus_lag_seconds`` — how far behind schedule the replay is: now
      minus the due time of the oldest record due but not yet sent (0 when on time).

    ``position`` returns both, e.g. ``Replayer.schedule_position``.
    """

    def __init__(self, registry: CollectorRegistry, position: Callable[[], tuple[int, float]]) -> None:
        self._position = position
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [
            CounterMetricFamily("shadow_replay_due", _DUE_HELP),
            GaugeMetricFamily("shadow_replay_bus_lag_seconds", _LAG_HELP),
        ]

    def collect(self) -> Iterator[Metric]:
        due, behind = self._position()
        yield CounterMetricFamily("shadow_replay_due", _DUE_HELP, value=due)
        yield GaugeMetricFamily("shadow_replay_bus_lag_seconds", _LAG_HELP, value=behind)


_DUE_HELP = "Records whose due time has come (sent or still waiting); rate() is the target rate."
_LAG_HELP = "Now minus the due time of the oldest record due but not yet sent (0 when on time)."
