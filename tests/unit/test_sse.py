"""Server-sent events compared event by event (comparer/sse.py): parsed as a browser
reads them, data as JSON with ignore rules on field paths, and a stream cut by its window
never diverging on its missing tail."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.comparer.jsondiff import JsonOptions
from shadowreplay.comparer.paths import PathSet
from shadowreplay.comparer.sse import CountTolerance, Event, diff_events, is_event_stream, parse_events


def sse(*events: dict[str, object], eol: str = "\n") -> bytes:
    """An event-stream body: each event's fields in order, a blank line after each."""
    out = []
    for e in events:
        for name, value in e.items():
            lines = str(value).split("\n") if name == "data" else [str(value)]
            out.extend(f"{name}: {line}" for line in lines)
        out.append("")
    return (eol.join(out) + eol).encode()


def ticks(n: int, ts: float = 1.0, start: int = 0) -> bytes:
    return sse(*({"id": i, "event": "tick", "data": orjson.dumps({"n": i, "ts": ts + i}).decode()} for i in range(start, n)))


# -- parsing ---------------------------------------------------------------------------


def test_parse_as_a_browser_does() -> None:
    body = (
        b"\xef\xbb\xbf: a comment first\n"
        b"id: 1\nevent: tick\ndata: {\"n\": 1}\n\n"
        b"data: two\ndata: lines\n\n"  # id persists; no event name is "message"
        b"data:no space\r\n\r\n"  # CRLF; no space after the colon
        b"data: cr\r\r"  # CR alone ends lines too
        b"retry: 3000\nid\n\n"  # no data: not dispatched; a bare "id" resets the id
        b"data\n\n"  # a bare "data" is data ""
        b"id: a\x00b\ndata: nul id ignored\n\n"
        b"data: unfinished\n"  # no blank line after it: never dispatched
    )
    assert parse_events(body) == [
        Event("tick", '{"n": 1}', "1"),
        Event("message", "two\nlines", "1"),
        Event("message", "no space", "1"),
        Event("message", "cr", "1"),
        Event("message", "", ""),
        Event("message", "nul id ignored", ""),
    ]


def test_an_unfinished_last_line_is_not_a_field() -> None:
    assert parse_events(b"data: a\n\ndata: b") == [Event("message", "a", "")]
    assert parse_events(b"data: a\n\n\xe2\x82") == [Event("message", "a", "")]  # cut inside a UTF-8 character


def test_is_event_stream() -> None:
    assert is_event_stream("text/event-stream")
    assert is_event_stream("Text/Event-Stream; charset=utf-8")
    assert not is_event_stream("text/plain")
    assert not is_event_stream(None)


# -- comparing -------------------------------------------------------------------------


def test_a_timestamp_in_each_event_is_a_field_path() -> None:
    diffs = diff_events(ticks(3, ts=1.0), ticks(3, ts=2.0), left_cut=False, right_cut=False)
    assert [(d.path, d.kind) for d in diffs] == [(f"$.events[{i}].data.ts", "value") for i in range(3)]
    assert (diffs[0].left, diffs[0].right) == (1.0, 2.0)


def test_ignore_rules_name_event_fields() -> None:
    options = JsonOptions(ignore=PathSet(["$.events[*].data.ts"]))
    assert diff_events(ticks(5, ts=1.0), ticks(5, ts=2.0), left_cut=False, right_cut=False, options=options) == []
    assert diff_events(ticks(5), ticks(6), left_cut=False, right_cut=False, options=JsonOptions(ignore=PathSet(["$.events"]))) == []


def test_event_name_id_and_text_data() -> None:
    left = sse({"id": 1, "event": "tick", "data": "hello"}, {"data": "same"})
    right = sse({"id": 2, "event": "tock", "data": "world"}, {"data": "same"})
    diffs = diff_events(left, right, left_cut=False, right_cut=False)
    # The second event carries the last id seen: 1 against 2, a difference too.
    assert [(d.path, d.left, d.right) for d in diffs] == [
        ("$.events[0].event", "tick", "tock"),
        ("$.events[0].id", "1", "2"),
        ("$.events[0].data", "hello", "world"),
        ("$.events[1].id", "1", "2"),
    ]


