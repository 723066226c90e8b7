"""Redaction at ingest: keyed hashes for secret headers, query parameters and body fields,
and not one byte changed outside the redacted values."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shadowreplay.collector.redact as redact
from shadowreplay.collector.redact import Redactor
from shadowreplay.contract.config import DEFAULT_SECRET_HEADERS, RedactConfig

ENV = {"SHADOWREPLAY_REDACT_KEY": "k3y"}


def expected(value: bytes) -> str:
    return "redacted:hmac:" + hmac.new(b"k3y", value, hashlib.sha256).hexdigest()[:16]


def x(value: bytes) -> bytes:
    return expected(value).encode()


R = Redactor(RedactConfig(), ENV)


def test_keyed_hash_from_env() -> None:
    r = Redactor(RedactConfig(), ENV)
    assert r.value("Bearer x") == expected(b"Bearer x")
    assert r.header("authorization", "Bearer x") == expected(b"Bearer x")
    assert r.header("Accept", "a") == "a"
    other = Redactor(RedactConfig(), {"SHADOWREPLAY_REDACT_KEY": "other"})
    assert other.value("Bearer x") != r.value("Bearer x")


@pytest.mark.parametrize("name", [*DEFAULT_SECRET_HEADERS, "x-api-key", "X-AUTH-TOKEN", "x-csrf-token"])
def test_default_secret_headers(name: str) -> None:
    assert R.header(name, "s3cret") == expected(b"s3cret")


def test_referer_keeps_its_url_but_not_its_tokens() -> None:
    assert R.header("Referer", "https://a.example/cb?state=1&access_token=abc#x") == (
        "https://a.example/cb?state=1&access_token=" + expected(b"abc") + "#x"
    )
    assert R.header("Referer", "https://a.example/p?q=1") == "https://a.example/p?q=1"


# -- query strings: only the secret values change ------------------------------------------


@pytest.mark.parametrize(
    "target, secrets",
    [
        ("/a?x=1&token=t1&x=2&Token=t2", ["t1", "t2"]),  # repeats and order kept, any case
        ("/a?api_key=k&apikey=k2&b", ["k", "k2"]),
        ("/a?pass%77ord=p%20w&z", ["p w"]),  # name percent-decoded; value hashed decoded
        ("/a?user%5Bpassword%5D=p&user[token]=q", ["p", "q"]),  # nested names
        ("/s3/o?X-Amz-Credential=AK%2F1&X-Amz-Signature=ab&X-Amz-Date=1", ["AK/1", "ab"]),
        ("/a?q=token&tokens=1&csrf_token=2&a=%zz", []),  # values and other names are not secrets
        ("/caf\udce9?token=\udcff&\udce4=1", ["\udcff"]),  # bytes that are not UTF-8 stay as they are
    ],
)
def test_query_parameters(target: str, secrets: list[str]) -> None:
    out = R.target(target)
    expect = target
    for s in secrets:
        assert expected(s.encode("utf-8", "surrogateescape")) in out
    # Putting the secrets back gives the target byte for byte.
    restored = out
    for raw_value, s in zip(_raw_values(target, len(secrets)), secrets, strict=True):
        restored = restored.replace(expected(s.encode("utf-8", "surrogateescape")), raw_value, 1)
    assert restored == expect
    if not secrets:
        assert out is target


def _raw_values(target: str, n: int) -> list[str]:
    """The logged (still encoded) values of the first ``n`` secret parameters."""
    values = []
    for pair in target.split("?", 1)[1].split("&"):
        name, _, value = pair.partition("=")
        from urllib.parse import unquote

        plain = unquote(name).lower()
        if any(part in R._query.names for part in [plain, *plain.replace("]", "[").split("[")]):
            values.append(value)
    return values[:n]


def test_target_without_query_or_secret_is_untouched() -> None:
    for t in ("/a/b", "/a?b=1", "/token/x?y=token"):
        assert R.target(t) is t


# -- JSON bodies: scanned, never re-encoded ------------------------------------------------


def test_json_keeps_every_other_byte() -> None:
    body = (
        b'{ "id" : 123456789012345678901234567890, "f":1.50e+3,\n  "Password":"p\\u00e9",'
        b' "a": {"token": {"x": [1, 2]}, "note": "caf\\u00e9 \\"q\\""},'
        b' "password": "second", "list": [{"x": {"secret": 7}}], "tokens": "keep" }'
    )
    out = R.body(body)
    assert out == (
        b'{ "id" : 123456789012345678901234567890, "f":1.50e+3,\n  "Password":"' + x("pé".encode()) + b'",'
        b' "a": {"token": "' + x(b'{"x": [1, 2]}') + b'", "note": "caf\\u00e9 \\"q\\""},'
        b' "password": "' + x(b"second") + b'", "list": [{"x": {"secret": "' + x(b"7") + b'"}}], "tokens": "keep" }'
    )
    assert R.body(b'{"a": "no secrets"}') == b'{"a": "no secrets"}'


def test_json_that_is_not_utf8_is_redacted_too() -> None:
    # Bytes that are not UTF-8 (a latin-1 client) do not make a body skip redaction.
    body = b'{"name": "M\xfcller", "token": "t\xff", "n": 1}'
    assert R.body(body) == b'{"name": "M\xfcller", "token": "' + x(b"t\xff") + b'", "n": 1}'
    assert R.body(b"user=M%FCller&password=p%FF") == b"user=M%FCller&password=" + x(b"p\xff")


def test_json_key_names_are_unescaped_and_nested_names_match() -> None:
    assert R.body(b'{"pass\\u0077ord": "p"}') == b'{"pass\\u0077ord": "' + x(b"p") + b'"}'
    assert R.body(b'{"user[password]": "p", "auth.token": 1}') == (
        b'{"user[password]": "' + x(b"p") + b'", "auth.token": "' + x(b"1") + b'"}'
    )
    # Top-level arrays, and a value already redacted is left alone (idempotent).
    once = R.body(b'[{"token": "t"}, 2]')
    assert once == b'[{"token": "' + x(b"t") + b'"}, 2]' and R.body(once) == once


# A JSON document written with random spacing, escapes and duplicate keys, and the bytes
# the redactor must turn it into (written alongside, value by value).
SECRET_KEYS = ['"password"', '"Token"', '"pass\\u0077ord"', '"user[secret]"']
PLAIN_KEYS = ['"id"', '"tokens"', '"csrf_token"', '"n\\u00e4me"', '"a"']
space = st.sampled_from(["", " ", "\n  ", "\t"])
scalar = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["1.5e+10", "-0.25", "0", "true", "false", "null"]),
    st.text(max_size=8).flatmap(lambda s: st.booleans().map(lambda a: json.dumps(s, ensure_ascii=a))),
)


@st.composite
def document(draw: st.DrawFn, depth: int = 0) -> tuple[str, str]:
    kinds = ["object", "array"] if depth == 0 else ["scalar", "object", "array"] if depth < 3 else ["scalar"]
    kind = draw(st.sampled_from(kinds))
    if kind == "scalar":
        value = draw(scalar)
        return value, value
    items_in, items_out = [], []
    for _ in range(draw(st.integers(0, 4))):
        value_in, value_out = draw(document(depth + 1))
        s1, s2, s3 = draw(space), draw(space), draw(space)
        if kind == "array":
            items_in.append(f"{s1}{value_in}{s2}")
            items_out.append(f"{s1}{value_out}{s2}")
            continue
        key = draw(st.sampled_from(SECRET_KEYS + PLAIN_KEYS))
        if key in SECRET_KEYS:
            text = json.loads(value_in) if value_in.startswith('"') else None
            token = expected(text.encode() if isinstance(text, str) else value_in.encode())
            value_out = f'"{token}"'
        items_in.append(f"{s1}{key}{s2}:{s3}{value_in}")
        items_out.append(f"{s1}{key}{s2}:{s3}{value_out}")
    close = draw(space)
    o, c = ("{", "}") if kind == "object" else ("[", "]")
    return o + ",".join(items_in) + close + c, o + ",".join(items_out) + close + c


@settings(max_examples=300)
@given(doc=document())
def test_json_redaction_changes_only_the_secret_values(doc: tuple[str, str]) -> None:
    body_in, body_out = doc
    out = R.body(body_in.encode())
    assert out == body_out.encode()
    json.loads(out)  # still one valid JSON document


# -- form bodies ---------------------------------------------------------------------------


def test_form_bodies() -> None:
    r = Redactor(RedactConfig(body_fields=("password",)), ENV)
    assert r.body(b"user=al&password=hunter2&x=1") == b"user=al&password=" + x(b"hunter2") + b"&x=1"
    assert R.body(b"pass%77ord=a+b&user%5Bpassword%5D=c%21&next=%2F") == (
        b"pass%77ord=" + x(b"a b") + b"&user%5Bpassword%5D=" + x(b"c!") + b"&next=%2F"
    )
    assert R.body(b"q=password&tokens=1\r\n") == b"q=password&tokens=1\r\n"


# -- bodies that cannot be parsed ----------------------------------------------------------


def test_unparseable_bodies_that_may_hold_a_secret_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    dropped: list[str] = []
    r = Redactor(RedactConfig(), ENV, on_drop=dropped.append)
    with caplog.at_level(logging.WARNING, logger="shadowreplay.collector.redact"):
        assert r.body(b'{"password": "x", broken json') is None
        assert r.body(b"\x00\xff<password>hunter2</password>") is None
        assert r.body(b'--b\r\nContent-Disposition: form-data; name="token"\r\n\r\nt\r\n--b--') is None
    assert dropped == ["unparseable_secret"] * 3
    assert sum("dropped a request body" in m for m in caplog.messages) == 1  # then only counted
    # Names inside longer words are no field names: the body is kept.
    for body in (b"\x00\xffcsrf_tokens binary", b"<passwords/>", b"plain text"):
        assert r.body(body) == body
    assert dropped == ["unparseable_secret"] * 3


def test_config_lists_extra_and_keep() -> None:
    r = Redactor(RedactConfig(extra_headers=("X-Internal",), keep_headers=("cookie",), keep_body_fields=("token",),
                              extra_query_params=("session",), keep_query_params=("sig",)), ENV)
    assert r.header("X-Internal", "v") == expected(b"v") and r.header("Cookie", "c=1") == "c=1"
    assert r.body(b'{"token": 1, "password": 2}') == b'{"token": 1, "password": "' + x(b"2") + b'"}'
    assert r.target("/a?session=s&sig=1") == "/a?session=" + expected(b"s") + "&sig=1"
    off = Redactor(RedactConfig(headers=(), query_params=(), body_fields=()), ENV)
    assert not (off.headers or off.scans_bodies or off.scans_queries)
    assert off.body(b"password=x") == b"password=x" and off.target("/?token=1") == "/?token=1"


def test_random_key_when_env_unset_warns_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(redact, "_process_key", None)
    with caplog.at_level(logging.WARNING, logger="shadowreplay.collector.redact"):
        a = Redactor(RedactConfig(), {})
        b = Redactor(RedactConfig(), {})
    assert a.value("s") == b.value("s") and a.value("s").startswith("redacted:hmac:")
    assert sum("random key" in m for m in caplog.messages) == 1
