from __future__ import annotations

import hashlib
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from comparer.diff import (
    MAX_DIFFS,
    FieldDiff,
    Verdict,
    compare,
    diff_bodies,
    diff_json,
    error_kind,
    is_json_content_type,
)
from comparer.loop import EndpointSummary, format_table
from comparer.metrics import EndpointLimiter
from shadowreplay.record import Origin, ReplayResult, RequestRecord, Response

JSON = (("content-type", "application/json"),)
IGNORE = frozenset({"date", "server"})


def jresp(value: Any, *, status: int = 200, **kw: Any) -> Response:
    return Response(status=status, headers=JSON, body=orjson.dumps(value), **kw)


def result(
    candidate: Response | None,
    baseline: Response | None = None,
    *,
    origin: Origin | None = None,
    endpoint: str = "GET /x",
) -> ReplayResult:
    responses = {}
    if candidate is not None:
        responses["candidate"] = candidate
    if baseline is not None:
        responses["baseline"] = baseline
    req = RequestRecord(id="r1", ts=1, method="GET", target="/users/42?a=1")
    return ReplayResult(
        id="r1",
        request=req,
        endpoint=endpoint,
        scheduled=1,
        sent=2,
        responses=responses,
        origin=origin,
    )


def kinds(diffs: list[FieldDiff] | tuple[FieldDiff, ...]) -> list[tuple[str, str]]:
    return [(d.path, d.kind) for d in diffs]


# -- diff_json -------------------------------------------------------------------------


def test_equal_values_have_no_diffs() -> None:
    doc = {"a": 1, "b": [1, 2, {"c": None}], "d": "x", "e": True, "f": 1.5}
    assert diff_json(doc, orjson.loads(orjson.dumps(doc))) == []


def test_value_diff_at_nested_path() -> None:
    left = {"items": [{"price": 1}, {"price": 2}, {"price": 3}, {"price": 4}]}
    right = {"items": [{"price": 1}, {"price": 2}, {"price": 3}, {"price": 5}]}
    assert diff_json(left, right) == [FieldDiff("$.items[3].price", "value", 4, 5)]


def test_int_and_float_with_equal_value_are_equal() -> None:
    assert diff_json({"a": 1}, {"a": 1.0}) == []
    assert diff_json([0], [0.0]) == []
    assert diff_json(2, 2.5) == [FieldDiff("$", "value", 2, 2.5)]


def test_bool_is_not_a_number() -> None:
    assert diff_json({"a": True}, {"a": 1}) == [FieldDiff("$.a", "type", True, 1)]
    assert diff_json([0], [False]) == [FieldDiff("$[0]", "type", 0, False)]
    assert diff_json(True, False) == [FieldDiff("$", "value", True, False)]


def test_type_diffs() -> None:
    assert kinds(diff_json({"a": "1"}, {"a": 1})) == [("$.a", "type")]
    assert kinds(diff_json({"a": None}, {"a": {}})) == [("$.a", "type")]
    assert kinds(diff_json({"a": []}, {"a": {}})) == [("$.a", "type")]
    assert diff_json([1], {"0": 1}) == [FieldDiff("$", "type", [1], {"0": 1})]


def test_missing_and_extra_keys() -> None:
    diffs = diff_json({"a": 1, "b": {"x": 1}}, {"a": 1, "c": [2]})
    assert diffs == [
        FieldDiff("$.b", "missing", {"x": 1}, None),
        FieldDiff("$.c", "extra", None, [2]),
    ]


def test_extra_key_found_when_sizes_are_equal() -> None:
    # Same number of keys, one renamed: both a missing and an extra diff.
    assert kinds(diff_json({"a": 1, "b": 2}, {"a": 1, "c": 2})) == [
        ("$.b", "missing"),
        ("$.c", "extra"),
    ]


def test_special_keys_are_bracketed_and_escaped() -> None:
    diffs = diff_json(
        {"a b": 1, "it's": 1, "9x": 1, "ok_1": {"x-y": 1}, "back\\slash": 1},
        {"a b": 2, "it's": 2, "9x": 2, "ok_1": {"x-y": 2}, "back\\slash": 2},
    )
    assert [d.path for d in diffs] == [
        "$['a b']",
        "$['it\\'s']",
        "$['9x']",
        "$.ok_1['x-y']",
        "$['back\\\\slash']",
    ]


def test_arrays_of_different_lengths_compare_common_prefix() -> None:
    diffs = diff_json({"a": [1, 2, 3]}, {"a": [1, 9]})
    assert diffs == [FieldDiff("$.a", "array_length", 3, 2), FieldDiff("$.a[1]", "value", 2, 9)]
    assert diff_json([], [1, 2]) == [FieldDiff("$", "array_length", 0, 2)]


def test_diffs_are_capped() -> None:
    left = {f"k{i}": i for i in range(500)}
    right = {f"k{i}": i + 1 for i in range(500)}
    diffs = diff_json(left, right)
    assert len(diffs) == MAX_DIFFS
    assert len(diff_json(list(range(50)), list(range(1, 60)), max_diffs=5)) == 5
    assert len(diff_json(left, right, max_diffs=0)) == 0


