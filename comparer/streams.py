"""Streams in the differ: the one entry point :func:`diff_streams` that ``comparer.diff``
calls for every pair of responses, and the rules it reads from ``[comparer.streams]``.

Pure, no I/O. The work is done in :mod:`shadowreplay.comparer.cadence` (how the body arrived) and
:mod:`shadowreplay.comparer.sse` (what a ``text/event-stream`` body said, event by event).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shadowreplay.comparer.cadence import CadenceRules, judge
from shadowreplay.comparer.jsondiff import FieldDiff, JsonOptions
from shadowreplay.comparer.sse import CountTolerance, diff_events, is_event_stream
from shadowreplay.contract.config import ComparerStreamsConfig
from shadowreplay.contract.record import Response

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


def describe(diff: FieldDiff) -> str | None:
    """One line for ``diffs``, the report and the page: a stream diff's kind with its
    delays in ms (reference → candidate); None for any other kind.

    ``buffering: first byte 2.0 → 2015.0 ms, average byte 952.0 → 2015.0 ms, last byte
    1902.0 → 2015.0 ms, largest burst 10 % → 100 % of the body``."""
    left, right = diff.left, diff.right
    if diff.kind == "first_byte_delay":
        return f"first_byte_delay: first body byte {_ms(left)} → {_ms(right)} ms"
    if diff.kind == "event_count":
        return f"event_count: {left} → {right} events"
    if diff.kind != "buffering" or not isinstance(left, dict) or not isinstance(right, dict):
        return None
    if not right.get("bytes"):
        return f"buffering: first byte {_ms(left.get('first_byte_ms'))} ms → nothing within the stream window"
    parts = [
        f"{name} {_ms(left.get(key))} → {_ms(right.get(key))} ms"
        for name, key in (("first byte", "first_byte_ms"), ("average byte", "mean_byte_ms"), ("last byte", "last_byte_ms"))
    ]
    burst = f"largest burst {_pct(left.get('largest_burst'))} → {_pct(right.get('largest_burst'))} of the body"
    return "buffering: " + ", ".join([*parts, burst])


def describe_stored(diff: Mapping[str, Any]) -> str | None:
    """:func:`describe` of a diff as the store keeps it and the API serves it
    (``{"path", "kind", "left", "right"}``)."""
    return describe(FieldDiff(diff["path"], diff["kind"], diff["left"], diff["right"]))


def _ms(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _pct(value: object) -> str:
    return f"{value * 100:.0f} %" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"
