"""Line parsers and time parsers (collector/lines.py, stdlib only)."""

from __future__ import annotations

import pytest

from collector.lines import (
    LineError,
    parse_clf,
    parse_combined_line,
    parse_iso8601,
    parse_json_line,
    parse_ltsv_line,
    parse_msec,
    parse_time_auto,
    split_request_line,
)


@pytest.mark.parametrize(
    "value, ns",
    [
        ("10/Oct/2000:13:55:36 -0700", 971211336_000000000),
        ("[10/Oct/2000:13:55:36 -0700]", 971211336_000000000),
        ("10/Oct/2000:20:55:36 +0000", 971211336_000000000),
        ("10/Oct/2000:22:25:36 +0130", 971211336_000000000),
        ("10/Oct/2000:13:55:36.123456789 -0700", 971211336_123456789),
        ("29/Feb/2024:00:00:00 +0000", 1709164800_000000000),
    ],
)
def test_clf(value: str, ns: int) -> None:
    assert parse_clf(value) == ns
    assert parse_time_auto(value) == ns


@pytest.mark.parametrize("value", ["10/Foo/2000:13:55:36 -0700", "31/Feb/2000:13:55:36 +0000", "10/Oct/2000 13:55:36", 5, ""])
def test_bad_clf(value: object) -> None:
    with pytest.raises(LineError) as exc:
        parse_clf(value)
    assert exc.value.reason == "bad_time_field"


@pytest.mark.parametrize(
    "value, ns",
    [
        ("1464845619.123", 1464845619_123000000),
        ("1464845619.123450040", 1464845619_123450040),
        (1464845619, 1464845619_000000000),
        ("2016-06-02T05:33:39.123450040Z", 1464845619_123450040),
        ("2016-06-02T07:33:39+02:00", 1464845619_000000000),
    ],
)
def test_auto(value: object, ns: int) -> None:
    assert parse_time_auto(value) == ns


def test_msec_and_iso_are_exact() -> None:
    assert parse_msec("0.000000001") == 1
    assert parse_iso8601("1970-01-01T00:00:00.000000001+00:00") == 1


def test_ltsv() -> None:
    assert parse_ltsv_line("a:1\tb:x:y\tc:\n") == {"a": "1", "b": "x:y", "c": ""}
    for bad in ("", "nolabel", ":v"):
        with pytest.raises(LineError):
            parse_ltsv_line(bad)


def test_combined_and_common() -> None:
    common = '127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 304 -'
    rec = parse_combined_line(common)
    assert rec == {
        "remote_addr": "127.0.0.1",
        "remote_user": "-",
        "time_local": "10/Oct/2000:13:55:36 -0700",
        "request": "GET / HTTP/1.1",
        "status": "304",
        "body_bytes_sent": "-",
    }
    # nginx escapes '"' and bytes >= 0x7f as \xHH; Apache as \" and \\.
    nginx = r'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /q?s=\x22a\x22 HTTP/1.1" 200 5 "-" "ua \xC3\xA9"'
    rec = parse_combined_line(nginx)
    assert rec["request"] == 'GET /q?s="a" HTTP/1.1' and rec["http_user_agent"] == "ua é"
    apache = r'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "say \"hi\" \\o/"'
    assert parse_combined_line(apache)["http_user_agent"] == 'say "hi" \\o/'
    # Extra trailing fields (e.g. "$http_x_forwarded_for") are ignored.
    assert parse_combined_line(nginx + ' "9.9.9.9"')["remote_addr"] == "1.2.3.4"
    with pytest.raises(LineError):
        parse_combined_line("garbage")


def test_json_line() -> None:
    assert parse_json_line('{"a": 1}') == {"a": 1}
    for bad in ("[1]", "{", ""):
        with pytest.raises(LineError):
            parse_json_line(bad)


@pytest.mark.parametrize(
    "line, out",
    [
        ("GET /a?b HTTP/1.1", ("GET", "/a?b", "HTTP/1.1")),
        ("GET /", ("GET", "/", "")),
        ("GET /a b HTTP/1.1", ("GET", "/a b", "HTTP/1.1")),
        ("\x16\x03\x01", None),
        ("-", None),
        ("GET", None),
    ],
)
def test_request_line(line: str, out: object) -> None:
    assert split_request_line(line) == out
