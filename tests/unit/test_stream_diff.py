"""Streams through the whole differ (shadowreplay.comparer.diff.Differ → comparer/streams.py): cadence
kinds and event-by-event SSE bodies flow through the usual Verdict, under the usual
ignore, noise and per-endpoint rules."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import orjson
import pytest

from shadowreplay.comparer.cadence import CadenceRules, judge
from shadowreplay.comparer.store import diffs_to_json
from shadowreplay.comparer.diff import KINDS, Differ, FieldDiff
from shadowreplay.comparer.sse import CountTolerance
from shadowreplay.comparer.streams import describe, stream_rules
from shadowreplay.contract import config as configmod
from shadowreplay.contract.config import ComparerConfig, ComparerStreamsConfig, EndpointRules
from shadowreplay.contract.errors import ConfigError
from shadowreplay.contract.record import ReplayResult, RequestRecord, Response

TEXT = (("Content-Type", "text/plain"),)
SSE = (("Content-Type", "text/event-stream"),)
LINES = b"".join(b"line %02d of the deploy log\n" % i for i in range(20))
PROGRESSIVE = tuple((round(0.002 + 0.1 * i, 6), 27 * (i + 1)) for i in range(20))
HELD = ((2.015, 91),)


def events(n: int, ts: float) -> bytes:
    return b"".join(b'id: %d\nevent: tick\ndata: {"n": %d, "ts": %f}\n\n' % (i, i, ts + i) for i in range(n))


def result(**responses: Response) -> ReplayResult:
    req = RequestRecord(id="r1", ts=1, method="GET", target="/deploys/7/log")
    return ReplayResult(id="r1", request=req, endpoint="GET /deploys/{id}/log", scheduled=1, sent=2,
                        responses=responses)


def lines(timeline: tuple[tuple[float, int], ...], **kw: object) -> Response:
    return Response(status=200, headers=TEXT, body=LINES, latency=timeline[-1][0], ttfb=timeline[0][0],
                    timeline=timeline, **kw)  # type: ignore[arg-type]


def sse(n: int, ts: float, *, cut: bool = True) -> Response:
    body = events(n, ts)
    timeline = tuple((round(0.002 + 0.1 * i, 6), len(events(i + 1, ts))) for i in range(n))
    return Response(status=200, headers=SSE, body=body, latency=3.0, ttfb=0.001, timeline=timeline,
                    stream=True, stream_window_reached=cut)


def kinds(verdict: object) -> list[tuple[str, str]]:
    return [(d.path, d.kind) for d in verdict.diffs]  # type: ignore[attr-defined]


def test_stream_kinds_are_known_kinds() -> None:
    assert {"buffering", "first_byte_delay", "event_count"} <= set(KINDS)


def test_a_held_stream_diverges_as_buffering_with_equal_bodies() -> None:
    verdict = Differ(ComparerConfig()).compare(result(baseline=lines(PROGRESSIVE, stream=True), candidate=lines(HELD)))
    assert kinds(verdict) == [("cadence:buffering", "buffering")]
    assert verdict.diffs[0].left["first_byte_ms"] == 2.0 and verdict.diffs[0].right["first_byte_ms"] == 2015.0
    # The verdict stays JSON: the store and the page keep it as it is.
    assert orjson.loads(orjson.dumps(diffs_to_json(verdict.diffs)))[0]["right"]["largest_burst"] == 1.0


def test_the_same_cadence_does_not_diverge() -> None:
    jittered = tuple((t + 0.003 * (i % 3), n) for i, (t, n) in enumerate(PROGRESSIVE))
    verdict = Differ(ComparerConfig()).compare(result(baseline=lines(PROGRESSIVE), candidate=lines(jittered)))
    assert not verdict.diverged


def test_cadence_is_off_by_config_and_ignorable_per_endpoint() -> None:
    pair = result(baseline=lines(PROGRESSIVE), candidate=lines(HELD))
    off = ComparerConfig(streams=ComparerStreamsConfig(cadence=False))
    assert not Differ(off).compare(pair).diverged
    per_endpoint = ComparerConfig(endpoints=(EndpointRules(match="GET /deploys/*", ignore_paths=("cadence:*",)),))
    assert not Differ(per_endpoint).compare(pair).diverged


def test_cadence_thresholds_come_from_config() -> None:
    pair = result(baseline=lines(PROGRESSIVE), candidate=lines(HELD))
    strict = ComparerConfig(streams=ComparerStreamsConfig(min_spread_seconds=5.0))  # the baseline is no stream then
    assert not Differ(strict).compare(pair).diverged


def test_the_baseline_twin_makes_erratic_cadence_noise() -> None:
    """A baseline that itself sometimes arrives in one burst: the secondary shows it, so the
    candidate's buffering in that request is noise."""
    pair = result(baseline=lines(PROGRESSIVE), candidate=lines(HELD), secondary=lines(HELD))
    verdict = Differ(ComparerConfig()).compare(pair)
    assert not verdict.diverged and [d.kind for d in verdict.noise] == ["buffering"]


