"""Redaction at ingest: secrets in headers and bodies become keyed hashes before the bus.

A redacted value reads ``redacted:hmac:<first 16 hex of HMAC-SHA256(key, value)>``: equal
secrets still compare equal (useful for grouping, useless for replaying), and without the
key the hash cannot be brute-forced from a short password. The key comes from the
environment variable named by ``collector.redact.key_env``; when it is unset a random key
is drawn once per process (and a warning says so once), so hashes differ between
collector processes and restarts.

Bodies: JSON bodies are parsed and every object member whose name is listed (at any
depth, case-insensitively) is replaced; a form-encoded body (``a=1&password=x``) has the
listed parameters replaced. Other bodies pass unchanged. Bodies are only parsed when one
of the names occurs in them, so the common case costs one substring scan.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from shadowreplay.config import RedactConfig

log = logging.getLogger(__name__)

PREFIX = "redacted:hmac:"

_process_key: bytes | None = None


def _random_process_key(env_name: str) -> bytes:
    global _process_key  # one random key per process, by design (see module docstring)
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
        log.warning(
            "redaction key: environment variable %s is not set; using a random key for this process "
            "(redacted hashes will differ between processes and restarts)",
            env_name or "(none configured)",
        )
    return _process_key


class Redactor:
    """Applies one ``RedactConfig``. Cheap to call on every record."""

    def __init__(self, config: RedactConfig, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        secret = env.get(config.key_env, "") if config.key_env else ""
        self._key = secret.encode("utf-8", "surrogateescape") if secret else _random_process_key(config.key_env)
        self.headers = frozenset(h.lower() for h in config.headers)
        self._fields = frozenset(f.lower() for f in config.body_fields)
        self._needles = tuple(f.lower().encode() for f in config.body_fields)
        self._form = (
            re.compile(
                rb"(?i)(^|&)(" + b"|".join(re.escape(f) for f in self._needles) + rb")=([^&]*)"
            )
            if self._needles
            else None
        )

    @property
    def active(self) -> bool:
        """Whether anything is configured at all."""
        return bool(self.headers or self._fields)

    def value(self, text: str | bytes) -> str:
        """The redacted form of one secret."""
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        return PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()[:16]

    def header(self, name: str, value: str) -> str:
        """``value`` unless header ``name`` is redacted."""
        return self.value(value) if name.lower() in self.headers else value

    def body(self, body: bytes) -> bytes:
        """``body`` with the configured fields redacted (JSON or form-encoded)."""
        if not self._needles:
            return body
        lower = body.lower()
        for needle in self._needles:
            if needle in lower:
                break
        else:
            return body
        start = body.lstrip()[:1]
        if start in (b"{", b"["):
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                pass
            else:
                changed, doc = self._walk(doc)
                return orjson.dumps(doc) if changed else body
        if self._form is not None and b"=" in body:
            return self._form.sub(lambda m: m.group(1) + m.group(2) + b"=" + self.value(m.group(3)).encode(), body)
        return body

    def _walk(self, node: Any) -> tuple[bool, Any]:
        if isinstance(node, dict):
            changed = False
            out: dict[str, Any] = {}
            for k, v in node.items():
                if k.lower() in self._fields and not (isinstance(v, str) and v.startswith(PREFIX)):
                    out[k] = self.value(v if isinstance(v, str) else orjson.dumps(v))
                    changed = True
                else:
                    c, out[k] = self._walk(v)
                    changed = changed or c
            return changed, out
        if isinstance(node, list):
            changed = False
            items = []
            for v in node:
                c, v = self._walk(v)
                items.append(v)
                changed = changed or c
            return changed, items
        return False, node