def test_long_values_are_clipped() -> None:
    (d,) = diff_json({"a": "x" * 1000}, {"a": "y" * 1000})
    assert len(d.left) < 210 and d.left.startswith("xxx") and d.left.endswith("…")
    (d,) = diff_json({"a": list(range(1000))}, {})
    assert isinstance(d.left, str) and d.left.startswith("[0,1,2") and len(d.left) < 210
    (d,) = diff_json({"a": [1, 2]}, {})
    assert d.left == [1, 2]


# -- diff_bodies -----------------------------------------------------------------------


def test_json_content_types() -> None:
    assert is_json_content_type("application/json; charset=utf-8")
    assert is_json_content_type("application/problem+json")
    assert is_json_content_type("Application/JSON")
    assert not is_json_content_type("text/html")
    assert not is_json_content_type(None)


def test_json_bodies_compare_structurally_whatever_the_formatting() -> None:
    left = Response(status=200, headers=JSON, body=b'{"a": 1, "b": [1, 2]}')
    right = Response(status=200, headers=JSON, body=b'{"b":[1,2],"a":1.0}')
    assert diff_bodies(left, right) == []
    right = Response(status=200, headers=JSON, body=b'{"b":[1,3],"a":1}')
    assert kinds(diff_bodies(left, right)) == [("$.b[1]", "value")]


def test_unparseable_json_falls_back_to_digest() -> None:
    left = Response(status=200, headers=JSON, body=b'{"a": 1}')
    right = Response(status=200, headers=JSON, body=b'{"a": 1')
    assert diff_bodies(left, right) == [
        FieldDiff(
            "$",
            "body_digest",
            hashlib.sha256(left.body).hexdigest(),
            hashlib.sha256(right.body).hexdigest(),
        )
    ]


def test_non_json_bodies_compare_by_digest() -> None:
    text = (("content-type", "text/html"),)
    assert (
        diff_bodies(Response(headers=text, body=b"<p>a"), Response(headers=text, body=b"<p>a"))
        == []
    )
    assert kinds(
        diff_bodies(Response(headers=text, body=b"<p>a"), Response(headers=text, body=b"<p>b"))
    ) == [("$", "body_digest")]
    # One side JSON, the other not: digest.
    assert kinds(diff_bodies(jresp({"a": 1}), Response(headers=text, body=b"<p>"))) == [
        ("$", "body_digest")
    ]


def test_truncated_bodies_compare_by_digest_only() -> None:
    full = orjson.dumps({"items": list(range(100))})
    cut = Response(status=200, headers=JSON, body=full[:50], truncated=True)
    # Equal captured prefixes: no diff, even though the JSON does not parse.
    assert diff_bodies(cut, cut) == []
    # Different captures: a digest diff, never array_length/extra from the truncation.
    other = Response(status=200, headers=JSON, body=full[:40], truncated=True)
    assert kinds(diff_bodies(cut, other)) == [("$", "body_digest")]
    assert kinds(diff_bodies(Response(status=200, headers=JSON, body=full), cut)) == [
        ("$", "body_digest")
    ]


# -- compare ---------------------------------------------------------------------------


def test_compare_identical_baseline_and_candidate() -> None:
    r = jresp({"a": [1, 2]})
    v = compare(result(r, r), ignore_headers=IGNORE, compare_headers=True)
    assert v == Verdict("GET /x", "baseline", (), None)
    assert not v.diverged


