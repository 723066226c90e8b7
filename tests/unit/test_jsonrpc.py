"""JSON-RPC 2.0 answers matched by id: duplicates, null ids, notifications, batches of one."""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.comparer.diff import Differ, diff_bodies
from shadowreplay.comparer.jsondiff import FieldDiff, JsonOptions, diff_jsonrpc
from shadowreplay.comparer.paths import PathSet
from shadowreplay.contract.config import ComparerConfig
from shadowreplay.contract.record import ReplayResult, RequestRecord, Response

JSON = (("content-type", "application/json"),)
PARSE_ERROR = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
INVALID = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request"}}


def ok(ident: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "result": result}


def kinds(diffs: list[FieldDiff]) -> list[tuple[str, str]]:
    return [(d.path, d.kind) for d in diffs]


def test_duplicate_ids_answered_in_another_order_do_not_diverge() -> None:
    left = [ok(1, "a"), ok(2, "x"), ok(1, "b"), ok(1, "c")]
    right = [ok(1, "c"), ok(1, "a"), ok(2, "x"), ok(1, "b")]
    assert diff_jsonrpc(left, right) == []


def test_duplicate_ids_name_the_answer_that_differs() -> None:
    # The second answer with id 1 changed: reported under id 1, never as id null.
    left = [ok(1, "a"), ok(1, "b"), ok(2, "x")]
    right = [ok(2, "x"), ok(1, "a"), ok(1, "B")]
    assert kinds(diff_jsonrpc(left, right)) == [("$[?(@.id==1)][1].result", "value")]
    # One answer with id 1 fewer on the candidate side.
    assert kinds(diff_jsonrpc(left, [ok(1, "b"), ok(2, "x")])) == [("$[?(@.id==1)][0]", "missing")]
    # One more, addressed by its position among the candidate's answers with that id.
    assert kinds(diff_jsonrpc(left, [ok(1, "a"), ok(1, "b"), ok(1, "z"), ok(2, "x")])) == [
        ("$[?(@.id==1)][2]", "extra")
    ]


