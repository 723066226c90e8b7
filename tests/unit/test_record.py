"""The wire contract: what goes on the bus comes back unchanged."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowreplay.contract.config import TARGET_NAMES
from shadowreplay.contract.errors import RecordError
from shadowreplay.contract.record import (
    MAX_SCHEMA_VERSION,
    PROBE,
    RAW_SCHEMA_VERSION,
    SCHEMA_VERSION,
    Origin,
    ReplayResult,
    RequestRecord,
    Response,
    decode_request,
    decode_result,
    encode_request,
    encode_result,
    is_text,
    readable,
    stable_id,
    to_bytes,
)


def _record(**kw: object) -> RequestRecord:
    base: dict[str, object] = dict(
        id="r1",
        ts=1_464_845_619_123_450_040,
        tag="nginx.access",
        method="GET",
        scheme="https",
        host="shop.example.com",
        target="/search?q=a&q=b&z=1&a=2&q=a%20b",
        headers=(("Accept", "a/b"), ("X-Multi", "1"), ("X-Multi", "2"), ("accept", "c/d")),
        body=bytes(range(256)),
        client="10.0.0.7",
        origin=Origin(status=200, bytes=512, duration=0.004, body_sha256="ab" * 32),
    )
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_request_round_trip_keeps_everything() -> None:
    rec = _record()
    back = decode_request(encode_request(rec))
    assert back == rec
    assert back.ts == 1_464_845_619_123_450_040  # nanoseconds, exactly
    assert back.target == "/search?q=a&q=b&z=1&a=2&q=a%20b"  # order and repeats survive
    assert back.headers[1:3] == (("X-Multi", "1"), ("X-Multi", "2"))
    assert back.body == bytes(range(256))


def test_wire_field_names_are_the_documented_api() -> None:
    wire = orjson.loads(encode_request(_record()))
    assert set(wire) == {"v", "id", "ts", "tag", "method", "scheme", "host", "target", "headers", "body", "client", "origin"}
    assert wire["v"] == SCHEMA_VERSION
    assert wire["headers"][0] == ["Accept", "a/b"]
    assert set(wire["origin"]) == {"status", "bytes", "duration", "body_sha256"}


def test_absent_body_is_null_and_empty_body_is_empty() -> None:
    assert decode_request(encode_request(_record(body=None))).body is None
    assert decode_request(encode_request(_record(body=b""))).body == b""


def test_result_round_trip() -> None:
    rec = _record()
    result = ReplayResult(
        id=rec.id,
        request=rec,
        endpoint="GET /search",
        scheduled=1_700_000_000_000_000_001,
        sent=1_700_000_000_000_500_002,
        responses={
            "candidate": Response(status=200, headers=(("Set-Cookie", "a"), ("Set-Cookie", "b")), body=b"\x00\xff", latency=0.01, ttfb=0.005),
            "baseline": Response(error="timeout", latency=10.0),
        },
        origin=rec.origin,
    )
    back = decode_result(encode_result(result))
    assert back == result
    assert back.responses["candidate"].body == b"\x00\xff"
    assert back.responses["baseline"].status is None


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda w: w.pop("ts"), "missing field 'ts'"),
        (lambda w: w.update(ts="1"), "'ts' must be int"),
        (lambda w: w.update(v=MAX_SCHEMA_VERSION + 1), "newer"),
        (lambda w: w.pop("v"), "schema version"),
        (lambda w: w.update(body="***"), "base64"),
        (lambda w: w.update(headers=[["a"]]), "pairs"),
        (lambda w: w.update(origin=[1]), "origin"),
    ],
)
def test_bad_records_raise_record_error(mutate: object, message: str) -> None:
    wire = orjson.loads(encode_request(_record()))
    mutate(wire)  # type: ignore[operator]
    with pytest.raises(RecordError, match=message):
        decode_request(orjson.dumps(wire))


def test_not_json_is_a_record_error() -> None:
    with pytest.raises(RecordError):
        decode_request(b"\xff{")
    with pytest.raises(RecordError):
        decode_result(b"[]")


def test_helpers() -> None:
    rec = _record()
    assert rec.path == "/search"
    assert rec.header("ACCEPT") == "a/b"
    assert rec.header("missing") is None
    assert rec.partition_key() == b"10.0.0.7"
    assert _record(client=None).partition_key() == b"r1"
    assert stable_id(1, "a") == stable_id(1, "a") != stable_id(1, "b")


# -- every encoded record decodes to itself (property tests) ------------------------------

text = st.text(max_size=30)  # Unicode text, no lone surrogates
# Text as the collector holds it: any bytes, surrogate-escaped where they are not UTF-8.
any_bytes_text = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
field_text = st.one_of(text, any_bytes_text)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
seconds = st.floats(allow_nan=False, allow_infinity=False)  # JSON has no NaN or infinity
origins = st.one_of(
    st.none(),
    st.builds(Origin, st.none() | int64, st.none() | int64, st.none() | seconds, st.none() | text),
)
# A request's target, host and header values may hold any bytes (record v2 "raw"); its
# other members are text by construction.
requests = st.builds(
    RequestRecord,
    id=text,
    ts=int64,
    method=text,
    target=field_text,
    tag=text,
    scheme=text,
    host=field_text,
    headers=st.lists(st.tuples(text, field_text), max_size=6).map(tuple),
    body=st.none() | st.binary(max_size=64),
    client=st.none() | text,
    origin=origins,
)
responses = st.builds(
    Response,
    status=st.none() | int64,
    headers=st.lists(st.tuples(text, text), max_size=4).map(tuple),
    body=st.binary(max_size=64),
    truncated=st.booleans(),
    latency=st.none() | seconds,
    ttfb=st.none() | seconds,
    error=st.none() | text,
    timeline=st.lists(st.tuples(seconds, int64), max_size=8).map(tuple),
    stream=st.booleans(),
    stream_window_reached=st.booleans(),
)
results = st.builds(
    ReplayResult,
    id=text,
    request=requests,
    endpoint=text,
    scheduled=int64,
    sent=int64,
    responses=st.dictionaries(st.sampled_from((*TARGET_NAMES, PROBE)) | text, responses, max_size=4),
    origin=origins,
)


@given(requests)
def test_every_request_decodes_to_itself(rec: RequestRecord) -> None:
    data = encode_request(rec)
    assert decode_request(data) == rec
    wire = orjson.loads(data)  # always valid JSON, lone surrogates or not
    has_bytes = not all(is_text(v) for v in (rec.target, rec.host, *(v for _, v in rec.headers)))
    if has_bytes:
        assert wire["v"] == RAW_SCHEMA_VERSION and "raw" in wire
    else:  # plain text: exactly the version-1 record as before
        assert wire["v"] == SCHEMA_VERSION and "raw" not in wire


@given(results)
def test_every_result_decodes_to_itself(result: ReplayResult) -> None:
    data = encode_result(result)
    assert decode_result(data) == result


@pytest.mark.parametrize(
    "mutate",
    [
        lambda w: w.update(tag=None, scheme=None, host=None, headers=None, body=None, origin=None),
        lambda w: w["origin"].update(duration=1),  # an int duration is still a float duration
        lambda w: w["origin"].update(status=None, bytes=None, duration=None, body_sha256=None),
        lambda w: w.update(unknown_field=1),
    ],
)
def test_lenient_forms_decode_as_before(mutate: object) -> None:
    wire = orjson.loads(encode_request(_record()))
    mutate(wire)  # type: ignore[operator]
    rec = decode_request(orjson.dumps(wire))
    if wire["tag"] is None:
        assert (rec.tag, rec.scheme, rec.host, rec.headers, rec.body, rec.origin) == ("", "http", "", (), None, None)
    if rec.origin is not None and rec.origin.duration is not None:
        assert type(rec.origin.duration) is float
    assert decode_request(encode_request(rec)) == rec


def test_response_stream_fields_round_trip_and_old_results_decode() -> None:
    streamed = Response(status=200, body=b"data: 1\n\n", latency=1.0, ttfb=0.01,
                        timeline=((0.01, 9), (0.5, 18)), stream=True, stream_window_reached=True)
    wire = orjson.loads(orjson.dumps(streamed.to_wire()))
    assert wire["timeline"] == [[0.01, 9], [0.5, 18]]
    assert wire["stream"] is True and wire["stream_window_reached"] is True
    assert Response.from_wire(wire) == streamed
    plain = Response(status=200, body=b"x").to_wire()
    assert not {"timeline", "stream", "stream_window_reached"} & set(plain)  # written only when set
    old = {"status": 200, "headers": [], "body": None, "truncated": False, "latency": 0.1, "ttfb": 0.05, "error": None}
    decoded = Response.from_wire(old)
    assert (decoded.timeline, decoded.stream, decoded.stream_window_reached) == ((), False, False)


@pytest.mark.parametrize("timeline", ["x", [[1.0]], [["a", 1]], [[1.0, 2.5]], [[True, 1]], [[0.1, 1]] * 1025])
def test_bad_timelines_are_record_errors(timeline: object) -> None:
    with pytest.raises(RecordError, match="timeline"):
        Response.from_wire({"status": 200, "timeline": timeline})


# -- bytes that are not UTF-8 (record version 2, "raw") ------------------------------------


@given(
    target=field_text,
    host=field_text,
    headers=st.lists(st.tuples(text, field_text), max_size=6),
)
def test_round_trip_keeps_bytes_that_are_not_utf8(target: str, host: str, headers: list[tuple[str, str]]) -> None:
    back = decode_request(encode_request(_record(target=target, host=host, headers=tuple(headers))))
    assert to_bytes(back.target) == to_bytes(target) and to_bytes(back.host) == to_bytes(host)
    assert [to_bytes(v) for _, v in back.headers] == [to_bytes(v) for _, v in headers]


def test_raw_wire_shape() -> None:
    rec = _record(
        target="/caf\udce9?q=\udcff",
        headers=(("Accept", "a/b"), ("User-Agent", "M\udce4rz"), ("Referer", "https://x/é")),
    )
    wire = orjson.loads(encode_request(rec))
    assert wire["v"] == 2
    assert wire["target"] == "/caf\ufffd?q=\ufffd"  # readable, for tools that only print it
    assert wire["headers"][1] == ["User-Agent", "M\ufffdrz"] and wire["headers"][2] == ["Referer", "https://x/é"]
    assert wire["raw"] == {"target": "L2NhZuk/cT3/", "headers": [[1, "TeRyeg=="]]}
    assert base64.b64decode(wire["raw"]["target"]) == b"/caf\xe9?q=\xff"
    assert readable("a\udcffb") == "a\ufffdb" and is_text("é") and not is_text("\udce9")


def test_version_1_records_decode_as_before() -> None:
    # A record written by an earlier build (no "raw"): decoded unchanged.
    old = (
        b'{"v":1,"id":"r1","ts":5,"tag":"t","method":"GET","scheme":"http","host":"h",'
        b'"target":"/a?b=1","headers":[["Accept","*/*"]],"body":null,"client":"10.0.0.1","origin":null}'
    )
    rec = decode_request(old)
    assert (rec.id, rec.target, rec.headers) == ("r1", "/a?b=1", (("Accept", "*/*"),))
    assert encode_request(rec) == old


@pytest.mark.parametrize(
    "raw, message",
    [
        ([1], "raw must be an object"),
        ({"target": 5}, "base64"),
        ({"target": "***"}, "base64"),
        ({"headers": [[7, "eA=="]]}, "indexes"),
        ({"headers": [["0", "eA=="]]}, "indexes"),
        ({"headers": {"0": "eA=="}}, "pairs"),
    ],
)
def test_bad_raw_is_a_record_error(raw: object, message: str) -> None:
    wire = orjson.loads(encode_request(_record()))
    wire.update(v=2, raw=raw)
    with pytest.raises(RecordError, match=message):
        decode_request(orjson.dumps(wire))