def test_compare_status_and_body() -> None:
    v = compare(
        result(jresp({"a": 2}, status=500), jresp({"a": 1})),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert v.reference == "baseline" and v.diverged
    assert v.diffs == (FieldDiff("status", "status", 200, 500), FieldDiff("$.a", "value", 1, 2))


def test_compare_errors() -> None:
    ok = jresp({})
    v = compare(
        result(Response(error="timeout: 10s"), ok), ignore_headers=IGNORE, compare_headers=False
    )
    assert v.diffs == (FieldDiff("error", "error", None, "timeout: 10s"),)
    v = compare(
        result(ok, Response(error="connect: refused")), ignore_headers=IGNORE, compare_headers=False
    )
    assert kinds(v.diffs) == [("error", "error")]
    # The same error kind on both sides is not a divergence.
    v = compare(
        result(Response(error="timeout: 10.0s"), Response(error="timeout: 10.1s")),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert not v.diverged
    v = compare(
        result(Response(error="timeout"), Response(error="connect")),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert kinds(v.diffs) == [("error", "error")]
    assert error_kind("timeout: x") == "timeout" and error_kind(None) is None


def test_compare_headers_only_when_asked_and_not_ignored() -> None:
    base = Response(
        status=200, headers=(("Date", "1"), ("X-A", "1"), ("X-Gone", "g"), ("Vary", "a"))
    )
    cand = Response(
        status=200, headers=(("date", "2"), ("x-a", "2"), ("X-New", "n"), ("vary", "a"))
    )
    assert not compare(result(cand, base), ignore_headers=IGNORE, compare_headers=False).diverged
    v = compare(result(cand, base), ignore_headers=frozenset({"date"}), compare_headers=True)
    assert v.diffs == (
        FieldDiff("header:x-a", "value", "1", "2"),
        FieldDiff("header:x-gone", "missing", "g", None),
        FieldDiff("header:x-new", "extra", None, "n"),
    )


def test_repeated_headers_are_joined() -> None:
    base = Response(status=200, headers=(("Via", "a"), ("Via", "b")))
    cand = Response(status=200, headers=(("Via", "a"),))
    v = compare(result(cand, base), ignore_headers=IGNORE, compare_headers=True)
    assert v.diffs == (FieldDiff("header:via", "value", "a, b", "a"),)


def test_no_candidate() -> None:
    v = compare(result(None, jresp({})), ignore_headers=IGNORE, compare_headers=False)
    assert v.error == "no_candidate" and not v.diverged


def test_origin_mode_status_and_digest() -> None:
    body = b'{"ok":true}'
    cand = Response(status=200, headers=JSON, body=body)
    digest = hashlib.sha256(body).hexdigest()
    v = compare(
        result(cand, origin=Origin(status=200, bytes=11)),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert v.reference == "origin" and not v.diverged and v.error is None
    v = compare(
        result(cand, origin=Origin(status=200, body_sha256=digest.upper())),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert not v.diverged
    v = compare(
        result(cand, origin=Origin(status=404, body_sha256="00" * 32)),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert v.diffs == (
        FieldDiff("status", "status", 404, 200),
        FieldDiff("$", "body_digest", "00" * 32, digest),
    )
    # A truncated candidate body cannot be checked against the full body's digest.
    cut = Response(status=200, headers=JSON, body=body[:3], truncated=True)
    v = compare(
        result(cut, origin=Origin(status=200, body_sha256=digest)),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert not v.diverged
    v = compare(
        result(Response(error="connect"), origin=Origin(status=200)),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert kinds(v.diffs) == [("error", "error")]


def test_no_reference_at_all() -> None:
    v = compare(result(jresp({})), ignore_headers=IGNORE, compare_headers=False)
    assert v.error == "no_reference" and v.reference == "origin"


def test_endpoint_named_when_result_has_none() -> None:
    v = compare(
        result(jresp({}), jresp({}), endpoint=""), ignore_headers=IGNORE, compare_headers=False
    )
    assert v.endpoint == "GET /users/{id}"


# -- hypothesis ------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_any_json_value_equals_itself(value: Any) -> None:
    assert diff_json(value, value) == []
    roundtrip = orjson.loads(orjson.dumps(value))
    assert diff_json(value, roundtrip) == []
    resp = jresp(value)
    r = result(resp, Response(status=resp.status, headers=resp.headers, body=resp.body))
    assert not compare(r, ignore_headers=IGNORE, compare_headers=True).diverged


@given(json_values, json_values)
@settings(max_examples=300, deadline=None)
def test_diff_is_empty_exactly_when_values_are_equal(left: Any, right: Any) -> None:
    diffs = diff_json(left, right)
    assert (diffs == []) == _json_equal(left, right)
    assert len(diffs) <= MAX_DIFFS
    orjson.dumps([d.left for d in diffs] + [d.right for d in diffs])  # JSON-serialisable


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_fast_paths_tell_bools_from_numbers_and_equate_ints_with_floats(value: Any) -> None:
    # Python's == says True == 1 and 1 == 1.0; the diff must say "type" and "equal".
    as_ints = _map_leaves(value, lambda v: int(v) if isinstance(v, bool) else v)
    assert bool(diff_json(value, as_ints)) == _has_bool(value)
    assert all(d.kind == "type" for d in diff_json(value, as_ints))
    as_floats = _map_leaves(value, lambda v: float(v) if type(v) is int and abs(v) < 2**53 else v)
    assert diff_json(value, as_floats) == []


def _map_leaves(value: Any, fn: Any) -> Any:
    if isinstance(value, dict):
        return {k: _map_leaves(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_leaves(v, fn) for v in value]
    return fn(value)


def _has_bool(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return (
        type(a) is type(b)
        and a == b
        or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b)
    )


# -- helpers shared with the loop ------------------------------------------------------


def test_endpoint_limiter_bounds_names() -> None:
    lim = EndpointLimiter(2)
    assert [lim("a"), lim("b"), lim("c"), lim("a"), lim("d")] == ["a", "b", "other", "a", "other"]
    assert len(lim) == 2


def test_format_table() -> None:
    text = format_table(
        [
            EndpointSummary("GET /a/{id}", 10, 5, {"value": 5}, {"$.price": 4, "status": 1}),
            EndpointSummary("GET /b", 200, 0, {}, {}),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "endpoint",
        "compared",
        "diverged",
        "rate",
        "top",
        "diverging",
        "fields",
    ]
    assert lines[1].split() == [
        "GET",
        "/a/{id}",
        "10",
        "5",
        "50.0%",
        "$.price",
        "(4),",
        "status",
        "(1)",
    ]
    assert lines[2].split() == ["GET", "/b", "200", "0", "0.0%", "-"]