def test_json_against_text_data_is_a_value_difference() -> None:
    diffs = diff_events(sse({"data": '{"a": 1}'}), sse({"data": "a=1"}), left_cut=False, right_cut=False)
    assert [(d.path, d.kind, d.left, d.right) for d in diffs] == [("$.events[0].data", "value", '{"a": 1}', "a=1")]


def test_the_same_events_in_other_bytes_are_equal() -> None:
    crlf = ticks(4).replace(b"\n", b"\r\n")
    commented = b": keep-alive\n" + ticks(2) + b": ping\n\n" + ticks(4, start=2)
    for other in (crlf, commented):
        assert diff_events(ticks(4), other, left_cut=False, right_cut=False) == []


def test_two_streams_cut_by_their_windows_compare_their_common_prefix() -> None:
    assert diff_events(ticks(29), ticks(30), left_cut=True, right_cut=True) == []
    assert diff_events(ticks(30), ticks(28), left_cut=True, right_cut=True) == []
    # Beyond the tolerance (2 events, or 5 % of the larger count), the count differs.
    diffs = diff_events(ticks(30), ticks(20), left_cut=True, right_cut=True)
    assert [(d.path, d.kind, d.left, d.right) for d in diffs] == [("$.events", "event_count", 30, 20)]
    assert diff_events(ticks(100), ticks(95), left_cut=True, right_cut=True) == []
    assert diff_events(ticks(100), ticks(94), left_cut=True, right_cut=True) != []
    assert diff_events(ticks(30), ticks(20), left_cut=True, right_cut=True, tolerance=CountTolerance(10, 0.0)) == []


def test_a_stream_that_ended_on_its_own_with_fewer_events_differs() -> None:
    # The candidate ended after 29 events while the baseline was still going at its window.
    diffs = diff_events(ticks(30), ticks(29), left_cut=True, right_cut=False)
    assert [(d.path, d.kind, d.left, d.right) for d in diffs] == [("$.events", "event_count", 30, 29)]
    # The baseline ended on its own, the candidate sent more until its window: it differs too.
    assert diff_events(ticks(29), ticks(30), left_cut=False, right_cut=True)[0].kind == "event_count"
    # The longer side ended on its own, the shorter was cut: the cut explains it.
    assert diff_events(ticks(30), ticks(29), left_cut=False, right_cut=True) == []


def test_at_most_max_diffs() -> None:
    diffs = diff_events(ticks(50, ts=1.0), ticks(50, ts=2.0), left_cut=False, right_cut=False, max_diffs=7)
    assert len(diffs) == 7


# -- properties ------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=20)
_events = st.lists(
    st.builds(
        lambda kind, data, ident: {k: v for k, v in (("event", kind), ("id", ident), ("data", data)) if v is not None},
        st.none() | _text.filter(lambda s: not s.startswith(" ")),
        st.lists(_text, min_size=1, max_size=3).map("\n".join),
        st.none() | _text.filter(lambda s: not s.startswith(" ")),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(_events, st.sampled_from(["\n", "\r\n", "\r"]), st.sampled_from(["\n", "\r\n", "\r"]))
def test_line_endings_change_no_event(events: list[dict[str, object]], a: str, b: str) -> None:
    left, right = sse(*events, eol=a), sse(*events, eol=b)
    assert len(parse_events(left)) == len(events)
    assert diff_events(left, right, left_cut=False, right_cut=False) == []


@settings(max_examples=300, deadline=None)
@given(_events, st.data())
def test_a_cut_anywhere_never_diverges_on_the_missing_tail(events: list[dict[str, object]], data: st.DataObject) -> None:
    """A stream cut at any byte (its window) against the whole one: no difference but,
    beyond the tolerance, the count."""
    body = sse(*events)
    cut = body[: data.draw(st.integers(0, len(body)))]
    diffs = diff_events(body, cut, left_cut=False, right_cut=True, tolerance=CountTolerance(10**6, 1.0))
    assert diffs == []
    diffs = diff_events(body, cut, left_cut=False, right_cut=True, tolerance=CountTolerance(0, 0.0))
    assert all(d.kind == "event_count" for d in diffs)