def test_event_streams_are_compared_event_by_event() -> None:
    pair = result(baseline=sse(30, 1.0), candidate=sse(29, 2.0))
    verdict = Differ(ComparerConfig()).compare(pair)
    # Not by line: by event, the timestamp inside each event's JSON data a field path.
    assert kinds(verdict) == [(f"$.events[{i}].data.ts", "value") for i in range(29)]


def test_an_event_timestamp_is_noise_by_rule_or_by_the_secondary() -> None:
    pair = result(baseline=sse(30, 1.0), candidate=sse(29, 2.0))
    by_rule = Differ(ComparerConfig(noise_paths=("$.events[*].data.ts",))).compare(pair)
    assert not by_rule.diverged and len(by_rule.noise) == 29
    twin = result(baseline=sse(30, 1.0), candidate=sse(29, 2.0), secondary=sse(30, 3.0))
    by_twin = Differ(ComparerConfig()).compare(twin)
    assert not by_twin.diverged and len(by_twin.noise) == 29
    ignored = Differ(ComparerConfig(ignore_paths=("$.events[*].data.ts",))).compare(pair)
    assert not ignored.diverged and not ignored.noise


def test_a_real_change_inside_an_event_diverges_beside_the_noise() -> None:
    base = sse(30, 1.0)
    changed = dataclasses.replace(sse(30, 2.0), body=events(30, 2.0).replace(b'"n": 7,', b'"n": 70,'))
    verdict = Differ(ComparerConfig(noise_paths=("$.events[*].data.ts",))).compare(result(baseline=base, candidate=changed))
    assert kinds(verdict) == [("$.events[7].data.n", "value")]


def test_event_count_beyond_the_tolerance() -> None:
    pair = result(baseline=sse(30, 1.0), candidate=sse(10, 1.0))
    assert kinds(Differ(ComparerConfig()).compare(pair)) == [("$.events", "event_count")]
    tolerant = ComparerConfig(streams=ComparerStreamsConfig(event_count_tolerance_absolute=25))
    assert not Differ(tolerant).compare(pair).diverged
    ended = result(baseline=sse(30, 1.0), candidate=sse(29, 1.0, cut=False))  # the candidate's stream ended by itself
    assert kinds(Differ(ComparerConfig()).compare(ended)) == [("$.events", "event_count")]


def test_event_streams_by_line_when_events_are_off_or_one_side_is_no_stream() -> None:
    pair = result(baseline=sse(3, 1.0, cut=False), candidate=sse(3, 2.0, cut=False))
    off = Differ(ComparerConfig(streams=ComparerStreamsConfig(sse_events=False))).compare(pair)
    assert [d.path for d in off.diffs] == ["line:3", "line:7", "line:11"]
    plain = dataclasses.replace(sse(3, 1.0, cut=False), headers=TEXT)
    mixed = Differ(ComparerConfig()).compare(result(baseline=plain, candidate=sse(3, 1.0, cut=False)))
    assert not mixed.diverged  # same bytes; the content-type header is compared by compare_headers


