"""The comparer's Prometheus metrics, on a registry handed in.

Counting rules (dashboards rely on them):

* ``shadow_compare_compared_total{endpoint}`` — results compared (a verdict without error).
* ``shadow_compare_matched_total{endpoint}`` — compared results with no real difference
  as judged when they arrived (the endpoint/field noise model of ``comparer.noise``), so
  the divergence rate of an endpoint is ``1 - matched / compared``.
* ``shadow_compare_diverged_total{endpoint, kind}`` — one increment per diverging result
  *per kind of real difference in it*: a result with a status diff and three value diffs adds
  1 to ``kind="status"`` and 1 to ``kind="value"``. Summing over ``kind`` therefore
  over-counts results; use compared − matched for "how many diverged".
* ``shadow_compare_field_diffs_total{endpoint, kind}`` — every individual real FieldDiff.
* ``shadow_compare_errors_total{reason}`` — results that could not be compared
  (``undecodable``, ``no_candidate``, ``no_reference``, ``compare_failed``, ``not_reached``).
* ``shadow_compare_not_compared_total{target, reason}`` — results not compared because
  the candidate or the baseline was not reached (``reason``: one of
  ``shadowreplay.comparer.diff.UNREACHED_KINDS``).
* ``shadow_compare_latency_seconds{target, endpoint}`` — each target's response latency.
* ``shadow_compare_latency_ratio{endpoint}`` — candidate latency / baseline latency, per
  result where both were measured (1.0 = as fast; 2.0 = twice as slow; buckets up to 100).
* ``shadow_compare_noise_total{endpoint}`` — compared results with differences, none of
  them judged real when they arrived.
* ``shadow_compare_noisy_field_diffs_total{endpoint}`` — individual differences judged noise.

Gauges, judged at scrape time over the comparer's run (re-judged as evidence comes in;
the same verdict as the store, ``diffs`` and the page):

* ``shadow_compare_run_diverged{endpoint}`` — compared results with a real difference.
* ``shadow_compare_latency_regression{endpoint}`` — 1 when the endpoint is a latency
  regression (``comparer.latency``), else 0.
* ``shadow_compare_run_latency_seconds{endpoint, target, quantile}`` — candidate and
  baseline latency at the median and p95 over the run.
* ``shadow_compare_target_unreachable{target}`` — 1 while a target is not reached.
* ``shadow_compare_first_body_byte_seconds{target, endpoint}`` — when each target's first
  body byte arrived, per response with a body (see :class:`StreamMetrics`).
* ``shadow_compare_stream_divergences_total{kind}`` — results with a real streaming
  difference, per kind (``buffering``, ``first_byte_delay``, ``event_count``; each exported at 0).
* ``shadow_compare_status_total{target, class}`` — responses by target and status class
  (``2xx``, ``3xx``, ``4xx``, ``5xx``, ``1xx``, or ``error`` when there was no status),
  for every result that named an endpoint (compared or not).

``endpoint`` takes at most ``max_endpoints`` distinct values, then ``"other"``;
``target`` is one of candidate, baseline, secondary or ``"other"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shadowreplay.comparer.diff import KINDS, UNREACHED_KINDS, FieldDiff, Verdict
from shadowreplay.comparer.endpoints import OVERFLOW
from shadowreplay.comparer.reach import TARGETS
from shadowreplay.comparer.streams import STREAM_KINDS
from shadowreplay.contract.record import ReplayResult

OTHER = OVERFLOW  # endpoints past the bound, unknown targets and kinds
ERROR_REASONS: tuple[str, ...] = ("undecodable", "no_candidate", "no_reference", "compare_failed", "not_reached")
# Fine enough at the bottom for loopback and cache hits (no floor at 5 ms), wide enough
# at the top that a slow target shows its size.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0,
)
# Up to 100x slower (and down to 10x faster): no cap at 10.
RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
#: The comparer group's consumer lag (records, seconds), exported by shadowreplay.lag.
CONSUMER_LAG = ("shadow_compare_consumer_lag_records", "shadow_compare_consumer_lag_seconds")


class EndpointLimiter:
    """Maps endpoint names onto a bounded set: the first ``max_endpoints`` seen, then "other"."""

    def __init__(self, max_endpoints: int = 200) -> None:
        if max_endpoints < 1:
            raise ValueError("max_endpoints must be >= 1")
        self.max_endpoints = max_endpoints
        self._known: set[str] = set()

    def __call__(self, endpoint: str) -> str:
        # OTHER takes no slot: the comparer's namer may already answer it (same bound).
        if endpoint in self._known or endpoint == OTHER:
            return endpoint
        if len(self._known) < self.max_endpoints:
            self._known.add(endpoint)
            return endpoint
        return OTHER

    def __len__(self) -> int:
        return len(self._known)


class VerdictSource(Protocol):
    """What the run gauges read at scrape time (the comparer)."""

    def judgements(self) -> Sequence[Any]: ...

    def unreachable_targets(self) -> Mapping[str, Any]: ...


class _RunGauges(Collector):
    def __init__(self, source: VerdictSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        diverged = GaugeMetricFamily(
            "shadow_compare_run_diverged",
            "Compared results with a real difference over the run, judged now (re-judged as noise is learned).",
            labels=["endpoint"],
        )
        regression = GaugeMetricFamily(
            "shadow_compare_latency_regression",
            "1 when the endpoint's candidate is confidently slower than the baseline by the configured share and ms.",
            labels=["endpoint"],
        )
        latency = GaugeMetricFamily(
            "shadow_compare_run_latency_seconds",
            "Candidate and baseline latency over the run at the median and p95 (log-scale sketch, ±1 %).",
            labels=["endpoint", "target", "quantile"],
        )
        for j in self._source.judgements():
            diverged.add_metric([j.endpoint], j.diverged)
            regression.add_metric([j.endpoint], 1.0 if j.latency.regression else 0.0)
            for target in ("baseline", "candidate"):
                for q, value in (("0.5", getattr(j.latency, f"{target}_p50_ms")),
                                 ("0.95", getattr(j.latency, f"{target}_p95_ms"))):
                    if value is not None:
                        latency.add_metric([j.endpoint, target, q], value / 1000.0)
        unreachable = GaugeMetricFamily(
            "shadow_compare_target_unreachable",
            "1 while a replay target is not reached (its results are not compared).",
            labels=["target"],
        )
        down = self._source.unreachable_targets()
        for target in sorted(TARGETS):
            unreachable.add_metric([target], 1.0 if target in down else 0.0)
        yield from (diverged, regression, latency, unreachable)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class ComparerMetrics:
    """Every metric the comparer exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, max_endpoints: int = 200) -> None:
        self._registry = registry
        self.endpoints = EndpointLimiter(max_endpoints)
        self.compared = Counter(
            "shadow_compare_compared_total",
            "Replay results compared.",
            ["endpoint"],
            registry=registry,
        )
        self.matched = Counter(
            "shadow_compare_matched_total",
            "Compared replay results with no difference from the reference.",
            ["endpoint"],
            registry=registry,
        )
        self.diverged = Counter(
            "shadow_compare_diverged_total",
            "Diverging replay results, one increment per diff kind present in a result.",
            ["endpoint", "kind"],
            registry=registry,
        )
        self.field_diffs = Counter(
            "shadow_compare_field_diffs_total",
            "Individual differences found (fields, status, headers, digests).",
            ["endpoint", "kind"],
            registry=registry,
        )
        self.errors = Counter(
            "shadow_compare_errors_total",
            "Replay results that could not be compared, by reason.",
            ["reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "shadow_compare_latency_seconds",
            "Response latency of each replay target, as measured by the replayer.",
            ["target", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.latency_ratio = Histogram(
            "shadow_compare_latency_ratio",
            "Candidate latency divided by baseline latency, per compared result.",
            ["endpoint"],
            buckets=RATIO_BUCKETS,
            registry=registry,
        )
        self.noise = Counter(
            "shadow_compare_noise_total",
            "Compared results in which at least one difference was cancelled as noise.",
            ["endpoint"],
            registry=registry,
        )
        self.noisy_field_diffs = Counter(
            "shadow_compare_noisy_field_diffs_total",
            "Individual differences cancelled as noise (baseline and secondary differed too, or noise_paths).",
            ["endpoint"],
            registry=registry,
        )
        self.not_compared = Counter(
            "shadow_compare_not_compared_total",
            "Results not compared because the candidate or the baseline was not reached, by target and reason.",
            ["target", "reason"],
            registry=registry,
        )
        self.status = Counter(
            "shadow_compare_status_total",
            "Responses by target and status class (error: no status, the request failed).",
            ["target", "class"],
            registry=registry,
        )
        for reason in ERROR_REASONS:
            self.errors.labels(reason=reason)
        for target in ("candidate", "baseline"):
            for reason in UNREACHED_KINDS:
                self.not_compared.labels(target=target, reason=reason)
        self.streams = StreamMetrics(registry)  # streaming responses: see the end of this module

    def watch(self, source: VerdictSource) -> None:
        """Export the run gauges of ``source`` (read at each scrape)."""
        self._registry.register(_RunGauges(source))

    def error(self, reason: str) -> None:
        self.errors.labels(reason=reason).inc()

    def observe(self, result: ReplayResult, verdict: Verdict, real: Sequence[FieldDiff]) -> None:
        """Record one result: its verdict (``real``: its differences on fields judged real
        now) and every target's latency."""
        endpoint = self.endpoints(verdict.endpoint)
        self.streams.observe(result, endpoint, real if verdict.error is None else ())
        for target, response in result.responses.items():
            label = target if target in TARGETS else OTHER
            self.status.labels(target=label, **{"class": status_class(response.status, response.error)}).inc()
            if response.latency is not None:
                self.latency.labels(target=label, endpoint=endpoint).observe(response.latency)
        if verdict.error is not None:
            self.error(verdict.error)
            if verdict.not_reached is not None:
                target, reason = verdict.not_reached
                self.not_compared.labels(target=target, reason=reason).inc()
            return
        self.compared.labels(endpoint=endpoint).inc()
        if verdict.latency_ratio is not None:
            self.latency_ratio.labels(endpoint=endpoint).observe(verdict.latency_ratio)
        noisy = len(verdict.noise) + len(verdict.diffs) - len(real)
        if noisy and not real:
            self.noise.labels(endpoint=endpoint).inc()
        if noisy:
            self.noisy_field_diffs.labels(endpoint=endpoint).inc(noisy)
        matched = self.matched.labels(endpoint=endpoint)  # exported as 0 until the first match
        if not real:
            matched.inc()
            return
        counts: dict[str, int] = {}
        for d in real:
            counts[d.kind] = counts.get(d.kind, 0) + 1
        for kind, n in counts.items():
            label = kind if kind in KINDS else OTHER
            self.diverged.labels(endpoint=endpoint, kind=label).inc()
            self.field_diffs.labels(endpoint=endpoint, kind=label).inc(n)


def status_class(status: int | None, error: str | None = None) -> str:
    """``2xx`` … ``5xx`` (``1xx`` too), or ``error`` for a failed request or an odd status."""
    if error is not None or status is None or not 100 <= status <= 599:
        return "error"
    return f"{status // 100}xx"


# -- streams (issue 21): time to first body byte, streaming divergences by kind ----------

#: No floor at 5 ms (a stream's first byte on loopback comes in well under one) and up to a
#: minute (a buffered stream's first byte comes at its end).
FIRST_BYTE_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
)


class StreamMetrics:
    """``shadow_compare_first_body_byte_seconds{target, endpoint}``: when each target's
    first body byte arrived (the first point of its timeline), for every response with a
    body. ``shadow_compare_stream_divergences_total{kind}``: results with a streaming
    difference, one increment per kind present (``shadowreplay.comparer.streams.STREAM_KINDS``; every
    kind exported at 0 from the start)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.first_body_byte = Histogram(
            "shadow_compare_first_body_byte_seconds",
            "Time from sending a request to the first body byte of the answer, per replay target.",
            ["target", "endpoint"],
            buckets=FIRST_BYTE_BUCKETS,
            registry=registry,
        )
        self.divergences = Counter(
            "shadow_compare_stream_divergences_total",
            "Results whose candidate streamed differently (buffering, first_byte_delay) or sent "
            "another number of events (event_count), one increment per kind present.",
            ["kind"],
            registry=registry,
        )
        for kind in STREAM_KINDS:
            self.divergences.labels(kind=kind)

    def observe(self, result: ReplayResult, endpoint: str, diffs: Sequence[FieldDiff]) -> None:
        """Every target's first body byte of ``result`` (``endpoint`` already bounded), and
        the stream kinds among ``diffs`` (the differences counted as divergences)."""
        for target, response in result.responses.items():
            if response.timeline:
                label = target if target in TARGETS else OTHER
                self.first_body_byte.labels(target=label, endpoint=endpoint).observe(response.timeline[0][0])
        for kind in {d.kind for d in diffs if d.kind in STREAM_KINDS}:
            self.divergences.labels(kind=kind).inc()
