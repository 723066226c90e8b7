"""Replay rules: filters and rewrites, in order, pure."""

from __future__ import annotations

import pytest

from shadowreplay.replayer.rules import Rules, query_param, sample_bucket, set_query_param
from shadowreplay.contract.config import ReplayRule
from shadowreplay.contract.errors import ConfigError
from shadowreplay.contract.record import RequestRecord


def _rec(target: str = "/a", method: str = "GET", client: str | None = "10.0.0.1", **kw: object) -> RequestRecord:
    return RequestRecord(id="x", ts=1, method=method, target=target, client=client, **kw)  # type: ignore[arg-type]


def test_methods_allow_list_defaults_to_safe_ones() -> None:
    rules = Rules(("GET", "HEAD", "OPTIONS"), ())
    assert rules.apply(_rec(method="GET")).record is not None
    out = rules.apply(_rec(method="POST"))
    assert out.record is None and out.dropped_by == "methods" and out.acted == ("methods",)
    assert Rules(("GET", "POST"), ()).apply(_rec(method="POST")).record is not None


@pytest.mark.parametrize("method", ["get", "Get", "hEAD", "delete", "post"])
def test_a_method_spelled_otherwise_than_allowed_is_dropped(method: str) -> None:
    """Methods are case-sensitive on the wire: a logged "get" is not a GET. The list is
    matched whatever its own case, and a record goes out only as an allowed method."""
    for allowed in (("GET", "HEAD", "DELETE", "POST"), ("get", "head", "delete", "post")):
        out = Rules(allowed, ()).apply(_rec(method=method))
        assert out.record is None and out.dropped_by == "methods"
    assert Rules(("get",), ()).apply(_rec(method="GET")).record is not None


def test_path_include_exclude_in_order() -> None:
    rules = Rules(("GET",), (ReplayRule(kind="include_path", pattern=r"^/api/"),
                             ReplayRule(kind="exclude_path", pattern=r"/admin")))
    assert rules.apply(_rec("/api/items?x=/admin")).record is not None  # the query is not the path
    out = rules.apply(_rec("/static/a.css"))
    assert out.record is None and out.dropped_by == "0:include_path"
    out = rules.apply(_rec("/api/admin/users"))
    assert out.record is None and out.dropped_by == "1:exclude_path"


def test_header_match() -> None:
    req = Rules(("GET",), (ReplayRule(kind="require_header", name="Accept", pattern="json"),))
    assert req.apply(_rec(headers=(("accept", "application/json"),))).record is not None
    assert req.apply(_rec(headers=(("Accept", "text/html"),))).record is None
    assert req.apply(_rec()).record is None
    exc = Rules(("GET",), (ReplayRule(kind="exclude_header", name="User-Agent", pattern="(?i)bot"),))
    assert exc.apply(_rec(headers=(("User-Agent", "Googlebot"),))).record is None
    assert exc.apply(_rec(headers=(("User-Agent", "Firefox"),))).record is not None
    assert exc.apply(_rec()).record is not None


@pytest.mark.parametrize("key", ["client", "header:X-User", "query:uid"])
def test_sampling_is_consistent_per_key_and_close_to_the_share(key: str) -> None:
    rules = Rules(("GET",), (ReplayRule(kind="sample", percent=30.0, key=key),))

    def rec(user: int, n: int) -> RequestRecord:
        return _rec(f"/p/{n}?uid=u{user}", client=f"10.1.{user // 256}.{user % 256}",
                    headers=(("X-User", f"u{user}"),))

    kept_users = set()
    for user in range(2000):
        verdicts = {rules.apply(rec(user, n)).record is not None for n in range(3)}
        assert len(verdicts) == 1  # the same user is always in or always out
        if verdicts.pop():
            kept_users.add(user)
    assert 500 < len(kept_users) < 700
    assert rules.apply(rec(1, 0)).dropped_by in (None, "0:sample")


def test_sample_bucket_is_stable() -> None:
    assert sample_bucket("10.0.0.1") == sample_bucket("10.0.0.1")
    assert 0 <= sample_bucket("") < 10_000


def test_rewrites_in_order_keep_the_raw_query() -> None:
    rules = Rules(("GET",), (
        ReplayRule(kind="rewrite_path", pattern=r"^/v1/(\w+)", value=r"/v2/\1"),
        ReplayRule(kind="set_header", name="X-Env", value="staging"),
        ReplayRule(kind="remove_header", name="Cookie"),
        ReplayRule(kind="set_query", name="debug", value="1 2"),
    ))
    rec = _rec("/v1/items/7?b=%20x&a=1&b=2", headers=(("Cookie", "s=1"), ("x-env", "prod"), ("Accept", "*/*")))
    out = rules.apply(rec)
    assert out.record is not None
    assert out.record.target == "/v2/items/7?b=%20x&a=1&b=2&debug=1%202"
    assert out.record.headers == (("Accept", "*/*"), ("X-Env", "staging"))
    assert out.acted == ("0:rewrite_path", "1:set_header", "2:remove_header", "3:set_query")
    # a rule that changes nothing is not counted
    untouched = rules.apply(_rec("/other"))
    assert "0:rewrite_path" not in untouched.acted and "2:remove_header" not in untouched.acted


def test_query_helpers() -> None:
    assert query_param("/a?x=1&uid=u%207&uid=2", "uid") == "u 7"
    assert query_param("/a", "uid") is None
    assert set_query_param("/a?x=1&k=a&y=%2F&k=b", "k", "z") == "/a?x=1&k=z&y=%2F"
    assert set_query_param("/a", "k", "v") == "/a?k=v"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (ReplayRule(kind="nope"), "unknown rule kind"),
        (ReplayRule(kind="exclude_path", pattern="("), "not a valid regex"),
        (ReplayRule(kind="set_header"), "needs a name"),
        (ReplayRule(kind="sample", percent=101.0), "percent"),
        (ReplayRule(kind="sample", key="cookie:x"), "key"),
    ],
)
def test_bad_rules_are_config_errors(rule: ReplayRule, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Rules(("GET",), (rule,))