def test_against_the_logged_origin_there_is_no_cadence() -> None:
    from shadowreplay.contract.record import Origin

    res = dataclasses.replace(result(candidate=lines(HELD)), origin=Origin(status=200))
    assert not Differ(ComparerConfig()).compare(res).diverged


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("min_spread_seconds = -1", "comparer.streams.min_spread_seconds"),
        ("burst_share_threshold = 0", "comparer.streams.burst_share_threshold"),
        ("burst_share_threshold = 1.5", "comparer.streams.burst_share_threshold"),
        ("burst_window_relative = 0", "comparer.streams.burst_window_relative"),
        ("buffering_min_delay_seconds = -0.1", "comparer.streams.buffering_min_delay_seconds"),
        ("first_byte_delay_seconds = -1", "comparer.streams.first_byte_delay_seconds"),
        ("first_byte_delay_ratio = 0.5", "comparer.streams.first_byte_delay_ratio"),
        ("event_count_tolerance_absolute = -1", "comparer.streams.event_count_tolerance_absolute"),
        ("event_count_tolerance_absolute = 1.5", "comparer.streams.event_count_tolerance_absolute"),
        ("event_count_tolerance_relative = 2", "comparer.streams.event_count_tolerance_relative"),
        ("cadence = 'yes'", "comparer.streams.cadence"),
        ("burst_share = 0.5", "comparer.streams.burst_share"),
    ],
)
def test_config_check_names_the_bad_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f"[comparer.streams]\n{text}\n")
    with pytest.raises(ConfigError, match=re.escape(key)):
        configmod.load(f)


def test_config_sets_every_threshold(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        "[comparer.streams]\ncadence = false\nmin_spread_seconds = 1.0\nburst_window_relative = 0.2\n"
        "burst_share_threshold = 0.6\nbuffering_min_delay_seconds = 0.5\nfirst_byte_delay_seconds = 1.0\n"
        "first_byte_delay_ratio = 3.0\nsse_events = false\nevent_count_tolerance_absolute = 5\n"
        "event_count_tolerance_relative = 0.1\n"
    )
    rules = stream_rules(configmod.load(f).comparer.streams)
    assert rules.cadence == CadenceRules(False, 1.0, 0.2, 0.6, 0.5, 1.0, 3.0)
    assert (rules.events, rules.count_tolerance) == (False, CountTolerance(5, 0.1))


def test_stream_diffs_are_described_with_their_delays_in_ms() -> None:
    verdict = Differ(ComparerConfig()).compare(result(baseline=lines(PROGRESSIVE, stream=True), candidate=lines(HELD)))
    assert describe(verdict.diffs[0]) == (
        "buffering: first byte 2.0 → 2015.0 ms, average byte 952.0 → 2015.0 ms, last byte 1902.0 → 2015.0 ms, "
        "largest burst 10 % → 100 % of the body"
    )
    nothing = judge(PROGRESSIVE, (), CadenceRules(), other_window_reached=True)[0]
    assert describe(nothing) == "buffering: first byte 2.0 ms → nothing within the stream window"
    late = judge(PROGRESSIVE, tuple((t + 0.8, n) for t, n in PROGRESSIVE), CadenceRules())[0]
    assert describe(late) == "first_byte_delay: first body byte 2.0 → 802.0 ms"
    count = Differ(ComparerConfig()).compare(result(baseline=sse(30, 1.0), candidate=sse(10, 1.0))).diffs[0]
    assert describe(count) == "event_count: 30 → 10 events"
    assert describe(FieldDiff("$.a", "value", 1, 2)) is None
