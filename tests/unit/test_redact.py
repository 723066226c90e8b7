"""Redaction at ingest: keyed hashes for configured headers and body fields."""

from __future__ import annotations

import hashlib
import hmac
import logging

import orjson
import pytest

import collector.redact as redact
from collector.redact import Redactor
from shadowreplay.config import RedactConfig

ENV = {"SHADOWREPLAY_REDACT_KEY": "k3y"}


def expected(value: bytes) -> str:
    return "redacted:hmac:" + hmac.new(b"k3y", value, hashlib.sha256).hexdigest()[:16]


def test_keyed_hash_from_env() -> None:
    r = Redactor(RedactConfig(), ENV)
    assert r.value("Bearer x") == expected(b"Bearer x")
    assert r.header("authorization", "Bearer x") == expected(b"Bearer x")
    assert r.header("Accept", "a") == "a"
    other = Redactor(RedactConfig(), {"SHADOWREPLAY_REDACT_KEY": "other"})
    assert other.value("Bearer x") != r.value("Bearer x")


def test_json_fields_at_any_depth_case_insensitive() -> None:
    r = Redactor(RedactConfig(body_fields=("password", "token")), ENV)
    body = b'{"a": 1, "Password": "p", "list": [{"x": {"token": 7}}], "tokens": "keep"}'
    out = orjson.loads(r.body(body))
    assert out["Password"] == expected(b"p") and out["list"][0]["x"]["token"] == expected(b"7")
    assert out["a"] == 1 and out["tokens"] == "keep"
    assert r.body(b'{"a": "no secrets"}') == b'{"a": "no secrets"}'  # untouched bytes


def test_form_bodies_and_other_bodies() -> None:
    r = Redactor(RedactConfig(body_fields=("password",)), ENV)
    assert r.body(b"user=al&password=hunter2&x=1") == b"user=al&password=" + expected(b"hunter2").encode() + b"&x=1"
    assert r.body(b"\x00\xffpassword binary") == b"\x00\xffpassword binary"
    assert r.body(b'{"password": broken json') == b'{"password": broken json'
    off = Redactor(RedactConfig(headers=(), body_fields=()), ENV)
    assert not off.active and off.body(b"password=x") == b"password=x"


def test_random_key_when_env_unset_warns_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(redact, "_process_key", None)
    with caplog.at_level(logging.WARNING, logger="collector.redact"):
        a = Redactor(RedactConfig(), {})
        b = Redactor(RedactConfig(), {})
    assert a.value("s") == b.value("s") and a.value("s").startswith("redacted:hmac:")
    assert sum("random key" in m for m in caplog.messages) == 1
