"""Redaction at ingest: secrets in headers, query strings and bodies become keyed hashes
before the bus, and nothing else changes.

A redacted value reads ``redacted:hmac:<first 16 hex of HMAC-SHA256(key, value)>``: equal
secrets still compare equal (useful for grouping, useless for replaying), and without the
key the hash cannot be brute-forced from a short password. The key comes from the
environment variable named by ``collector.redact.key_env``; when it is unset a random key
is drawn once per process (and a warning says so once), so hashes differ between
collector processes and restarts.

What is redacted (the lists and how to change them: ``RedactConfig``, docs/ingest.md):

* headers by name, the whole value; a ``Referer`` keeps its URL but its query string is
  redacted like the target's;
* query parameters of the target: only the value bytes of a matching parameter change,
  the rest of the target stays byte for byte (order, repeats, percent-escapes);
* bodies, at the byte level: a JSON body is *scanned*, not re-encoded, and only the value
  of a matching member (at any depth) is replaced, so numbers, whitespace, escapes and
  duplicate keys around it stay as they were; a form body (``a=1&password=x``) has the
  values of matching fields replaced.

Names match case-insensitively, after percent-decoding (``pass%77ord``) and JSON
unescaping (``"pass\\u0077ord"``), and when any segment of a nested name matches
(``user[password]``, ``auth.token``). A body that is neither JSON nor a form but holds a
listed name as a word (``<password>``, multipart parts) cannot be redacted reliably: it is
*dropped* (the record keeps no body) and counted with reason ``unparseable_secret``.
Bodies are only scanned when a name (or a ``%``/``\\u`` escape) occurs in them, so the
common case costs one search.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from urllib.parse import unquote_to_bytes

from shadowreplay.contract.config import RedactConfig

log = logging.getLogger(__name__)

PREFIX = "redacted:hmac:"
# Reason a body is dropped (shadow_collector_bodies_dropped_total{reason}).
UNPARSEABLE_SECRET = "unparseable_secret"

_process_key: bytes | None = None
_MEMO_MAX = 4096
_WS = frozenset(b" \t\r\n")
# A JSON string (lenient on its contents: control bytes pass) and a JSON scalar.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
# Bytes a form-encoded body is made of: printable ASCII, no space.
_PRINTABLE = re.compile(rb"[!-~]*")
_NAME_SPLIT = re.compile(r"[\[\].]")
_OBJ, _ARR = 0, 1


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


class _Names:
    """One list of secret names: matching (exact, or any segment of a nested name) and
    quick tests of whether a text may hold one at all."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        needles = {n.encode("utf-8") for n in names}
        # For the quick test a name that contains another listed name adds nothing.
        self._needles = tuple(sorted(n for n in needles if not any(m != n and m in n for m in needles)))
        self.text_needles = tuple(n.decode("utf-8") for n in self._needles)
        self._memo: dict[str, bool] = {}
        if names:
            alternatives = b"|".join(re.escape(n) for n in sorted(self._needles, key=len, reverse=True))
            self.word: re.Pattern[bytes] | None = re.compile(
                rb"(?i)(?<![A-Za-z0-9_])(?:" + alternatives + rb")(?![A-Za-z0-9_])"
            )
        else:
            self.word = None

    def anywhere(self, data: bytes) -> bool:
        """Whether a name occurs in ``data`` at all (any case; a few substring searches)."""
        lower = data.lower()
        for needle in self._needles:
            if needle in lower:
                return True
        return False

    def match(self, name: str) -> bool:
        hit = self._memo.get(name)
        if hit is None:
            lower = name.lower().strip()
            hit = lower in self.names or any(
                part.strip() in self.names for part in _NAME_SPLIT.split(lower) if part
            )
            if len(self._memo) < _MEMO_MAX:
                self._memo[name] = hit
        return hit


