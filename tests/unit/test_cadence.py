"""The cadence verdict (comparer/cadence.py): buffering and a late first byte are found;
jitter, another chunk split, another encoding or a faster candidate are not."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.comparer.cadence import (
    BUFFERING_PATH,
    FIRST_BYTE_PATH,
    CadenceRules,
    arrival_time,
    judge,
    largest_burst,
    mean_arrival,
    shape,
)

RULES = CadenceRules()


def uniform(n: int = 20, interval: float = 0.1, size: int = 27, start: float = 0.002) -> list[tuple[float, int]]:
    """n chunks of ``size`` bytes, one every ``interval`` seconds (the test backend's lines)."""
    return [(round(start + i * interval, 6), size * (i + 1)) for i in range(n)]


def kinds(diffs: list) -> list[str]:  # type: ignore[type-arg]
    return [d.kind for d in diffs]


# -- the figures -----------------------------------------------------------------------


def test_shape_of_a_uniform_stream() -> None:
    s = shape(uniform())
    assert s is not None
    assert (s.first, s.last, s.total) == (0.002, 1.902, 540)
    # 10 % of 540 bytes = 54: the second chunk; 90 % = 486: the 18th.
    assert (s.q10, s.q90) == (0.102, 1.702)
    assert abs(s.spread - 1.6) < 1e-9
    assert abs(s.mean - 0.952) < 1e-9  # the average of the 20 equal chunks' times


def test_mean_arrival_weighs_each_point_by_the_bytes_it_brought() -> None:
    assert mean_arrival([(1.0, 100)]) == 1.0
    assert mean_arrival([(1.0, 10), (2.0, 100)]) == (1.0 * 10 + 2.0 * 90) / 100


def test_no_body_has_no_shape() -> None:
    assert shape([]) is None
    assert shape([(0.1, 0)]) is None


def test_arrival_time_takes_the_first_point_that_reaches_the_share() -> None:
    timeline = [(0.1, 10), (0.2, 50), (0.3, 100)]
    assert arrival_time(timeline, 0.1) == 0.1
    assert arrival_time(timeline, 0.11) == 0.2
    assert arrival_time(timeline, 0.5) == 0.2
    assert arrival_time(timeline, 1.0) == 0.3


def test_largest_burst() -> None:
    assert largest_burst([(2.0, 91)], 0.16) == 1.0
    assert largest_burst([], 0.16) == 0.0
    # Two chunks of the twenty fall within 160 ms of each other at most.
    assert largest_burst(uniform(), 0.16) == 2 / 20
    # A gzip header first, everything else at the end: the burst is the rest.
    assert largest_burst([(0.001, 10), (2.0, 100)], 0.16) == 0.9
    # A burst window wider than the stream holds all of it.
    assert largest_burst(uniform(), 5.0) == 1.0


# -- buffering -------------------------------------------------------------------------


def test_a_stream_held_until_its_end_is_buffering() -> None:
    reference = uniform()
    held = [(2.015, 91)]  # nginx with gzip on: head and body at the end, 91 gzip bytes
    diffs = judge(reference, held, RULES)
    assert kinds(diffs) == ["buffering"] and diffs[0].path == BUFFERING_PATH
    left, right = diffs[0].left, diffs[0].right
    assert (left["first_byte_ms"], left["mean_byte_ms"], left["last_byte_ms"], left["spread_ms"], left["bytes"]) == (
        2.0, 952.0, 1902.0, 1600.0, 540
    )
    assert (right["first_byte_ms"], right["mean_byte_ms"], right["largest_burst"], right["bytes"]) == (
        2015.0, 2015.0, 1.0, 91
    )
    assert left["largest_burst"] == 0.1


def test_the_first_part_passed_then_the_rest_held_is_buffering() -> None:
    reference = uniform()
    partial = [(0.002, 27), (0.102, 54), (0.202, 81), (2.0, 540)]
    assert kinds(judge(reference, partial, RULES)) == ["buffering"]


def test_a_window_held_with_nothing_delivered_is_buffering() -> None:
    diffs = judge(uniform(30), [], RULES, other_window_reached=True)
    assert kinds(diffs) == ["buffering"]
    assert diffs[0].right["bytes"] == 0 and diffs[0].right["first_byte_ms"] is None


def test_an_empty_body_that_ended_on_its_own_is_not_buffering() -> None:
    assert judge(uniform(), [], RULES) == []  # the body differs: that is the body diff's to say


def test_a_faster_candidate_in_one_burst_is_not_buffering() -> None:
    assert judge(uniform(), [(0.01, 540)], RULES) == []


def test_a_quick_reference_is_not_judged() -> None:
    quick = [(0.003, 4000), (0.004, 9000)]
    assert judge(quick, [(0.9, 9000)], RULES) == []


def test_cadence_off() -> None:
    assert judge(uniform(), [(2.015, 91)], CadenceRules(enabled=False)) == []


def test_both_thresholds_hold_for_buffering() -> None:
    reference = uniform()
    held = [(2.015, 540)]
    # Relative share: a candidate burst must hold at least this much more than the reference's.
    # (the first byte is still late: that alone is reported instead)
    assert kinds(judge(reference, held, CadenceRules(burst_share_threshold=0.95))) == ["first_byte_delay"]
    # Absolute delay: the average byte must come at least this much later (here 1.063 s).
    assert kinds(judge(reference, held, CadenceRules(buffering_min_delay_seconds=1.1))) == ["first_byte_delay"]
    assert kinds(judge(reference, held, CadenceRules(buffering_min_delay_seconds=1.0))) == ["buffering"]


# -- first byte ------------------------------------------------------------------------


def test_a_late_first_byte_then_progressive_is_first_byte_delay() -> None:
    reference = uniform(30)
    late = uniform(25, start=0.8)  # the first 4 KiB buffer filled, then it flowed
    diffs = judge(reference, late, RULES)
    assert kinds(diffs) == ["first_byte_delay"] and diffs[0].path == FIRST_BYTE_PATH
    assert (diffs[0].left, diffs[0].right) == (2.0, 800.0)


def test_first_byte_delay_needs_both_the_absolute_and_the_relative_threshold() -> None:
    long_poll = [(2.0, 100)]  # a stream whose one event came after 2 s
    assert judge(long_poll, [(2.4, 100)], RULES, reference_stream=True) == []  # 0.4 s later: under 0.5 s
    assert judge(long_poll, [(3.5, 100)], RULES, reference_stream=True) == []  # 1.75x: under 2x
    assert kinds(judge(long_poll, [(4.5, 100)], RULES, reference_stream=True)) == ["first_byte_delay"]
    # The same late answer to a request that was no stream is latency, not cadence.
    assert judge(long_poll, [(4.5, 100)], RULES) == []


# -- robustness (properties) -----------------------------------------------------------


@st.composite
def progressive(draw: st.DrawFn) -> list[tuple[float, int]]:
    """A stream of 8-60 chunks of 1-2,000 bytes spread over 0.6-10 s (gaps of any size)."""
    n = draw(st.integers(8, 60))
    gaps = draw(st.lists(st.floats(0.2, 5.0), min_size=n, max_size=n))
    sizes = draw(st.lists(st.integers(1, 2000), min_size=n, max_size=n))
    span = draw(st.floats(0.6, 10.0))
    start = draw(st.floats(0.0005, 0.05))
    scale = span / sum(gaps[1:]) if n > 1 else 1.0
    t, total, out = start, 0, []
    for i in range(n):
        if i:
            t += gaps[i] * scale
        total += sizes[i]
        out.append((round(t, 6), total))
    return out


def _streams(timeline: list[tuple[float, int]]) -> bool:
    s = shape(timeline)
    return s is not None and s.spread >= RULES.min_spread_seconds


@settings(max_examples=300, deadline=None)
@given(progressive(), st.data())
def test_jitter_of_a_few_ms_is_never_a_finding(reference: list[tuple[float, int]], data: st.DataObject) -> None:
    jitter = data.draw(st.lists(st.floats(-0.005, 0.005), min_size=len(reference), max_size=len(reference)))
    other: list[tuple[float, int]] = []
    last = 0.0
    for (t, n), j in zip(reference, jitter, strict=True):
        last = max(last, t + j, 0.0)
        other.append((last, n))
    assert judge(reference, other, RULES, reference_stream=True) == []


@settings(max_examples=300, deadline=None)
@given(progressive(), st.integers(1, 1000))
def test_another_encoding_is_never_a_finding(reference: list[tuple[float, int]], divisor: int) -> None:
    """The same cadence in fewer wire bytes (gzip): shares, not bytes, are compared."""
    other = [(t, max(1, n // divisor)) for t, n in reference]
    assert judge(reference, other, RULES, reference_stream=True) == []


@settings(max_examples=300, deadline=None)
@given(st.integers(12, 60), st.floats(0.05, 0.5), st.data())
def test_another_chunk_split_is_never_buffering(n: int, interval: float, data: st.DataObject) -> None:
    """The same bytes at the same pace, regrouped into chunks of up to a third of the body."""
    reference = uniform(n, interval)
    group = data.draw(st.integers(1, n // 3))
    other = [reference[min(i + group - 1, n - 1)] for i in range(0, n, group)]
    assert "buffering" not in kinds(judge(reference, other, RULES, reference_stream=True))


@settings(max_examples=300, deadline=None)
@given(st.integers(8, 60), st.floats(0.8, 10.0), st.data(), st.floats(0.0, 3.0), st.integers(1, 10**6))
def test_a_steady_stream_held_to_its_end_is_always_buffering(
    n: int, span: float, data: st.DataObject, later: float, size: int
) -> None:
    """Chunks at a steady pace over 0.8-10 s (each of 1-4 times the smallest), all held
    until the last one."""
    interval = span / (n - 1)
    sizes = data.draw(st.lists(st.integers(100, 400), min_size=n, max_size=n))
    reference = [(round(0.002 + i * interval, 6), sum(sizes[: i + 1])) for i in range(n)]
    held = [(reference[-1][0] + later, size)]
    assert kinds(judge(reference, held, RULES)) == ["buffering"]


@settings(max_examples=300, deadline=None)
@given(progressive(), st.floats(0.0, 3.0), st.integers(1, 10**6))
def test_held_to_the_end_is_buffering_when_the_reference_was_no_burst_itself(
    reference: list[tuple[float, int]], later: float, size: int
) -> None:
    """Any shape of reference: held until its end is buffering whenever the reference
    streamed, its own largest burst left room for the threshold, and its average byte
    came early enough; and never anything but buffering or a late first byte."""
    held = [(reference[-1][0] + later, size)]
    found = kinds(judge(reference, held, RULES))
    assert set(found) <= {"buffering", "first_byte_delay"}
    s = shape(reference)
    assert s is not None
    if not _streams(reference):
        return
    room = largest_burst(reference, RULES.burst_window_relative * s.spread) <= 1 - RULES.burst_share_threshold
    early = held[0][0] - s.mean >= RULES.buffering_min_delay_seconds
    assert (found == ["buffering"]) == (room and early)
