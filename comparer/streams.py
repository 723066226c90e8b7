"""Streams in the differ: the one entry point :func:`diff_streams` that ``comparer.diff``
calls for every pair of responses, and the rules it reads from ``[comparer.streams]``.

Pure, no I/O. The work is done in :mod:`comparer.cadence` (how the body arrived) and
:mod:`comparer.sse` (what a ``text/event-stream`` body said, event by event).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from comparer.cadence import CadenceRules, judge
from comparer.jsondiff import FieldDiff, JsonOptions
from comparer.sse import CountTolerance, diff_events, is_event_stream
from shadowreplay.config import ComparerStreamsConfig
from shadowreplay.record import Response

#: The diff kinds only streams produce (a bounded metric label set).
STREAM_KINDS: tuple[str, ...] = ("buffering", "first_byte_delay", "event_count")


@dataclass(frozen=True, slots=True)
class StreamRules:
    """The stream rules in force (``[comparer.streams]``)."""

    cadence: CadenceRules = field(default_factory=CadenceRules)
    events: bool = True
    count_tolerance: CountTolerance = field(default_factory=CountTolerance)


def stream_rules(c: ComparerStreamsConfig) -> StreamRules:
    """The rules of a ``[comparer.streams]`` config section."""
    return StreamRules(
        cadence=CadenceRules(
            enabled=c.cadence,
            min_spread_seconds=c.min_spread_seconds,
            burst_window_relative=c.burst_window_relative,
            burst_share_threshold=c.burst_share_threshold,
            buffering_min_delay_seconds=c.buffering_min_delay_seconds,
            first_byte_delay_seconds=c.first_byte_delay_seconds,
            first_byte_delay_ratio=c.first_byte_delay_ratio,
        ),
        events=c.sse_events,
        count_tolerance=CountTolerance(c.event_count_tolerance_absolute, c.event_count_tolerance_relative),
    )


@dataclass(frozen=True, slots=True)
class StreamDiffs:
    """``diffs``: cadence findings and event differences. ``body_compared``: the bodies were
    compared here (both are event streams), so the differ must not compare them again."""

    diffs: list[FieldDiff]
    body_compared: bool


def both_event_streams(reference: Response, other: Response) -> bool:
    """Both sides answered ``text/event-stream``."""
    return is_event_stream(reference.header("content-type")) and is_event_stream(other.header("content-type"))


def diff_streams(
    reference: Response, other: Response, rules: StreamRules, options: JsonOptions, max_diffs: int
) -> StreamDiffs:
    """Cadence of ``other`` against ``reference``, and their event-stream bodies event by
    event when both are ``text/event-stream`` (and ``rules.events``). Both responses
    have a status (the differ handles errors before)."""
    diffs = judge(
        reference.timeline,
        other.timeline,
        rules.cadence,
        reference_stream=reference.stream,
        other_window_reached=other.stream_window_reached,
    )
    if not (rules.events and both_event_streams(reference, other)):
        return StreamDiffs(diffs, False)
    diffs += diff_events(
        reference.body,
        other.body,
        left_cut=reference.stream_window_reached or reference.truncated,
        right_cut=other.stream_window_reached or other.truncated,
        tolerance=rules.count_tolerance,
        max_diffs=max(0, max_diffs - len(diffs)),
        options=options,
    )
    return StreamDiffs(diffs, True)
