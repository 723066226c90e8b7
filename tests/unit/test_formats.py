"""nginx JSON access-log records → RequestRecord."""

from __future__ import annotations

import dataclasses

import pytest

from collector.formats import NginxJsonFormat, make_format
from shadowreplay.config import FieldMap
from shadowreplay.errors import ConfigError, DecodeError
from shadowreplay.record import Origin, decode_request, encode_request, stable_id

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


FMT = NginxJsonFormat(FieldMap())


def test_full_record() -> None:
    r = FMT.to_request("nginx.access", TS, nginx())
    assert r.id == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    assert r.ts == TS and r.tag == "nginx.access"
    assert (r.method, r.target, r.scheme, r.host) == ("GET", "/search?q=a&q=b&z=1", "https", "shop.example.com")
    assert r.client == "10.1.2.3"  # never X-Forwarded-For
    assert r.headers == (("User-Agent", "curl/8.0"), ("X-Forwarded-For", "6.6.6.6"), ("X-Request-Id", "abc"))
    assert r.body is None
    assert r.origin == Origin(status=200, bytes=512, duration=0.004)
    assert decode_request(encode_request(r)) == r


def test_numbers_as_numbers() -> None:
    r = FMT.to_request("t", TS, nginx(status=404, body_bytes_sent=0, request_time=1.5))
    assert r.origin == Origin(status=404, bytes=0, duration=1.5)


def test_unreadable_numbers_become_absent() -> None:
    r = FMT.to_request("t", TS, nginx(status="-", body_bytes_sent="x", request_time="-"))
    assert r.origin is None
    r = FMT.to_request("t", TS, nginx(status="²", body_bytes_sent=True, request_time="0.1"))
    assert r.origin == Origin(status=None, bytes=None, duration=0.1)


def test_body_text_and_binary_survive() -> None:
    r = FMT.to_request("t", TS, nginx(request_method="POST", request_body='{"a": "é"}'))
    assert r.body == '{"a": "é"}'.encode()
    # Bytes that were not UTF-8 arrive surrogate-escaped from the decoder.
    raw = b"\x00\xff\xfebin"
    r = FMT.to_request("t", TS, nginx(request_body=raw.decode("utf-8", "surrogateescape")))
    assert r.body == raw
    assert FMT.to_request("t", TS, nginx(request_body="-")).body is None
    assert FMT.to_request("t", TS, nginx(request_body=b"\x01")).body == b"\x01"


def test_stable_id_without_request_id() -> None:
    rec = nginx(request_id="-")
    a = FMT.to_request("t", TS, rec)
    b = FMT.to_request("t", TS, dict(rec))
    assert a.id == b.id and len(a.id) == 24
    assert a.id == stable_id(TS, "t", "10.1.2.3", "GET", "shop.example.com", "/search?q=a&q=b&z=1", 200, 512)
    assert FMT.to_request("t", TS + 1, rec).id != a.id
    del rec["request_id"]
    assert FMT.to_request("t", TS, rec).id == a.id


def test_absent_optional_fields() -> None:
    r = FMT.to_request("t", TS, {"request_method": "HEAD", "request_uri": "/"})
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
        FMT.to_request("t", TS, nginx(**over))
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
    r = FMT.to_request("t", TS, rec)
    assert r.headers == (("Content-Type", "application/json"), ("X-B3-Traceid", "12"))
    assert r.header("content-type") == "application/json"


def test_custom_field_map() -> None:
    fields = FieldMap(method="verb", target="uri", client="peer", header_prefix="h_", request_id="rid")
    fmt = NginxJsonFormat(fields)
    r = fmt.to_request("t", TS, {"verb": "PUT", "uri": "/x", "peer": "::1", "h_accept": "*/*", "rid": "r1"})
    assert (r.method, r.target, r.client, r.headers, r.id) == ("PUT", "/x", "::1", (("Accept", "*/*"),), "r1")


def msec_format() -> NginxJsonFormat:
    return NginxJsonFormat(dataclasses.replace(FieldMap(), time="msec"))


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
    assert msec_format().to_request("t", TS, nginx(msec=value)).ts == ns


@pytest.mark.parametrize("value", ["soon", "", None, "-1", "1.2.3"])
def test_bad_msec_rejected(value: object) -> None:
    with pytest.raises(DecodeError) as exc:
        msec_format().to_request("t", TS, nginx(msec=value))
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
    fmt = NginxJsonFormat(dataclasses.replace(FieldMap(), time="time_iso8601"))
    assert fmt.to_request("t", TS, nginx(time_iso8601=value)).ts == ns


def test_bad_iso8601_rejected() -> None:
    fmt = NginxJsonFormat(dataclasses.replace(FieldMap(), time="time_iso8601"))
    with pytest.raises(DecodeError) as exc:
        fmt.to_request("t", TS, nginx(time_iso8601="02/Jun/2016:05:33:39 +0000"))
    assert exc.value.reason == "bad_time_field"


def test_make_format() -> None:
    assert isinstance(make_format("nginx_json", FieldMap()), NginxJsonFormat)
    with pytest.raises(ConfigError, match="ltsv"):
        make_format("ltsv", FieldMap())
