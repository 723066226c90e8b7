"""Access-log records → the RequestRecord on the bus."""

from __future__ import annotations

import dataclasses

import pytest

from shadowreplay.collector.formats import LogFormat, entry_id, make_format
from shadowreplay.collector.lines import LINE_ID_FIELD
from shadowreplay.contract.config import FieldMap
from shadowreplay.contract.errors import ConfigError, DecodeError
from shadowreplay.contract.record import Origin, RequestRecord, decode_request, encode_request, stable_id

TS = 1464845619_123450040


def nginx(**over: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "time_iso8601": "2016-06-02T05:33:39+00:00",
        "msec": "1464845619.123",
        "request_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "remote_addr": "10.1.2.3",
        "request_method": "GET",
        "request_uri": "/search?q=a&q=b&z=1",
        "server_protocol": "HTTP/1.1",
        "scheme": "https",
        "host": "shop.example.com",
        "status": "200",
        "body_bytes_sent": "512",
        "request_time": "0.004",
        "request_body": "",
        "http_user_agent": "curl/8.0",
        "http_x_forwarded_for": "6.6.6.6",
        "http_accept": "-",
        "http_x_request_id": "abc",
    }
    rec.update(over)
    return rec


FMT = make_format("nginx_json", FieldMap())


def request(fmt: object, tag: str, ts: int, rec: dict[object, object], frame: bytes | None = None,
            index: int = 0) -> RequestRecord:
    """The RequestRecord ``fmt`` puts on the bus for ``rec``."""
    return decode_request(fmt.to_bus(tag, ts, rec, frame, index)[1])  # type: ignore[attr-defined]


def test_full_record() -> None:
    r = request(FMT, "nginx.access", TS, nginx())
    assert r.id == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    assert r.ts == TS and r.tag == "nginx.access"
    assert (r.method, r.target, r.scheme, r.host) == ("GET", "/search?q=a&q=b&z=1", "https", "shop.example.com")
    assert r.client == "10.1.2.3"  # never X-Forwarded-For
    assert r.headers == (("User-Agent", "curl/8.0"), ("X-Forwarded-For", "6.6.6.6"), ("X-Request-Id", "abc"))
    assert r.body is None
    assert r.origin == Origin(status=200, bytes=512, duration=0.004)
    assert decode_request(encode_request(r)) == r


def test_numbers_as_numbers() -> None:
    r = request(FMT, "t", TS, nginx(status=404, body_bytes_sent=0, request_time=1.5))
    assert r.origin == Origin(status=404, bytes=0, duration=1.5)


def test_unreadable_numbers_become_absent() -> None:
    r = request(FMT, "t", TS, nginx(status="-", body_bytes_sent="x", request_time="-"))
    assert r.origin is None
    r = request(FMT, "t", TS, nginx(status="²", body_bytes_sent=True, request_time="0.1"))
    assert r.origin == Origin(status=None, bytes=None, duration=0.1)


def test_body_text_and_binary_survive() -> None:
    r = request(FMT, "t", TS, nginx(request_method="POST", request_body='{"a": "é"}'))
    assert r.body == '{"a": "é"}'.encode()
    # Bytes that were not UTF-8 arrive surrogate-escaped from the decoder.
    raw = b"\x00\xff\xfebin"
    r = request(FMT, "t", TS, nginx(request_body=raw.decode("utf-8", "surrogateescape")))
    assert r.body == raw
    assert request(FMT, "t", TS, nginx(request_body="-")).body is None
    assert request(FMT, "t", TS, nginx(request_body=b"\x01")).body == b"\x01"


def test_stable_id_without_request_id() -> None:
    rec = nginx(request_id="-")
    a = request(FMT, "t", TS, rec)
    b = request(FMT, "t", TS, dict(rec))
    assert a.id == b.id and len(a.id) == 24
    assert a.id == stable_id(TS, "t", "10.1.2.3", "GET", "shop.example.com", "/search?q=a&q=b&z=1", 200, 512)
    assert request(FMT, "t", TS + 1, rec).id != a.id
    del rec["request_id"]
    assert request(FMT, "t", TS, rec).id == a.id


def test_absent_optional_fields() -> None:
    r = request(FMT, "t", TS, {"request_method": "HEAD", "request_uri": "/"})
    assert (r.scheme, r.host, r.client, r.headers, r.body, r.origin) == ("http", "", None, (), None, None)


