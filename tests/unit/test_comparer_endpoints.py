"""Comparer endpoint naming (JSON-RPC, routes) and path patterns."""

from __future__ import annotations

import orjson
import pytest

from shadowreplay.comparer.endpoints import EndpointNamer, jsonrpc_name, parse_route
from shadowreplay.comparer.paths import PathSet, is_within
from shadowreplay.contract.errors import ConfigError
from shadowreplay.contract.record import RequestRecord


def req(method: str, target: str, body: bytes | None = None) -> RequestRecord:
    return RequestRecord(id="r", ts=1, method=method, target=target, body=body)


def test_jsonrpc_names() -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": []}
    assert jsonrpc_name(orjson.dumps(call)) == "rpc:eth_getBalance"
    assert jsonrpc_name(orjson.dumps([call, {**call, "id": 2}])) == "rpc:eth_getBalance"
    assert jsonrpc_name(orjson.dumps([call, {**call, "method": "eth_call"}])) == "rpc:batch"
    assert jsonrpc_name(b'{"jsonrpc": "1.0", "method": "x"}') is None
    assert jsonrpc_name(b'{"a": "jsonrpc"}') is None
    assert jsonrpc_name(b'"jsonrpc" not json') is None
    assert jsonrpc_name(None) is None
    assert jsonrpc_name(b"[]") is None


def test_namer_precedence() -> None:
    namer = EndpointNamer(["GET /api/users/{id}/cart", "* /static/**", r"~^GET /v(\d+)/ => GET /v\1/*"])
    assert namer.name(req("GET", "/api/users/7/cart?x=1")) == "GET /api/users/{id}/cart"
    assert namer.name(req("POST", "/api/users/7/cart")) == "POST /api/users/{id}/cart"  # no route: template
    assert namer.name(req("HEAD", "/static/css/a.css")) == "HEAD /static/**"
    assert namer.name(req("GET", "/v2/things/abc")) == "GET /v2/*"
    assert namer.name(req("GET", "/other/5"), "GET /stamped") == "GET /stamped"
    assert namer.name(req("GET", "/other/5")) == "GET /other/{id}"
    rpc = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "getBlock"})
    assert namer.name(req("POST", "/api/users/1/cart", rpc)) == "rpc:getBlock"


def test_route_segments_do_not_cross_slashes() -> None:
    route = parse_route("GET /a/{id}")
    assert route.match("GET", "/a/1") == "GET /a/{id}"
    assert route.match("GET", "/a/1/b") is None
    assert route.match("POST", "/a/1") is None
    assert parse_route("/a/*").match("PUT", "/a/x") == "PUT /a/*"


@pytest.mark.parametrize("spec", ["nope", "~(unclosed => x", "~^GET /a", "GET relative"])
def test_bad_routes(spec: str) -> None:
    with pytest.raises(ConfigError, match="comparer.routes"):
        parse_route(spec)


@pytest.mark.parametrize(
    "pattern, path, hit",
    [
        ("$.meta.*", "$.meta.ts", True),
        ("$.meta.*", "$.meta", False),
        ("$.meta", "$.meta.ts.x", True),
        ("$.meta", "$.metadata", False),
        ("$..updated_at", "$.updated_at", True),
        ("$..updated_at", "$.a[3].b.updated_at", True),
        ("$..updated_at", "$.a.updated_atx", False),
        ("$.items[*].price", "$.items[12].price", True),
        ("$.items[*].price", "$.items[1].cost", False),
        ("$.items[2]", "$.items[2].x", True),
        ("$.items[2]", "$.items[20]", False),
        ("$['a b'].c", "$['a b'].c", True),
        ("$.ok", "$['ok']", True),
        ("$[*].result.ts", '$[?(@.id=="x")].result.ts', True),
        ("$..*", "$.anything", True),
        ("header:x-*", "header:x-trace", True),
        ("header:x-*", "header:y", False),
        ("status", "status", True),
        ("line:*", "line:12", True),
    ],
)
def test_path_patterns(pattern: str, path: str, hit: bool) -> None:
    assert (path in PathSet([pattern])) is hit


@pytest.mark.parametrize("bad", ["$.a[", "$a", "$.", "$.a.b["])
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad path pattern"):
        PathSet([bad])


def test_is_within() -> None:
    assert is_within("$.a", "$.a") and is_within("$.a.b", "$.a") and is_within("$.a[1]", "$.a")
    assert not is_within("$.ab", "$.a") and not is_within("header:ab", "header:a")
    assert is_within("$.x", "$") and not is_within("status", "$")


def test_namer_bounds_names_with_an_overflow_bucket(caplog: pytest.LogCaptureFixture) -> None:
    namer = EndpointNamer(max_names=2)
    got = [namer.name(req("GET", t)) for t in ("/a", "/b/1", "/c", "/a", "/b/2", "/d", "/other")]
    assert got == ["GET /a", "GET /b/{id}", "other", "GET /a", "GET /b/{id}", "other", "other"]
    assert sum("comparer.max_endpoints" in r.message for r in caplog.records) == 1  # told once
    assert EndpointNamer().name(req("GET", "/z")) == "GET /z"  # 0: unbounded


def test_verdicts_of_many_raw_paths_carry_a_bounded_set_of_templates() -> None:
    from shadowreplay.comparer.diff import Differ
    from shadowreplay.contract.config import ComparerConfig
    from shadowreplay.contract.record import ReplayResult, Response

    differ = Differ(ComparerConfig(max_endpoints=5))
    names = set()
    for i in range(2000):
        r = req("GET", f"/api/items/{i}/o{i:04x}?q={i}")
        names.add(differ.endpoint(ReplayResult(id="r", request=r, endpoint="", scheduled=1, sent=1,
                                               responses={"candidate": Response(status=200)})))
        names.add(differ.endpoint(ReplayResult(id="r", request=req("GET", f"/slug-{chr(97 + i % 26)}{i // 26}"),
                                               endpoint="", scheduled=1, sent=1, responses={})))
    assert names == {"GET /api/items/{id}/{id}", "GET /{id}"}
    for i in range(100):  # slugs without digits: the first five names, then the overflow bucket
        names.add(differ.endpoint(ReplayResult(id="r", request=req("GET", "/p/" + "".join(chr(97 + (i >> k) % 26) for k in (0, 5))),
                                               endpoint="", scheduled=1, sent=1, responses={})))
    assert len(names) == 6 and "other" in names
