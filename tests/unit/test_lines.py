"""Line parsers and time parsers (collector/lines.py, stdlib only)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowreplay.collector.lines import (
    ESCAPES_KEEP,
    LineError,
    line_parser,
    unescape,
    parse_clf,
    parse_combined_line,
    parse_iso8601,
    parse_json_line,
    parse_ltsv_line,
    TIME_PARSERS,
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


@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), "Infinity", "1e999", "-1", "9" * 20, 2**62, -1, True]
)
def test_msec_that_is_no_time_is_a_line_error(value: object) -> None:
    # A msgpack float can be infinite, a number can be past int64 nanoseconds: refused with
    # the line's reason, never an OverflowError (or a time the bus cannot carry).
    with pytest.raises(LineError):
        TIME_PARSERS["msec"](value)


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


# -- escapes: what nginx and Apache write, undone byte for byte ------------------------------
#
# Reference escapers written from the servers' rules (nginx ngx_http_log_escape and
# ngx_escape_json, Apache ap_escape_logitem); tests/integration/test_ingest_real.py runs
# the real servers.


def nginx_default_escape(data: bytes) -> bytes:
    """nginx log_format without escape=: '"', '\\', bytes < 0x20 and >= 0x7F as \\xHH."""
    return b"".join(b"\\x%02X" % b if b < 0x20 or b in (0x22, 0x5C) or b >= 0x7F else bytes((b,)) for b in data)


def nginx_json_escape(data: bytes) -> bytes:
    """nginx escape=json: \\" \\\\ and short forms, other bytes < 0x20 as \\u00XX, the rest raw."""
    short = {0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x08: b"\\b", 0x0C: b"\\f"}
    return b"".join(short.get(b) or (b"\\u%04x" % b if b < 0x20 else bytes((b,))) for b in data)


def apache_escape(data: bytes) -> bytes:
    """ap_escape_logitem: not printable (C locale), '"' and '\\' escaped; \\b \\n \\r \\t \\v short."""
    short = {0x08: b"\\b", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x0B: b"\\v", 0x5C: b"\\\\", 0x22: b'\\"'}
    return b"".join(
        short.get(b) or (b"\\x%02x" % b if b < 0x20 or b >= 0x7F else bytes((b,))) for b in data
    )


ESCAPERS = [nginx_default_escape, nginx_json_escape, apache_escape]


def as_logged(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # as the tail reads a line


def as_bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("escape", ESCAPERS, ids=lambda f: f.__name__)
@given(data=st.binary(max_size=200))
def test_unescape_undoes_every_server_escaping(escape: Callable[[bytes], bytes], data: bytes) -> None:
    assert as_bytes(unescape(as_logged(escape(data)))) == data


@given(
    escape=st.sampled_from(ESCAPERS),
    request=st.binary(max_size=60),
    referer=st.binary(max_size=60),
    agent=st.binary(max_size=60),
)
def test_combined_lines_give_back_the_bytes(escape: Callable[[bytes], bytes], request: bytes, referer: bytes, agent: bytes) -> None:
    line = (
        b'203.0.113.9 - - [10/Oct/2000:13:55:36 -0700] "' + escape(request) + b'" 200 17 "'
        + escape(referer) + b'" "' + escape(agent) + b'"'
    )
    rec = parse_combined_line(as_logged(line))
    assert as_bytes(rec["request"]) == request
    assert as_bytes(rec["http_referer"]) == referer and as_bytes(rec["http_user_agent"]) == agent


@given(body=st.binary(max_size=300), agent=st.binary(max_size=60))
def test_ltsv_with_nginx_default_escaping_gives_back_the_bytes(body: bytes, agent: bytes) -> None:
    # docs/ingest.md's LTSV log_format has no escape=: nginx's default escaping (a tab is \x09).
    line = b"msec:1.5\trequest_body:" + nginx_default_escape(body) + b"\thttp_user_agent:" + nginx_default_escape(agent)
    rec = parse_ltsv_line(as_logged(line))
    assert as_bytes(rec["request_body"]) == body and as_bytes(rec["http_user_agent"]) == agent


def test_the_issue_bodies_arrive_whole() -> None:
    # A 9-byte JSON body and a 256-byte binary body, as nginx writes them without escape=.
    small = b'{"a":"b"}'
    logged = nginx_default_escape(small)
    assert logged == b'{\\x22a\\x22:\\x22b\\x22}' and len(logged) == 21
    assert as_bytes(parse_ltsv_line(as_logged(b"request_body:" + logged))["request_body"]) == small
    binary = bytes(range(256))
    rec = parse_ltsv_line(as_logged(b"request_body:" + nginx_default_escape(binary)))
    assert len(as_bytes(rec["request_body"])) == 256 and as_bytes(rec["request_body"]) == binary


def test_escapes_keep_takes_values_as_written() -> None:
    # nginx escape=none: a backslash is data.
    assert parse_ltsv_line("ua:a\\x41b", ESCAPES_KEEP) == {"ua": "a\\x41b"}
    line = r'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /a\x41 HTTP/1.1" 200 5 "-" "x\\y"'
    assert parse_combined_line(line, ESCAPES_KEEP)["request"] == "GET /a\\x41 HTTP/1.1"
    assert line_parser("combined", ESCAPES_KEEP)(line)["http_user_agent"] == "x\\\\y"
    assert line_parser("combined")(line)["http_user_agent"] == "x\\y"
    with pytest.raises(ValueError):
        line_parser("ltsv", "sometimes")


def test_unknown_escapes_and_json_unicode() -> None:
    assert unescape("a\\qb\\") == "a\\qb\\"  # not an escape: kept as written
    assert unescape("\\u00e9\\ud83d\\ude00") == "é😀"
    assert unescape("\\ud800x") == "\\ud800x"  # a lone surrogate stands for no character


def test_json_line_written_without_escape_json() -> None:
    # log_format shadow '{"ua":"$http_user_agent"}' (no escape=json): nginx's \xHH escapes.
    line = as_logged(b'{"ua":"say \\x22hi\\x22 \\xC3\\xA9 \\xE4 \\x5C","n":"1"}')
    assert parse_json_line(line) == {"ua": 'say "hi" é \udce4 \\', "n": "1"}
    with pytest.raises(LineError):
        parse_json_line('{"a": "\\x2"}')