@pytest.mark.parametrize(
    "over, reason",
    [
        ({"request_method": "-"}, "missing_method"),
        ({"request_method": ""}, "missing_method"),
        ({"request_method": None}, "missing_method"),
        ({"request_uri": ""}, "missing_target"),
        ({"request_uri": 7}, "missing_target"),
    ],
)
def test_records_without_a_request_are_rejected(over: dict[str, object], reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        request(FMT, "t", TS, nginx(**over))
    assert exc.value.reason == reason and not exc.value.fatal


def test_header_names_are_canonical_and_odd_values_handled() -> None:
    rec = {
        "request_method": "GET",
        "request_uri": "/",
        "http_content_type": "application/json",
        "http_x_b3_traceid": 12,
        "http_cookie": "",
        "http_": "no name",
        "http_dnt": None,
        5: "not a key we know",
    }
    r = request(FMT, "t", TS, rec)
    assert r.headers == (("Content-Type", "application/json"), ("X-B3-Traceid", "12"))
    assert r.header("content-type") == "application/json"


def test_custom_field_map() -> None:
    fields = FieldMap(method="verb", target="uri", client="peer", header_prefix="h_", request_id="rid")
    fmt = make_format("nginx_json", fields)
    r = request(fmt, "t", TS, {"verb": "PUT", "uri": "/x", "peer": "::1", "h_accept": "*/*", "rid": "r1"})
    assert (r.method, r.target, r.client, r.headers, r.id) == ("PUT", "/x", "::1", (("Accept", "*/*"),), "r1")


def msec_format() -> LogFormat:
    return make_format("nginx_json", dataclasses.replace(FieldMap(), time="msec"))


@pytest.mark.parametrize(
    "value, ns",
    [
        ("1464845619.123", 1464845619_123000000),
        ("1464845619", 1464845619_000000000),
        (1464845619, 1464845619_000000000),
        (1464845619.123, 1464845619_123000000),
        ("1464845619.1234567891", 1464845619_123456789),
    ],
)
def test_msec_time_is_exact(value: object, ns: int) -> None:
    assert request(msec_format(), "t", TS, nginx(msec=value)).ts == ns


@pytest.mark.parametrize("value", ["soon", "", None, "-1", "1.2.3"])
def test_bad_msec_rejected(value: object) -> None:
    with pytest.raises(DecodeError) as exc:
        request(msec_format(), "t", TS, nginx(msec=value))
    assert exc.value.reason == "bad_time_field"


@pytest.mark.parametrize(
    "value, ns",
    [
        ("2016-06-02T05:33:39+00:00", 1464845619_000000000),
        ("2016-06-02T07:33:39+02:00", 1464845619_000000000),
        ("2016-06-02T05:33:39.123450040Z", 1464845619_123450040),
        ("2016-06-02T05:33:39.5", 1464845619_500000000),
    ],
)
def test_iso8601_time(value: str, ns: int) -> None:
    fmt = make_format("nginx_json", dataclasses.replace(FieldMap(), time="time_iso8601"))
    assert request(fmt, "t", TS, nginx(time_iso8601=value)).ts == ns


def test_bad_iso8601_rejected() -> None:
    fmt = make_format("nginx_json", dataclasses.replace(FieldMap(), time="time_iso8601"))
    with pytest.raises(DecodeError) as exc:
        request(fmt, "t", TS, nginx(time_iso8601="02/Jun/2016:05:33:39 +0000"))
    assert exc.value.reason == "bad_time_field"


def test_make_format() -> None:
    for name in ("nginx_json", "ltsv", "combined"):
        assert make_format(name, FieldMap()).name == name  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="collector.escapes"):
        make_format("ltsv", FieldMap(), escapes="raw")
    with pytest.raises(ConfigError, match="collector.fields.time_format"):
        make_format("ltsv", FieldMap(time_format="unix"))
    with pytest.raises(ConfigError, match="ltsv"):
        make_format("w3c", FieldMap())


# -- to_bus: the layouts compiled agree with to_bus_plain --------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shadowreplay.collector.lines import parse_clf  # noqa: E402
from shadowreplay.contract.config import RedactConfig  # noqa: E402

