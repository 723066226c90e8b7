"""Stream metrics (time to first body byte, streaming divergences by kind) and the arrival
chart (comparer/chart.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from prometheus_client import CollectorRegistry, generate_latest

from shadowreplay.comparer.chart import arrival_svg
from shadowreplay.comparer.diff import Differ
from shadowreplay.comparer.metrics import FIRST_BYTE_BUCKETS, ComparerMetrics
from shadowreplay.contract.config import ComparerConfig
from shadowreplay.contract.record import ReplayResult, RequestRecord, Response

TEXT = (("Content-Type", "text/plain"),)
PROGRESSIVE = tuple((round(0.002 + 0.1 * i, 6), 27 * (i + 1)) for i in range(20))
HELD = ((2.015, 91),)
SVG = "{http://www.w3.org/2000/svg}"


def result(rid: str, **responses: Response) -> ReplayResult:
    req = RequestRecord(id=rid, ts=1, method="GET", target="/deploys/7/log")
    return ReplayResult(id=rid, request=req, endpoint="GET /deploys/{id}/log", scheduled=1, sent=2, responses=responses)


def resp(timeline: tuple[tuple[float, int], ...]) -> Response:
    return Response(status=200, headers=TEXT, body=b"x" * 540, latency=2.0, ttfb=timeline[0][0] if timeline else 0.001,
                    timeline=timeline)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_stream_divergence_kinds_are_exported_at_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    ComparerMetrics(registry)
    for kind in ("buffering", "first_byte_delay", "event_count"):
        assert sample(registry, "shadow_compare_stream_divergences_total", kind=kind) == 0.0
    assert b"shadow_compare_first_body_byte_seconds" in generate_latest(registry)


def test_first_body_byte_per_target_and_endpoint_and_divergences_by_kind() -> None:
    """StreamMetrics as ComparerMetrics.observe feeds it: the bounded endpoint and the
    differences counted as divergences (the pipeline test scrapes the wiring itself)."""
    registry = CollectorRegistry()
    metrics = ComparerMetrics(registry)
    differ = Differ(ComparerConfig())
    endpoint = "GET /deploys/{id}/log"
    for i in range(3):
        res = result(f"r{i}", baseline=resp(PROGRESSIVE), candidate=resp(HELD if i else PROGRESSIVE))
        metrics.streams.observe(res, endpoint, differ.compare(res).diffs)
    for target, first in (("baseline", 0.002), ("candidate", 2.015)):
        assert sample(registry, "shadow_compare_first_body_byte_seconds_count", target=target, endpoint=endpoint) == 3
        total = sample(registry, "shadow_compare_first_body_byte_seconds_sum", target=target, endpoint=endpoint)
        assert total is not None and abs(total - (2 * first + 0.002 if target == "candidate" else 3 * first)) < 1e-9
    assert sample(registry, "shadow_compare_first_body_byte_seconds_bucket", target="baseline", endpoint=endpoint, le="0.002") == 3
    assert sample(registry, "shadow_compare_first_body_byte_seconds_bucket", target="candidate", endpoint=endpoint, le="2.0") == 1
    assert sample(registry, "shadow_compare_first_body_byte_seconds_bucket", target="candidate", endpoint=endpoint, le="5.0") == 3
    assert sample(registry, "shadow_compare_stream_divergences_total", kind="buffering") == 2
    assert sample(registry, "shadow_compare_stream_divergences_total", kind="first_byte_delay") == 0


def test_a_response_without_body_has_no_first_byte() -> None:
    registry = CollectorRegistry()
    metrics = ComparerMetrics(registry)
    res = result("r", baseline=resp(()), candidate=resp(()))
    metrics.streams.observe(res, "GET /deploys/{id}/log", Differ(ComparerConfig()).compare(res).diffs)
    assert sample(registry, "shadow_compare_first_body_byte_seconds_count", target="candidate",
                  endpoint="GET /deploys/{id}/log") is None


def test_first_byte_buckets_do_not_hide_size() -> None:
    assert FIRST_BYTE_BUCKETS[0] < 0.005 and FIRST_BYTE_BUCKETS[-1] >= 30
    assert list(FIRST_BYTE_BUCKETS) == sorted(FIRST_BYTE_BUCKETS)


# -- the chart -------------------------------------------------------------------------


def _polylines(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    out = []
    for line in root.iter(f"{SVG}polyline"):
        out.append([tuple(map(float, p.split(","))) for p in line.attrib["points"].split()])
    return out  # type: ignore[return-value]


def test_the_chart_draws_both_timelines_as_cumulative_steps() -> None:
    svg = arrival_svg(PROGRESSIVE, HELD)
    root = ET.fromstring(svg)  # well-formed XML, an <svg> element
    assert root.tag == f"{SVG}svg" and root.attrib["viewBox"] == "0 0 360 160"
    base, cand = _polylines(svg)
    for line in (base, cand):
        xs, ys = [p[0] for p in line], [p[1] for p in line]
        assert xs == sorted(xs), "time only goes forward"
        assert ys == sorted(ys, reverse=True), "bytes only grow (SVG y grows downwards)"
        assert all(36 <= x <= 352 for x in xs) and all(32 <= y <= 140 for y in ys)
        assert line[0] == (36.0, 140.0) and line[-1][1] == 32.0  # from nothing at the send to the whole body
    # The baseline climbs 20 steps from 2 ms on; the held candidate is flat until its end.
    assert len(base) == 2 + 2 * 20 and base[1][0] < 37
    assert len(cand) == 4 and cand[1] == (352.0, 140.0)
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "baseline: 540 B, first byte 2.0 ms" in text and "candidate: 91 B, first byte 2.02 s" in text
    assert "2.02 s" in text


def test_the_chart_without_a_body_and_with_hostile_labels() -> None:
    svg = arrival_svg([], PROGRESSIVE, labels=("<b>&", '"x"'))
    root = ET.fromstring(svg)
    assert "<b>" not in svg and "&lt;b&gt;&amp;" in svg
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "<b>&: no body" in texts
    base, _ = _polylines(svg)
    assert {y for _, y in base} == {140.0}  # flat at zero
    assert ET.fromstring(arrival_svg([], []))  # nothing at all still draws