class Redactor:
    """Applies one ``RedactConfig``. Cheap to call on every record.

    ``on_drop(reason)`` is called for every body dropped (see module docstring)."""

    def __init__(
        self,
        config: RedactConfig,
        environ: Mapping[str, str] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        secret = env.get(config.key_env, "") if config.key_env else ""
        self._key = secret.encode("utf-8", "surrogateescape") if secret else _random_process_key(config.key_env)
        self.headers = config.effective("headers")
        self._query = _Names(config.effective("query_params"))
        self._fields = _Names(config.effective("body_fields"))
        self._on_drop = on_drop
        self._dropped_logged = False

    @property
    def scans_bodies(self) -> bool:
        return bool(self._fields.names)

    @property
    def scans_queries(self) -> bool:
        return bool(self._query.names)

    @property
    def query_needles(self) -> tuple[str, ...]:
        """Lowercase texts one of which a query holding a listed name contains (or a ``%``)."""
        return self._query.text_needles

    def value(self, text: str | bytes) -> str:
        """The redacted form of one secret."""
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        return PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()[:16]

    def header(self, name: str, value: str) -> str:
        """``value`` as it goes on the bus: redacted whole when header ``name`` is listed;
        a Referer's query string redacted like a target's."""
        lname = name.lower()
        if lname in self.headers:
            return self.value(value)
        if lname == "referer":
            return self.target(value)
        return value

    # -- query strings ----------------------------------------------------------------

    def target(self, target: str) -> str:
        """``target`` with the values of listed query parameters redacted; every other byte
        as it was. Text holding surrogate-escaped bytes keeps them."""
        q = target.find("?")
        if q < 0 or not self._query.names:
            return target
        # The common case: no listed name in the query at all (percent-escapes may hide one).
        query = target[q + 1 :].lower()
        if "%" not in query:
            for needle in self._query.text_needles:
                if needle in query:
                    break
            else:
                return target
        data = target.encode("utf-8", "surrogateescape")
        end = data.find(b"#", q + 1)
        spans = self._pairs(data, q + 1, len(data) if end < 0 else end, self._query)
        if not spans:
            return target
        return _splice(data, spans).decode("utf-8", "surrogateescape")

    def _pairs(self, data: bytes, start: int, end: int, names: _Names) -> list[tuple[int, int, bytes]]:
        """Spans (start, end, replacement) of the values of listed ``name=value`` pairs
        between ``start`` and ``end`` (``&``-separated, names percent-decoded, ``+`` a space)."""
        spans: list[tuple[int, int, bytes]] = []
        pos = start
        while pos <= end:
            amp = data.find(b"&", pos, end)
            stop = end if amp < 0 else amp
            eq = data.find(b"=", pos, stop)
            if eq > pos:
                raw_name = data[pos:eq]
                name = _form_decode(raw_name).decode("utf-8", "surrogateescape")
                if names.match(name):
                    value = data[eq + 1 : stop]
                    if not value.startswith(PREFIX.encode()):
                        spans.append((eq + 1, stop, self.value(_form_decode(value)).encode("ascii")))
            if amp < 0:
                break
            pos = amp + 1
        return spans

    # -- bodies -----------------------------------------------------------------------

    def body(self, body: bytes) -> bytes | None:
        """``body`` with the values of listed fields redacted (JSON or form), unchanged
        when it holds none, or None when it cannot be parsed yet may hold one (dropped)."""
        fields = self._fields
        if not fields.names or (not fields.anywhere(body) and b"%" not in body and b"\\u" not in body):
            return body
        stripped = body.lstrip()
        if stripped[:1] in (b"{", b"["):
            spans = self._json_spans(body)
            if spans is not None:
                return _splice(body, spans) if spans else body
        elif b"=" in body and _PRINTABLE.fullmatch(body.rstrip(b"\r\n")):
            spans = self._pairs(body, 0, len(body), fields)
            return _splice(body, spans) if spans else body
        if fields.word is None or fields.word.search(body) is None:
            return body  # may mention a name, but not as a field name
        self._drop(UNPARSEABLE_SECRET)
        return None

    def _drop(self, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)
        if not self._dropped_logged:
            self._dropped_logged = True
            log.warning(
                "dropped a request body that is neither JSON nor a form but may hold a secret field "
                "(%s); further ones are only counted (shadow_collector_bodies_dropped_total)",
                reason,
            )

    def _json_spans(self, body: bytes) -> list[tuple[int, int, bytes]] | None:
        """Spans of the values to redact in JSON ``body``, found by scanning its bytes;
        None when ``body`` is not one JSON document."""
        n = len(body)
        stack: list[int] = []
        spans: list[tuple[int, int, bytes]] = []
        pos = _skip_ws(body, 0, n)
        want_value = True
        while True:
            if want_value:
                if pos >= n:
                    return None
                c = body[pos]
                if c == 0x7B:  # {
                    stack.append(_OBJ)
                    pos = _skip_ws(body, pos + 1, n)
                    if pos < n and body[pos] == 0x7D:  # empty object
                        stack.pop()
                        pos += 1
                        want_value = False
                        continue
                    key_pos = self._member(body, pos, n, spans)
                    if key_pos is None:
                        return None
                    pos, want_value = key_pos
                    continue
                if c == 0x5B:  # [
                    stack.append(_ARR)
                    pos = _skip_ws(body, pos + 1, n)
                    if pos < n and body[pos] == 0x5D:
                        stack.pop()
                        pos += 1
                        want_value = False
                    continue
                end = _scalar_end(body, pos)
                if end < 0:
                    return None
                pos = end
                want_value = False
                continue
            # After a value: a separator, a closing bracket, or the end of the document.
            pos = _skip_ws(body, pos, n)
            if not stack:
                return spans if pos == n else None
            if pos >= n:
                return None
            c = body[pos]
            if stack[-1] == _OBJ:
                if c == 0x2C:  # ,
                    member = self._member(body, _skip_ws(body, pos + 1, n), n, spans)
                    if member is None:
                        return None
                    pos, want_value = member
                elif c == 0x7D:
                    stack.pop()
                    pos += 1
                else:
                    return None
            elif c == 0x2C:
                pos = _skip_ws(body, pos + 1, n)
                want_value = True
            elif c == 0x5D:
                stack.pop()
                pos += 1
            else:
                return None

    def _member(self, body: bytes, pos: int, n: int, spans: list[tuple[int, int, bytes]]) -> tuple[int, bool] | None:
        """Read ``"key":`` at ``pos``. A listed key's whole value is skipped and recorded
        in ``spans``: (position after it, False). Else (position of the value, True)."""
        m = _STRING.match(body, pos)
        if m is None:
            return None
        key = _json_text(m.group())
        pos = _skip_ws(body, m.end(), n)
        if pos >= n or body[pos] != 0x3A:  # :
            return None
        pos = _skip_ws(body, pos + 1, n)
        if key is None or not self._fields.match(key):
            return pos, True
        end = _value_end(body, pos, n)
        if end < 0:
            return None
        raw = body[pos:end]
        if raw[:1] == b'"':
            text = _json_text(raw)
            if text is None:
                return None
            if not text.startswith(PREFIX):
                spans.append((pos, end, b'"' + self.value(text).encode("ascii") + b'"'))
        else:
            spans.append((pos, end, b'"' + self.value(raw).encode("ascii") + b'"'))
        return end, False


def _skip_ws(data: bytes, pos: int, n: int) -> int:
    while pos < n and data[pos] in _WS:
        pos += 1
    return pos


def _scalar_end(data: bytes, pos: int) -> int:
    """End of the string or scalar at ``pos``; -1 when there is none."""
    if data[pos] == 0x22:
        m = _STRING.match(data, pos)
    else:
        m = _SCALAR.match(data, pos)
    return -1 if m is None else m.end()


def _value_end(data: bytes, pos: int, n: int) -> int:
    """End of the JSON value at ``pos`` (a container is matched bracket by bracket,
    strings skipped whole); -1 when it does not end."""
    if pos >= n:
        return -1
    if data[pos] not in (0x7B, 0x5B):
        return _scalar_end(data, pos)
    depth = 0
    while pos < n:
        c = data[pos]
        if c == 0x22:
            m = _STRING.match(data, pos)
            if m is None:
                return -1
            pos = m.end()
            continue
        if c == 0x7B or c == 0x5B:
            depth += 1
        elif c == 0x7D or c == 0x5D:
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    return -1


def _json_text(token: bytes) -> str | None:
    """The text of JSON string ``token`` (quotes included); None if it is not one."""
    inner = token[1:-1]
    if b"\\" not in inner:
        return inner.decode("utf-8", "surrogateescape")
    try:
        text = json.loads(token.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    return text if isinstance(text, str) else None


def _form_decode(raw: bytes) -> bytes:
    """application/x-www-form-urlencoded: ``+`` is a space, ``%HH`` a byte."""
    return unquote_to_bytes(raw.replace(b"+", b" ")) if b"%" in raw or b"+" in raw else raw


def _splice(data: bytes, spans: list[tuple[int, int, bytes]]) -> bytes:
    """``data`` with each (start, end) span replaced; spans are in order and disjoint."""
    out = bytearray()
    pos = 0
    for start, end, replacement in spans:
        out += data[pos:start]
        out += replacement
        pos = end
    out += data[pos:]
    return bytes(out)