_text_values = st.one_of(
    st.sampled_from([
        "", "-", "GET", "/a?b=1&b=2", "10.0.0.1", "200", "0.004", "1e3", "nan", "²", " 7", "GÉT",
        "/a?token=t&x=1", "https://r.example/?access_token=a", '{"password": 1}', "password=x&b=2", "\x00password",
    ]),
    st.text(max_size=12),
    # Bytes that are not UTF-8, as the decoder and the line parsers hand them over.
    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
_values = st.one_of(
    _text_values,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_keys = st.sampled_from(
    [
        "request_method", "request_uri", "remote_addr", "host", "scheme", "status", "body_bytes_sent",
        "request_time", "request_body", "request_id", "request", "msec", "http_user_agent",
        "http_authorization", "http_cookie", "http_x_forwarded_for", "http_", "log", "ua",
        "http_referer", "shadowreplay_line_id",
    ]
)
_records = st.dictionaries(_keys, _values, max_size=14).map(
    lambda d: {"request_method": "GET", "request_uri": "/x", **d} if len(d) % 3 == 0 else d
)
_FORMATS = [
    make_format("nginx_json", FieldMap()),
    make_format("nginx_json", FieldMap(), RedactConfig()),
    make_format("ltsv", FieldMap(headers=("User-Agent=ua",)), RedactConfig(body_fields=("password",))),
    make_format("combined", FieldMap(time="msec"), RedactConfig(headers=("X-Forwarded-For",))),
]


def _agree(fmt: object, tag: str, ts: int, rec: dict[object, object], frame: bytes | None = None) -> None:
    """``to_bus`` (compiled per layout) and ``to_bus_plain`` give the same bytes, key and
    time, or refuse with the same reason; what they publish is a request exactly as
    ``encode_request`` writes it."""
    try:
        expected = fmt.to_bus_plain(tag, ts, rec, frame, 3)  # type: ignore[attr-defined]
    except DecodeError as exc:
        assert exc.fatal is False and exc.reason
        with pytest.raises(DecodeError) as again:
            fmt.to_bus(tag, ts, rec, frame, 3)  # type: ignore[attr-defined]
        assert again.value.reason == exc.reason
        return
    # Never refused for its encoding: bytes that are not UTF-8 travel in "raw".
    assert fmt.to_bus(tag, ts, rec, frame, 3) == expected  # type: ignore[attr-defined]
    key, data, bus_ts = expected
    record = decode_request(data)
    assert data == encode_request(record)
    assert key == record.partition_key()
    assert bus_ts == record.ts


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rec=_records,
    ts=st.integers(min_value=0, max_value=2**63 - 1),
    fmt_index=st.integers(0, len(_FORMATS) - 1),
    frame=st.one_of(st.none(), st.binary(min_size=1, max_size=10)),
)
def test_to_bus_agrees_with_to_bus_plain(rec: dict[object, object], ts: int, fmt_index: int, frame: bytes | None) -> None:
    _agree(_FORMATS[fmt_index], "t.tag", ts, rec, frame)


def test_to_bus_agrees_on_realistic_records() -> None:
    from shadowreplay.demo.generate import generate

    recs = generate()[:300] + [nginx(), nginx(request_body='{"password": "x", "a": [1]}', http_cookie="s=1")]
    for rec in recs:
        for fmt in _FORMATS:
            _agree(fmt, "nginx.access", TS, rec)


# -- LTSV and combined --------------------------------------------------------------------


def test_ltsv_record_with_explicit_headers() -> None:
    fields = FieldMap(
        method="method", target="uri", client="host", host="vhost", status="status", bytes="size",
        duration="reqtime", time="time", headers=("User-Agent=ua", "Referer=referer"), header_prefix="",
    )
    fmt = make_format("ltsv", fields)
    line = "time:10/Oct/2000:13:55:36 -0700\thost:192.0.2.7\tmethod:POST\turi:/a?x=1\tstatus:201\tsize:12\treqtime:0.25\tua:curl\treferer:-\tvhost:api.example"
    from shadowreplay.collector.lines import parse_ltsv_line

    r = request(fmt, "t", TS, parse_ltsv_line(line))
    assert (r.method, r.target, r.client, r.host) == ("POST", "/a?x=1", "192.0.2.7", "api.example")
    assert r.ts == 971211336 * 10**9
    assert r.headers == (("User-Agent", "curl"),)
    assert r.origin == Origin(201, 12, 0.25)
    # The same line, unparsed in Fluent Bit's "log" field, maps the same.
    assert request(fmt, "t", TS, {"log": line}) == r


COMBINED = (
    '203.0.113.9 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif?a=1&a=2 HTTP/1.0" 200 2326 '
    '"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"'
)


def test_combined_line_via_log_field() -> None:
    fmt = make_format("combined", FieldMap(time="time_local"))
    r = request(fmt, "apache", TS, {"log": COMBINED})
    assert (r.method, r.target, r.client) == ("GET", "/apache_pb.gif?a=1&a=2", "203.0.113.9")
    assert r.ts == parse_clf("10/Oct/2000:13:55:36 -0700") == 971211336 * 10**9
    assert r.headers == (("Referer", "http://www.example.com/start.html"), ("User-Agent", "Mozilla/4.08 [en] (Win98; I ;Nav)"))
    assert r.origin == Origin(200, 2326, None) and r.body is None
    key, data, ts = fmt.to_bus("apache", TS, {"message": COMBINED})
    assert decode_request(data) == r and key == b"203.0.113.9"


def test_combined_garbage_and_bad_request_lines() -> None:
    fmt = make_format("combined", FieldMap())
    with pytest.raises(DecodeError) as exc:
        request(fmt, "t", TS, {"log": "not a log line"})
    assert exc.value.reason == "bad_combined"
    bad = '1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "\\x16\\x03\\x01" 400 0 "-" "-"'
    with pytest.raises(DecodeError) as exc:
        request(fmt, "t", TS, {"log": bad})
    assert exc.value.reason == "bad_request_line"  # a TLS ClientHello on port 80 is no request
    empty = '1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "-" 400 0 "-" "-"'  # nginx: connection closed early
    with pytest.raises(DecodeError) as exc:
        request(fmt, "t", TS, {"log": empty})
    assert exc.value.reason == "missing_method"


def test_request_line_fallback_for_nginx_json() -> None:
    rec = {"request": "DELETE /items/7?force=1 HTTP/1.1", "remote_addr": "10.0.0.1"}
    r = request(FMT, "t", TS, rec)
    assert (r.method, r.target) == ("DELETE", "/items/7?force=1")


def test_raw_json_line_in_log_field() -> None:
    import json

    line = json.dumps(nginx())
    assert request(FMT, "t", TS, {"log": line}) == request(FMT, "t", TS, nginx())
    with pytest.raises(DecodeError) as exc:
        request(FMT, "t", TS, {"log": "{oops"})
    assert exc.value.reason == "bad_json"


# -- redaction and the trusted client address ---------------------------------------------


def test_secrets_never_reach_the_bus() -> None:
    fmt = make_format("nginx_json", FieldMap(), RedactConfig())
    rec = nginx(
        request_method="POST",
        http_authorization="Bearer s3cr3t-token",
        http_cookie="session=abcdef",
        http_proxy_authorization="Basic Zm9vOmJhcg==",
        request_body='{"user": "al", "password": "hunter2", "nested": {"items": [{"token": "tok-1"}]}}',
    )
    key, data, _ = fmt.to_bus("t", TS, rec)
    for secret in (b"s3cr3t-token", b"abcdef", b"Zm9vOmJhcg", b"hunter2", b"tok-1"):
        assert secret not in data
    r = decode_request(data)
    auth = r.header("Authorization")
    assert auth is not None and auth.startswith("redacted:hmac:") and len(auth) == len("redacted:hmac:") + 16
    import orjson

    body = orjson.loads(r.body or b"")
    assert body["user"] == "al" and body["password"].startswith("redacted:hmac:")
    assert body["nested"]["items"][0]["token"].startswith("redacted:hmac:")
    assert r == request(fmt, "t", TS, rec)
    assert r.header("User-Agent") == "curl/8.0"  # others untouched


def test_client_is_the_trusted_field_never_x_forwarded_for() -> None:
    rec = nginx(http_x_forwarded_for="6.6.6.6, 7.7.7.7", remote_addr="10.9.8.7")
    for fmt in (FMT, make_format("combined", FieldMap())):
        r = request(fmt, "t", TS, rec)
        assert r.client == "10.9.8.7" and r.partition_key() == b"10.9.8.7"
    # No trusted field in the record: no client at all, still not the header.
    rec.pop("remote_addr")
    r = request(FMT, "t", TS, rec)
    assert r.client is None and r.header("X-Forwarded-For") == "6.6.6.6, 7.7.7.7"
    # Combined lines put the connection's address first; a spoofed XFF stays a header.
    line = COMBINED.replace("203.0.113.9", "198.51.100.1")
    assert request(make_format("combined", FieldMap()), "t", TS, {"log": line}).client == "198.51.100.1"


def test_to_bus_slow_path_past_the_layout_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import shadowreplay.collector.formats as formats

    monkeypatch.setattr(formats, "_MAX_LAYOUTS", 2)
    fmt = make_format("nginx_json", FieldMap())
    for i in range(6):
        rec = nginx(**{f"http_x_extra_{i}": str(i)})
        _agree(fmt, "t", TS, rec)
    assert len(fmt._compiled) == 2  # type: ignore[attr-defined]


def test_record_keys_cannot_inject_code() -> None:
    evil = "http_x'), __import__('os')._exit(3), ('"
    rec = nginx(**{evil: "v", "http_a\\'\n\"b": "w"})
    _agree(FMT, "t", TS, rec)
    key, data, _ = FMT.to_bus("t", TS, rec)
    names = [k for k, _ in decode_request(data).headers]
    assert "X'), --Import--('os').-Exit(3), ('" in names and "A\\'\n\"b" in names
    _agree(FMT, "t", TS, nginx(**{"http_\udcff": "z"}))


# -- bytes, ids, rejects (issue 17) --------------------------------------------------------


def test_bytes_that_are_not_utf8_are_published_not_refused() -> None:
    # The collector hands over what the client sent with invalid UTF-8 surrogate-escaped.
    rec = nginx(
        request_uri="/caf\udce9?q=\udcff",
        host="shop\udce4.example",
        http_user_agent="Mozilla/5.0 (\udce4rger)",
        http_referer="https://r.example/\udcc3",
        request_body="\udcff\udcfe",
    )
    for fmt in _FORMATS:
        key, data, _ = fmt.to_bus("t", TS, rec, b"cchunk", 0)
        r = decode_request(data)
        assert r == request(fmt, "t", TS, rec, b"cchunk", 0)
        assert r.target.encode("utf-8", "surrogateescape") == b"/caf\xe9?q=\xff"
        assert r.host.encode("utf-8", "surrogateescape") == b"shop\xe4.example"
        assert (r.header("User-Agent") or "").encode("utf-8", "surrogateescape") == b"Mozilla/5.0 (\xe4rger)"
        assert r.body == b"\xff\xfe"
        assert b'"v":2' in data and b'"raw":' in data


def test_a_line_that_cannot_be_a_request_is_rejected_with_its_reason() -> None:
    cases = [
        (nginx(request_method="G\u00c9T"), "bad_method"),
        (nginx(request_method="\udcc7ET"), "bad_method"),
        ({"request": "\x16\x03\x01\x02"}, "bad_request_line"),
        ({"request": "-", "remote_addr": "1.2.3.4"}, "missing_method"),
        ({"request_method": "GET"}, "missing_target"),
    ]
    for rec, reason in cases:
        for call in (FMT.to_bus_plain, FMT.to_bus):
            with pytest.raises(DecodeError) as exc:
                call("t", TS, rec)
            assert exc.value.reason == reason, rec
    fmt = make_format("nginx_json", FieldMap(time="msec"))
    with pytest.raises(DecodeError) as exc:
        fmt.to_bus("t", TS, nginx(msec="yesterday"))
    assert exc.value.reason == "bad_time_field"  # never stamped with the ingest time


def test_identical_lines_get_their_own_ids_and_resends_the_same() -> None:
    fmt = make_format("combined", FieldMap())
    rec = {"log": COMBINED}
    ids = [decode_request(fmt.to_bus("t", TS, dict(rec), b"cchunk-1", i)[1]).id for i in range(3)]
    assert len(set(ids)) == 3  # same line three times in a chunk: three ids
    again = [decode_request(fmt.to_bus("t", TS, dict(rec), b"cchunk-1", i)[1]).id for i in range(3)]
    assert again == ids  # the chunk re-sent: the same ids, so duplicates stay detectable
    other = decode_request(fmt.to_bus("t", TS, dict(rec), b"cchunk-2", 0)[1]).id
    assert other not in ids
    assert ids[0] == entry_id("t", b"cchunk-1", 0) and len(ids[0]) == 24
    # The tail's line id wins over the position; a logged request id wins over both.
    with_line = fmt.to_bus("t", TS, {"log": COMBINED, LINE_ID_FIELD: "ab" * 12}, b"cchunk-1", 0)[1]
    assert decode_request(with_line).id == "ab" * 12
    assert decode_request(FMT.to_bus("t", TS, nginx(**{LINE_ID_FIELD: "x"}), b"c", 0)[1]).id == nginx()["request_id"]
    # A logged id that is not text (bytes that are not UTF-8) is not used.
    assert decode_request(FMT.to_bus("t", TS, nginx(request_id="\udcff"), b"c", 5)[1]).id == entry_id("t", b"c", 5)


def test_query_and_referer_secrets_are_redacted_on_both_paths() -> None:
    fmt = make_format("nginx_json", FieldMap(), RedactConfig())
    rec = nginx(request_uri="/cb?b=2&access_token=AT&b=1&api_key=K", http_referer="https://r.example/?token=T&q=1")
    key, data, _ = fmt.to_bus("t", TS, rec)
    for secret in (b"=AT", b"=K&", b"=K\"", b"token=T&"):
        assert secret not in data
    r = decode_request(data)
    assert r == request(fmt, "t", TS, rec)
    assert r.target.startswith("/cb?b=2&access_token=redacted:hmac:") and "&b=1&api_key=redacted:hmac:" in r.target
    assert (r.header("Referer") or "").startswith("https://r.example/?token=redacted:hmac:")


def test_an_unparseable_body_with_a_secret_is_dropped_and_counted() -> None:
    dropped: list[str] = []
    fmt = make_format("nginx_json", FieldMap(), RedactConfig(), on_body_dropped=dropped.append)
    rec = nginx(request_method="POST", request_body='{"password": "hunter2", oops')
    key, data, _ = fmt.to_bus("t", TS, rec)
    assert b"hunter2" not in data and decode_request(data).body is None
    assert request(fmt, "t", TS, rec).body is None
    assert dropped == ["unparseable_secret", "unparseable_secret"]


def test_raw_ltsv_and_combined_lines_decode_their_escapes() -> None:
    ltsv = make_format("ltsv", FieldMap(time="msec"))
    line = "msec:1464845619.123\trequest_method:POST\trequest_uri:/a\\x22b\trequest_body:{\\x22a\\x22:\\x22b\\x22}"
    r = request(ltsv, "t", TS, {"log": line})
    assert r.target == '/a"b' and r.body == b'{"a":"b"}'
    keep = make_format("ltsv", FieldMap(time="msec"), escapes="keep")
    assert request(keep, "t", TS, {"log": line}).body == b"{\\x22a\\x22:\\x22b\\x22}"


_any_text = st.binary(max_size=24).map(lambda b: b.decode("utf-8", "surrogateescape"))


@settings(max_examples=300, deadline=None)
@given(target=_any_text, host=_any_text, agent=_any_text, referer=_any_text, body=st.binary(max_size=24),
       fmt_index=st.integers(0, len(_FORMATS) - 1))
def test_any_bytes_reach_the_bus_exactly(target: str, host: str, agent: str, referer: str, body: bytes, fmt_index: int) -> None:
    rec = nginx(request_uri="/" + target, host=host, http_user_agent=agent, http_referer=referer,
                request_body=body.decode("utf-8", "surrogateescape"), request_method="PUT")
    fmt = _FORMATS[fmt_index]
    _agree(fmt, "t", TS, rec, b"cx")
    r = decode_request(fmt.to_bus("t", TS, rec, b"cx", 0)[1])
    if fmt_index == 0:  # no redaction configured: every byte as logged
        assert r.target.encode("utf-8", "surrogateescape") == b"/" + target.encode("utf-8", "surrogateescape")
        assert r.host == (host if host not in ("", "-") else "")
        assert r.header("User-Agent") == (agent if agent not in ("", "-") else None)
        assert r.body == (body if body not in (b"", b"-") else None)
