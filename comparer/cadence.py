"""Arrival cadence: did the candidate deliver its body the way the reference did? Pure, no I/O.

A response's ``timeline`` (see docs/streaming.md) is a list of ``(seconds since the
request was sent, body bytes received so far)`` points. Its *shape* is read from the
share of its own bytes that had arrived at each time, so two sides that encode the body
differently (identity against gzip) or split it into other chunks still compare.

Two findings, judged only where the reference streamed (its bytes arrived over at least
``min_spread_seconds``, or the replayer read it as a stream):

* ``buffering``: the candidate delivered in one burst what the reference delivered
  progressively. Its largest burst (the share of its bytes that arrived within one
  burst window, a tenth of the reference's spread by default) holds at least
  ``burst_share_threshold`` more of its body than the reference's largest burst does
  (relative to each side's size), *and* its bytes arrived on average at least
  ``buffering_min_delay_seconds`` later than the reference's did (absolute; the mean
  arrival time of a byte, each side weighted by its own bytes). A candidate that held
  the whole window and delivered nothing is buffering too.
* ``first_byte_delay``: the first body byte arrived at least ``first_byte_delay_seconds``
  later than the reference's (absolute) *and* at least ``first_byte_delay_ratio`` times
  as late (relative). Not reported beside ``buffering``, which already carries both
  first-byte times.

Jitter of a few milliseconds, or the same bytes in other chunks, moves none of these
figures by more than the burst window, so neither counts. The figures are reported in
milliseconds (``first_byte_ms``, ``mean_byte_ms``, ``last_byte_ms``, ``spread_ms``) and shares
(``largest_burst``) so that ``diffs`` and the page can show them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shadowreplay.comparer.jsondiff import FieldDiff

Timeline = Sequence[tuple[float, int]]

#: The diff paths of the two findings: ``ignore_paths = ["cadence:*"]`` turns them off.
BUFFERING_PATH = "cadence:buffering"
FIRST_BYTE_PATH = "cadence:first_byte"


@dataclass(frozen=True, slots=True)
class CadenceRules:
    """The thresholds of the cadence verdict (``[comparer.streams]``)."""

    enabled: bool = True
    min_spread_seconds: float = 0.5
    burst_window_relative: float = 0.1
    burst_share_threshold: float = 0.5
    buffering_min_delay_seconds: float = 0.25
    first_byte_delay_seconds: float = 0.5
    first_byte_delay_ratio: float = 2.0


@dataclass(frozen=True, slots=True)
class Shape:
    """How one body arrived: times in seconds since the send, ``total`` in wire bytes."""

    first: float  # first body byte
    last: float  # last body byte
    total: int
    q10: float  # when 10 % of the bytes had arrived
    q90: float
    mean: float  # when the average byte arrived

    @property
    def spread(self) -> float:
        """Seconds between the arrival of 10 % and of 90 % of the bytes."""
        return self.q90 - self.q10


def shape(timeline: Timeline) -> Shape | None:
    """The shape of a timeline; None when no body byte arrived."""
    if not timeline or timeline[-1][1] <= 0:
        return None
    total = timeline[-1][1]
    return Shape(
        first=timeline[0][0],
        last=timeline[-1][0],
        total=total,
        q10=arrival_time(timeline, 0.1),
        q90=arrival_time(timeline, 0.9),
        mean=mean_arrival(timeline),
    )


def arrival_time(timeline: Timeline, share: float) -> float:
    """When at least ``share`` of the body's bytes had arrived (the time of the first point
    whose count reaches it: bytes between two points are taken to arrive at the later one)."""
    need = share * timeline[-1][1]
    for t, n in timeline:
        if n >= need:
            return t
    return timeline[-1][0]


def mean_arrival(timeline: Timeline) -> float:
    """When the average body byte arrived: each point's time weighted by the bytes it
    brought (the area under the arrival-time curve over the shares of the body)."""
    total = timeline[-1][1]
    before = 0
    weighted = 0.0
    for t, n in timeline:
        weighted += t * (n - before)
        before = n
    return weighted / total


def largest_burst(timeline: Timeline, window: float) -> float:
    """The largest share of the body's bytes that arrived within ``window`` seconds.

    The bytes of a point arrived after the point before it, so a burst ending at point j
    holds ``n_j - n_i`` where i is the last point at or before ``t_j - window`` (nothing
    before the first point). One point alone is a burst of the whole body."""
    if not timeline or timeline[-1][1] <= 0:
        return 0.0
    best = 0
    i = -1  # index of the last point at or before t_j - window
    for j, (tj, nj) in enumerate(timeline):
        while i + 1 < j and timeline[i + 1][0] <= tj - window:
            i += 1
        before = timeline[i][1] if i >= 0 else 0
        best = max(best, nj - before)
    return best / timeline[-1][1]


def streamed(reference: Shape | None, rules: CadenceRules) -> bool:
    """The reference delivered its body progressively (spread over ``min_spread_seconds``)."""
    return reference is not None and reference.spread >= rules.min_spread_seconds


def judge(
    reference: Timeline,
    other: Timeline,
    rules: CadenceRules,
    *,
    reference_stream: bool = False,
    other_window_reached: bool = False,
) -> list[FieldDiff]:
    """The cadence findings for ``other`` against ``reference`` (at most one diff).

    ``reference_stream``: the replayer read the reference as a stream (then a late first
    byte is judged even when its bytes came in one piece, as a long poll's do).
    ``other_window_reached``: the other side's stream window closed it (then no body at
    all means it was held for the whole window)."""
    if not rules.enabled:
        return []
    if len(reference) < 2 and not reference_stream and rules.min_spread_seconds > 0:
        return []  # the common case, a body that came at once: no spread, so no stream
    ref = shape(reference)
    if ref is None:
        return []
    progressive = streamed(ref, rules)
    if not progressive and not reference_stream:
        return []
    got = shape(other)
    if got is None:
        if progressive and other_window_reached:
            return [FieldDiff(BUFFERING_PATH, "buffering", summary(reference, ref, _window(ref, rules)), _nothing())]
        return []
    if progressive:
        window = _window(ref, rules)
        ref_burst, got_burst = largest_burst(reference, window), largest_burst(other, window)
        if (
            got_burst - ref_burst >= rules.burst_share_threshold
            and got.mean - ref.mean >= rules.buffering_min_delay_seconds
        ):
            return [
                FieldDiff(
                    BUFFERING_PATH,
                    "buffering",
                    summary(reference, ref, window),
                    summary(other, got, window),
                )
            ]
    delay = got.first - ref.first
    if delay >= rules.first_byte_delay_seconds and got.first >= rules.first_byte_delay_ratio * ref.first:
        return [FieldDiff(FIRST_BYTE_PATH, "first_byte_delay", _ms(ref.first), _ms(got.first))]
    return []


def _window(ref: Shape, rules: CadenceRules) -> float:
    return rules.burst_window_relative * ref.spread


def summary(timeline: Timeline, s: Shape, window: float) -> dict[str, Any]:
    """What a buffering diff shows of one side: times in ms, the largest burst as a share."""
    return {
        "first_byte_ms": _ms(s.first),
        "mean_byte_ms": _ms(s.mean),
        "last_byte_ms": _ms(s.last),
        "spread_ms": _ms(s.spread),
        "largest_burst": round(largest_burst(timeline, window), 3),
        "bytes": s.total,
    }


def _nothing() -> dict[str, Any]:
    return {"first_byte_ms": None, "mean_byte_ms": None, "last_byte_ms": None, "spread_ms": None,
            "largest_burst": None, "bytes": 0}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)
