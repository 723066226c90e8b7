from __future__ import annotations

import hashlib
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.comparer.diff import (
    MAX_DIFFS,
    Differ,
    FieldDiff,
    Verdict,
    diff_bodies,
    diff_json,
    error_kind,
    is_json_content_type,
)
from shadowreplay.comparer.loop import EndpointSummary, format_table
from shadowreplay.comparer.metrics import EndpointLimiter
from shadowreplay.contract.config import ComparerConfig
from shadowreplay.contract.record import Origin, ReplayResult, RequestRecord, Response

JSON = (("content-type", "application/json"),)
IGNORE = frozenset({"date", "server"})


def compare(result: ReplayResult, *, ignore_headers: frozenset[str], compare_headers: bool) -> Verdict:
    """The differ with only its header rules set (every other rule at its default)."""
    config = ComparerConfig(ignore_headers=tuple(sorted(ignore_headers)), compare_headers=compare_headers)
    return Differ(config).compare(result)


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
    text = (("content-type", "application/octet-stream"),)
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
    v = compare(result(ok, Response(error="reset")), ignore_headers=IGNORE, compare_headers=False)
    assert kinds(v.diffs) == [("error", "error")]
    # A baseline or candidate never reached is not compared at all (not a divergence).
    v = compare(result(Response(error="connect: refused"), ok), ignore_headers=IGNORE, compare_headers=False)
    assert (v.error, v.not_reached, v.diffs) == ("not_reached", ("candidate", "connect"), ())
    v = compare(result(ok, Response(error="tls")), ignore_headers=IGNORE, compare_headers=False)
    assert (v.error, v.not_reached, v.diffs) == ("not_reached", ("baseline", "tls"), ())
    # The same error kind on both sides is not a divergence.
    v = compare(
        result(Response(error="timeout: 10.0s"), Response(error="timeout: 10.1s")),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert not v.diverged
    v = compare(
        result(Response(error="timeout"), Response(error="reset")),
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
        result(Response(error="timeout"), origin=Origin(status=200)),
        ignore_headers=IGNORE,
        compare_headers=False,
    )
    assert kinds(v.diffs) == [("error", "error")]
    v = compare(result(Response(error="dns"), origin=Origin(status=200)), ignore_headers=IGNORE, compare_headers=False)
    assert (v.error, v.not_reached) == ("not_reached", ("candidate", "dns"))


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
    assert lines[0].split()[:4] == ["endpoint", "compared", "diverged", "rate"]
    assert lines[0].split()[-3:] == ["real", "diverging", "fields"]
    assert lines[1].split() == ["GET", "/a/{id}", "10", "5", "50.0%", "-", "$.price", "(4),", "status", "(1)"]
    assert lines[2].split() == ["GET", "/b", "200", "0", "0.0%", "-", "-"]


# -- issue 5: every diff kind, rules, JSON-RPC, text, gzip, latency, noise --------------

import gzip  # noqa: E402

from shadowreplay.comparer.diff import diff_jsonrpc, diff_text, split_noise  # noqa: E402
from shadowreplay.comparer.jsondiff import JsonOptions  # noqa: E402
from shadowreplay.comparer.paths import PathSet  # noqa: E402
from shadowreplay.contract.config import EndpointRules  # noqa: E402


def three(
    candidate: Response, baseline: Response, secondary: Response | None = None, **kw: Any
) -> ReplayResult:
    r = result(candidate, baseline, **kw)
    if secondary is not None:
        r.responses["secondary"] = secondary
    return r


def test_every_json_kind_by_hand() -> None:
    left = {"v": 1, "t": "1", "gone": 0, "arr": [1, 2, 3], "ord": [1, 2, 3], "o": {"x": 1}}
    right = {"v": 2, "t": 1, "new": 0, "arr": [1, 2], "ord": [3, 1, 2], "o": {"x": 1}}
    assert kinds(diff_json(left, right)) == [
        ("$.v", "value"),
        ("$.t", "type"),
        ("$.gone", "missing"),
        ("$.arr", "array_length"),
        ("$.ord", "order"),
        ("$.new", "extra"),
    ]


def test_order_only_for_a_pure_permutation() -> None:
    assert diff_json([1, 2, 3], [2, 1, 3]) == [FieldDiff("$", "order", None, None)]
    # Not the same elements: positional diffs, no order diff.
    assert kinds(diff_json([1, 2, 3], [2, 1, 4])) == [("$[0]", "value"), ("$[1]", "value"), ("$[2]", "value")]
    assert kinds(diff_json([[1, 2]], [[2, 1]])) == [("$[0]", "order")]


def test_ignore_paths_with_wildcards() -> None:
    opts = JsonOptions(ignore=PathSet(["$.meta.*", "$..updated_at", "$.items[*].etag"]))
    left = {"meta": {"ts": 1, "host": "a"}, "a": {"b": {"updated_at": 1}}, "items": [{"etag": "x", "p": 1}]}
    right = {"meta": {"ts": 2}, "a": {"b": {"updated_at": 2}}, "items": [{"etag": "y", "p": 2}]}
    assert diff_json(left, right, options=opts) == [FieldDiff("$.items[0].p", "value", 1, 2)]
    # $.meta.* covers the children, not $.meta itself.
    assert kinds(diff_json({"meta": {}}, {}, options=opts)) == [("$.meta", "missing")]


def test_numeric_tolerance_absolute_and_relative() -> None:
    absolute = JsonOptions(tolerance_absolute=0.01)
    assert diff_json({"p": 1.0}, {"p": 1.01}, options=absolute) == []
    assert kinds(diff_json({"p": 1.0}, {"p": 1.02}, options=absolute)) == [("$.p", "value")]
    relative = JsonOptions(tolerance_relative=0.1)
    assert diff_json([100], [109], options=relative) == []
    assert kinds(diff_json([100], [112], options=relative)) == [("$[0]", "value")]
    # Tolerance never equates a bool with a number, nor strings.
    assert kinds(diff_json([True], [1], options=JsonOptions(tolerance_absolute=5))) == [("$[0]", "type")]


def test_unordered_arrays() -> None:
    opts = JsonOptions(unordered=PathSet(["$.tags", "$.items"]))
    assert diff_json({"tags": ["a", "b", "c"]}, {"tags": ["c", "a", "b"]}, options=opts) == []
    assert diff_json({"tags": ["a", "b"]}, {"tags": ["b", "x"]}, options=opts) == [
        FieldDiff("$.tags[0]", "value", "a", "x")
    ]
    assert kinds(diff_json({"tags": ["a"]}, {"tags": ["b", "a", "c"]}, options=opts)) == [
        ("$.tags", "array_length"),
        ("$.tags[0]", "extra"),
        ("$.tags[2]", "extra"),
    ]
    # Leftover objects pair up and are diffed structurally, so ignore rules still apply.
    opts2 = JsonOptions(unordered=PathSet(["$.items"]), ignore=PathSet(["$..ts"]))
    left = {"items": [{"id": 1, "ts": 1}, {"id": 2, "ts": 1}]}
    right = {"items": [{"id": 2, "ts": 9}, {"id": 1, "ts": 9}]}
    assert kinds(diff_json(left, right, options=opts2)) == [("$.items[0].id", "value"), ("$.items[1].id", "value")]


def test_jsonrpc_batch_reordered_is_not_a_divergence() -> None:
    left = [
        {"jsonrpc": "2.0", "id": 1, "result": {"balance": 10}},
        {"jsonrpc": "2.0", "id": "b", "result": [1, 2]},
        {"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "no"}},
    ]
    right = [left[2], left[0], left[1]]
    assert diff_jsonrpc(left, right) == []
    r = result(jresp(right), jresp(left))
    assert not Differ(ComparerConfig()).compare(r).diverged


def test_jsonrpc_batch_matched_by_id() -> None:
    left = [{"jsonrpc": "2.0", "id": 1, "result": 10}, {"jsonrpc": "2.0", "id": 2, "result": 20}]
    right = [{"jsonrpc": "2.0", "id": 3, "result": 30}, {"jsonrpc": "2.0", "id": 1, "result": 11}]
    assert kinds(diff_jsonrpc(left, right)) == [
        ("$[?(@.id==1)].result", "value"),
        ("$[?(@.id==2)]", "missing"),
        ("$[?(@.id==3)]", "extra"),
    ]
    # String ids are quoted; elements without an id pair up in order.
    s_left = [{"jsonrpc": "2.0", "id": "x", "result": 1}, {"jsonrpc": "2.0", "id": None, "error": {"code": 1}}]
    s_right = [{"jsonrpc": "2.0", "id": None, "error": {"code": 2}}, {"jsonrpc": "2.0", "id": "x", "result": 2}]
    assert kinds(diff_jsonrpc(s_left, s_right)) == [
        ('$[?(@.id=="x")].result', "value"),
        ("$[?(@.id==null)].error.code", "value"),
    ]
    # A single call is plain JSON.
    assert kinds(diff_jsonrpc({"jsonrpc": "2.0", "id": 1, "result": 1}, {"jsonrpc": "2.0", "id": 1, "result": 2})) == [
        ("$.result", "value")
    ]


def test_text_bodies_by_normalised_lines() -> None:
    assert diff_text(b"a\r\nb  \n\n\n", b"a\nb") == []
    assert diff_text(b"a\nb\nc\n", b"a\nB\nc\nd\n") == [
        FieldDiff("line:2", "value", "b", "B"),
        FieldDiff("line:4", "extra", None, "d"),
    ]
    assert diff_text(b"a\nb\n", b"b\n") == [FieldDiff("line:1", "missing", "a", None)]
    html = (("content-type", "text/html; charset=utf-8"),)
    assert diff_bodies(Response(headers=html, body=b"<p>a</p>\r\n"), Response(headers=html, body=b"<p>a</p>")) == []
    assert kinds(diff_bodies(Response(headers=html, body=b"<p>a"), Response(headers=html, body=b"<p>b"))) == [
        ("line:1", "value")
    ]


def test_binary_by_digest_and_gzip_sniffed() -> None:
    doc = {"a": 1, "b": [1, 2]}
    zipped = Response(status=200, headers=JSON, body=gzip.compress(orjson.dumps(doc)))
    assert diff_bodies(jresp(doc), zipped) == []
    assert kinds(diff_bodies(jresp({"a": 2, "b": [1, 2]}), zipped)) == [("$.a", "value")]
    # Not really gzip after the magic: compared as bytes.
    bogus = Response(status=200, headers=JSON, body=b"\x1f\x8bnot gzip")
    assert kinds(diff_bodies(jresp(doc), bogus)) == [("$", "body_digest")]


def test_latency_divergence_kind() -> None:
    cfg = ComparerConfig(latency_ratio_threshold=2.0, latency_min_delta_seconds=0.05)
    differ = Differ(cfg)
    fast, slow = jresp({"a": 1}, latency=0.010), jresp({"a": 1}, latency=0.100)
    v = differ.compare(result(slow, fast))
    assert v.diffs == (FieldDiff("latency", "latency", 0.010, 0.100),) and v.latency_ratio == 10.0
    # Ratio exceeded but only 20 ms slower: below the minimum delta.
    v = differ.compare(result(jresp({"a": 1}, latency=0.03), jresp({"a": 1}, latency=0.01)))
    assert not v.diverged and v.latency_ratio is not None and abs(v.latency_ratio - 3.0) < 1e-9
    # Off by default: the ratio is measured, never a divergence.
    v = Differ(ComparerConfig()).compare(result(slow, fast))
    assert not v.diverged and v.latency_ratio == 10.0


def test_per_endpoint_rules_and_header_ignore() -> None:
    cfg = ComparerConfig(
        compare_headers=True,
        ignore_paths=("$.ts",),
        endpoints=(
            EndpointRules(match="GET /x*", ignore_headers=("x-build",), ignore_paths=("$.rev",), tolerance_absolute=1.0),
        ),
    )
    differ = Differ(cfg)
    base = Response(status=200, headers=(*JSON, ("X-Build", "1"), ("Date", "a")), body=b'{"ts":1,"rev":1,"n":1}')
    cand = Response(status=200, headers=(*JSON, ("X-Build", "2"), ("Date", "b")), body=b'{"ts":2,"rev":2,"n":2}')
    assert not differ.compare(result(cand, base, endpoint="GET /x")).diverged
    v = differ.compare(result(cand, base, endpoint="GET /other"))
    assert kinds(v.diffs) == [("header:x-build", "value"), ("$.rev", "value"), ("$.n", "value")]


def test_noise_cancelled_by_secondary_in_the_same_request() -> None:
    differ = Differ(ComparerConfig())
    base = jresp({"ts": 1, "meta": {"req": "a"}, "price": 5})
    sec = jresp({"ts": 2, "meta": {"req": "b"}, "price": 5})
    cand = jresp({"ts": 3, "meta": {"req": "c", "x": 1}, "price": 6})
    v = differ.compare(three(cand, base, sec))
    assert kinds(v.diffs) == [("$.meta.x", "extra"), ("$.price", "value")]
    assert kinds(v.noise) == [("$.ts", "value"), ("$.meta.req", "value")]
    assert kinds(v.secondary) == [("$.ts", "value"), ("$.meta.req", "value")]
    # Only noise: not diverged.
    v = differ.compare(three(jresp({"ts": 3, "meta": {"req": "c"}, "price": 5}), base, sec))
    assert not v.diverged and len(v.noise) == 2
    # A whole noisy subtree cancels everything beneath it.
    real, noise = split_noise(
        [FieldDiff("$.a.b", "value", 1, 2), FieldDiff("$.ab", "value", 1, 2)], [FieldDiff("$.a", "type", 1, {})], PathSet()
    )
    assert kinds(real) == [("$.ab", "value")] and kinds(noise) == [("$.a.b", "value")]


def test_config_listed_noise_paths_without_secondary() -> None:
    differ = Differ(ComparerConfig(noise_paths=("$..nonce", "header:x-*")))
    v = differ.compare(result(jresp({"a": {"nonce": 2}, "b": 1}), jresp({"a": {"nonce": 1}, "b": 1})))
    assert not v.diverged and kinds(v.noise) == [("$.a.nonce", "value")]


def test_origin_size_when_enabled() -> None:
    cand = Response(status=200, headers=JSON, body=b"x" * 100)
    off = Differ(ComparerConfig()).compare(result(cand, origin=Origin(status=200, bytes=200)))
    assert not off.diverged
    on = Differ(ComparerConfig(compare_origin_size=True, origin_size_tolerance_relative=0.05))
    assert on.compare(result(cand, origin=Origin(status=200, bytes=200))).diffs == (FieldDiff("size", "size", 200, 100),)
    assert not on.compare(result(cand, origin=Origin(status=200, bytes=104))).diverged


def test_bad_patterns_fail_at_construction() -> None:
    import pytest

    from shadowreplay.contract.errors import ConfigError

    with pytest.raises(ConfigError, match="comparer.ignore_paths"):
        Differ(ComparerConfig(ignore_paths=("$.a[",)))
    with pytest.raises(ConfigError, match="comparer.routes"):
        Differ(ComparerConfig(routes=("nope",)))


body_values = json_values


@given(body_values, st.sampled_from(["application/json", "text/plain", "application/octet-stream"]))
@settings(max_examples=200, deadline=None)
def test_a_body_compared_with_itself_never_diverges(value: Any, ctype: str) -> None:
    body = orjson.dumps(value)
    resp = Response(status=200, headers=(("content-type", ctype),), body=body, latency=0.01)
    twin = Response(status=200, headers=(("content-type", ctype),), body=bytes(body), latency=0.5)
    cfg = ComparerConfig(compare_headers=True, unordered_paths=("$..*",), tolerance_relative=0.01)
    v = Differ(cfg).compare(three(resp, twin, twin))
    assert not v.diverged and not v.noise
    assert diff_jsonrpc(value, orjson.loads(body)) == []
