"""Server-sent events (``text/event-stream``) compared event by event. Pure, no I/O.

A body is parsed as a browser's EventSource reads it (the WHATWG HTML "event stream
interpretation"): lines end in CRLF, LF or CR; a line starting with ``:`` is a comment;
``field: value`` (one leading space dropped); ``data`` lines are joined with a newline;
an empty line dispatches the event, if any ``data`` line came; ``event`` empty or absent
is ``message``; the event's ``id`` is the last ``id`` seen so far in the stream (an id
persists until the next one, and an ``id`` holding NUL is ignored). An unfinished event
at the end of the body (no empty line after it) is not an event: a browser never sees
it, and a stream cut by its window usually ends that way.

Events are addressed ``$.events[3]``, their fields ``$.events[3].event``,
``$.events[3].id`` and ``$.events[3].data``. When ``data`` parses as JSON on both sides
it is compared with the JSON differ (so ``$.events[3].data.ts`` is a field that
ignore and noise rules name like any body field); else as a string.

Events are compared over the common prefix. A difference in the number of events is
``event_count`` at ``$.events``: always when the side with fewer events ended on its
own, but only beyond the tolerance when that side was cut (by its stream window, or by
``max_body_bytes``), since two streams cut by the same window hold a few more or fewer
events by chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shadowreplay.comparer.jsondiff import DEFAULT_OPTIONS, FieldDiff, JsonOptions, _clip, diff_json

EVENTS_PATH = "$.events"


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event as a browser sees it."""

    event: str
    data: str
    id: str


@dataclass(frozen=True, slots=True)
class CountTolerance:
    """How many events two cut streams may differ by: more than both bounds is a diff."""

    absolute: int = 2
    relative: float = 0.05

    def allows(self, a: int, b: int) -> bool:
        delta = abs(a - b)
        return delta <= self.absolute or delta <= self.relative * max(a, b)


def is_event_stream(content_type: str | None) -> bool:
    """``text/event-stream``, parameters ignored."""
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "text/event-stream"  # type: ignore[union-attr]


def _lines(text: str) -> list[str]:
    """The terminated lines of ``text`` (CRLF, LF or CR); an unterminated last line is dropped:
    no browser acted on it."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines.pop()  # what follows the last terminator ("" when the text ends with one)
    return lines


def parse_events(body: bytes) -> list[Event]:
    """The events a browser would dispatch from ``body``, in order (see the module docstring)."""
    text = body.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    events: list[Event] = []
    data: list[str] = []
    has_data = False
    kind = ""
    last_id = ""
    for line in _lines(text):
        if not line:
            if has_data:
                events.append(Event(kind or "message", "\n".join(data), last_id))
            data, has_data, kind = [], False, ""
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
            has_data = True
        elif name == "event":
            kind = value
        elif name == "id" and "\0" not in value:
            last_id = value
        # "retry" and unknown fields change no event.
    return events


_NOT_JSON = object()


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def diff_events(
    left: bytes,
    right: bytes,
    *,
    left_cut: bool,
    right_cut: bool,
    tolerance: CountTolerance = CountTolerance(),
    max_diffs: int = 100,
    options: JsonOptions = DEFAULT_OPTIONS,
) -> list[FieldDiff]:
    """Differences between two event-stream bodies, event by event (``left`` the reference).

    ``left_cut`` / ``right_cut``: that side was cut before it ended (stream window or
    body cap), so its missing tail is not evidence of anything."""
    if left == right or max_diffs <= 0:
        return []
    levents, revents = parse_events(left), parse_events(right)
    out: list[FieldDiff] = []
    nl, nr = len(levents), len(revents)
    if nl != nr and EVENTS_PATH not in options.ignore:
        short_cut = left_cut if nl < nr else right_cut
        if not short_cut or not tolerance.allows(nl, nr):
            out.append(FieldDiff(EVENTS_PATH, "event_count", nl, nr))
    for i, (le, re_) in enumerate(zip(levents, revents, strict=False)):
        if len(out) >= max_diffs:
            break
        if le == re_:
            continue
        base = f"{EVENTS_PATH}[{i}]"
        if base in options.ignore:
            continue
        for name in ("event", "id"):
            lv, rv = getattr(le, name), getattr(re_, name)
            path = f"{base}.{name}"
            if lv != rv and path not in options.ignore:
                out.append(FieldDiff(path, "value", _clip(lv), _clip(rv)))
        if le.data != re_.data:
            out.extend(_diff_data(le.data, re_.data, f"{base}.data", max_diffs - len(out), options))
    return out[:max_diffs]


def _diff_data(left: str, right: str, path: str, budget: int, options: JsonOptions) -> list[FieldDiff]:
    lv, rv = _json(left), _json(right)
    if lv is not _NOT_JSON and rv is not _NOT_JSON:
        return diff_json(lv, rv, path, max_diffs=budget, options=options)
    if budget <= 0 or path in options.ignore:
        return []
    return [FieldDiff(path, "value", _clip(left), _clip(right))]