def test_several_null_ids_pair_up_as_a_multiset() -> None:
    left = [PARSE_ERROR, ok(1, 10), INVALID, INVALID]
    right = [INVALID, ok(1, 10), INVALID, PARSE_ERROR]
    assert diff_jsonrpc(left, right) == []
    # One null answer changed its error code: one value diff, no order or type diff.
    changed = {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": "Internal error"}}
    got = kinds(diff_jsonrpc(left, [INVALID, ok(1, 10), changed, PARSE_ERROR]))
    assert got == [("$[?(@.id==null)][2].error.code", "value"), ("$[?(@.id==null)][2].error.message", "value")]
    assert all(kind not in ("order", "type", "array_length") for _, kind in got)


def test_a_lone_null_answer_and_a_lone_id_have_no_index() -> None:
    left = [ok(1, 1), INVALID]
    right = [{"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}, ok(1, 2)]
    assert kinds(diff_jsonrpc(left, right)) == [
        ("$[?(@.id==1)].result", "value"),
        ("$[?(@.id==null)].error.code", "value"),
        ("$[?(@.id==null)].error.message", "value"),
    ]


def test_notifications_get_no_answer_so_only_the_calls_are_compared() -> None:
    # Request: [notify, call id 1, notify, call id "a"]: the server answers the two calls.
    left = [ok(1, True), ok("a", [1])]
    assert diff_jsonrpc(left, list(reversed(left))) == []
    # A server that answers a notification (with id null) shows it as an extra answer.
    assert kinds(diff_jsonrpc(left, [*left, ok(None, "oops")])) == [("$[?(@.id==null)]", "extra")]
    # All notifications: both answer nothing (an empty body).
    empty = Response(status=204, headers=(), body=b"")
    assert diff_bodies(empty, empty) == []


def test_batch_of_one_and_a_single_call() -> None:
    assert kinds(diff_jsonrpc([ok(7, 1)], [ok(7, 2)])) == [("$[?(@.id==7)].result", "value")]
    assert kinds(diff_jsonrpc([ok(7, 1)], [ok(8, 1)])) == [("$[?(@.id==7)]", "missing"), ("$[?(@.id==8)]", "extra")]
    # A single call (not a batch) is plain JSON.
    assert kinds(diff_jsonrpc(ok(7, 1), ok(7, 2))) == [("$.result", "value")]
    # A batch answered by one object (an error for the whole batch) differs at the root.
    assert kinds(diff_jsonrpc([ok(7, 1)], INVALID)) == [("$", "type")]


def test_ids_compare_by_json_value() -> None:
    # 1 and 1.0 are one id; 1 and "1" are two.
    assert diff_jsonrpc([ok(1, "x")], [ok(1.0, "x")]) == []
    assert kinds(diff_jsonrpc([ok(1, "x")], [ok("1", "x")])) == [('$[?(@.id==1)]', "missing"), ('$[?(@.id=="1")]', "extra")]


def test_invalid_elements_are_addressed_by_position() -> None:
    left = [ok(1, 1), 5, {"jsonrpc": "2.0", "result": 3}]
    right = [{"jsonrpc": "2.0", "result": 3}, ok(1, 1), 6]
    assert kinds(diff_jsonrpc(left, right)) == [("$[1]", "value")]


def test_ignore_rules_apply_to_batch_elements() -> None:
    left = [ok(1, {"ts": 1, "v": 1}), ok(1, {"ts": 1, "v": 2})]
    right = [ok(1, {"ts": 2, "v": 2}), ok(1, {"ts": 2, "v": 1})]
    opts = JsonOptions(ignore=PathSet(["$..ts"]))
    # Not identical (ts differs), so they pair in order; v differs in both pairs.
    assert kinds(diff_jsonrpc(left, right, options=opts)) == [
        ("$[?(@.id==1)][0].result.v", "value"),
        ("$[?(@.id==1)][1].result.v", "value"),
    ]
    assert diff_jsonrpc(left, [*left, ok(2, 0)], options=JsonOptions(ignore=PathSet(["$[*]"]))) == []


def test_a_batch_opening_with_an_invalid_answer_is_still_matched_by_id() -> None:
    def result(left: Any, right: Any) -> ReplayResult:
        req = RequestRecord(id="r", ts=1, method="POST", target="/rpc", body=b'[{"jsonrpc":"2.0","method":"m","id":1}]')
        return ReplayResult(
            id="r", request=req, endpoint="", scheduled=1, sent=1,
            responses={
                "baseline": Response(status=200, headers=JSON, body=orjson.dumps(left)),
                "candidate": Response(status=200, headers=JSON, body=orjson.dumps(right)),
            },
        )

    v = Differ(ComparerConfig()).compare(result([INVALID, ok(1, 1), ok(2, 2)], [ok(2, 2), INVALID, ok(1, 1)]))
    assert not v.diverged and v.endpoint == "rpc:m"
    v = Differ(ComparerConfig()).compare(result([7, ok(1, 1), ok(2, 2)], [ok(2, 2), 7, ok(1, 1)]))
    assert not v.diverged


answers = st.lists(
    st.one_of(
        st.builds(ok, st.one_of(st.none(), st.integers(0, 4), st.sampled_from(["a", "b"])), st.integers(0, 3)),
        st.just(INVALID),
        st.just(PARSE_ERROR),
        st.integers(0, 2),
    ),
    max_size=12,
)


@given(answers, st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_any_reordering_of_a_batch_is_no_divergence(batch: list[Any], rnd: random.Random) -> None:
    shuffled = list(batch)
    rnd.shuffle(shuffled)
    assert diff_jsonrpc(batch, shuffled) == []


@given(answers, st.randoms(use_true_random=False), st.integers(0, 11))
@settings(max_examples=300, deadline=None)
def test_one_changed_answer_is_one_group_and_never_order_or_type(batch: list[Any], rnd: random.Random, k: int) -> None:
    if not batch:
        return
    k %= len(batch)
    changed = list(batch)
    target = changed[k]
    if not isinstance(target, dict) or "result" not in target:
        return
    changed[k] = {**target, "result": "changed"}
    rnd.shuffle(changed)
    diffs = diff_jsonrpc(batch, changed)
    assert diffs, "a changed answer must show"
    assert {d.kind for d in diffs} <= {"value", "type"} and all(d.path.endswith(".result") for d in diffs)
    ident = orjson.dumps(target["id"]).decode()
    assert all(d.path.startswith(f"$[?(@.id=={ident})]") for d in diffs)


def test_duplicate_id_paths_count_as_one_field() -> None:
    from shadowreplay.comparer.paths import field_key

    assert field_key("$[?(@.id==1)][1].result.ts") == "$[*].result.ts"
    assert field_key("$[?(@.id==null)].error") == "$[*].error"
    assert field_key("$[?(@.id==\"a b\")][0].x[3]") == "$[*].x[*]"
