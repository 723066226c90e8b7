"""Access-log record formats: one decoded log record (a dict) → one RequestRecord.

Only nginx JSON (``log_format ... escape=json``) exists so far; ``make_format`` is the
one place new formats (LTSV, combined) are registered. This runs once per logged
request, so the hot path avoids regexes and caches what it learns about field names.
"""

from __future__ import annotations

from datetime import datetime, UTC
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from shadowreplay.config import FieldMap
from shadowreplay.errors import ConfigError, DecodeError
from shadowreplay.record import Origin, RequestRecord, stable_id

_NS = 1_000_000_000
_ABSENT = ("", "-")
_MAX_LAYOUTS = 1024


class LogFormat(Protocol):
    def to_request(self, tag: str, time_ns: int, rec: dict[Any, Any]) -> RequestRecord:
        """The request ``rec`` logs; DecodeError(fatal=False) when it logs none."""


def make_format(name: str, fields: FieldMap) -> LogFormat:
    """The log format called ``name`` (``collector.format``), mapping ``fields``."""
    factory = _FORMATS.get(name)
    if factory is None:
        raise ConfigError(f"collector.format: unknown format {name!r} (known: {', '.join(sorted(_FORMATS))})")
    return factory(fields)


class NginxJsonFormat:
    """nginx ``escape=json`` access-log records; field names from a FieldMap.

    Keys starting with ``fields.header_prefix`` (``http_user_agent``) are request
    headers (``User-Agent``). The client address is the configured field only, never
    X-Forwarded-For. ``"-"`` and ``""`` mean absent.
    """

    def __init__(self, fields: FieldMap) -> None:
        self._keys = (
            fields.method,
            fields.target,
            fields.client,
            fields.host,
            fields.scheme,
            fields.status,
            fields.bytes,
            fields.duration,
            fields.body,
            fields.request_id,
        )
        self._prefix = fields.header_prefix
        # record layout (its keys in order) -> (key, header name) pairs.
        self._plans: dict[tuple[Any, ...], tuple[tuple[Any, str], ...]] = {}
        time_field = fields.time
        self._time_field = time_field
        self._parse_time = _parse_msec if time_field == "msec" else _parse_iso8601

    def to_request(self, tag: str, time_ns: int, rec: dict[Any, Any]) -> RequestRecord:
        method_key, target_key, client_key, host_key, scheme_key, status_key, bytes_key, duration_key, body_key, id_key = (
            self._keys
        )
        get = rec.get
        method = get(method_key)
        if type(method) is not str or method in _ABSENT:
            raise DecodeError("log record has no request method", reason="missing_method", fatal=False)
        target = get(target_key)
        if type(target) is not str or target in _ABSENT:
            raise DecodeError("log record has no request target", reason="missing_target", fatal=False)
        if self._time_field:
            time_ns = self._parse_time(get(self._time_field))
        client = get(client_key)
        if type(client) is not str or client in _ABSENT:
            client = _text(client)
        host = get(host_key)
        if type(host) is not str or host in _ABSENT:
            host = _text(host) or ""
        scheme = get(scheme_key)
        if type(scheme) is not str or scheme in _ABSENT:
            scheme = _text(scheme) or "http"
        status = get(status_key)
        if type(status) is not int:
            status = _int(status)
        sent = get(bytes_key)
        if type(sent) is not int:
            sent = _int(sent)
        duration = get(duration_key)
        if type(duration) is not float:
            duration = _float(duration)
        body = get(body_key)
        if type(body) is str:
            body = None if body in _ABSENT else body.encode("utf-8", "surrogateescape")
        elif type(body) is not bytes or not body:
            body = None
        rid = get(id_key)
        if type(rid) is not str or rid in _ABSENT:
            rid = stable_id(time_ns, tag, client, method, host, target, status, sent)

        layout = tuple(rec)
        plan = self._plans.get(layout)
        if plan is None:
            plan = self._plan(layout)
        headers = []
        for key, name in plan:
            value = rec[key]
            if type(value) is not str:
                if value is None or type(value) is dict or type(value) is list:
                    continue
                value = str(value)
            elif value in _ABSENT:
                continue
            headers.append((name, value))

        origin = None
        if status is not None or sent is not None or duration is not None:
            origin = Origin(status, sent, duration)
        return RequestRecord(
            rid, time_ns, method, target, tag, scheme, host, tuple(headers), body, client, origin
        )

    def _plan(self, layout: tuple[Any, ...]) -> tuple[tuple[Any, str], ...]:
        """The (key, header name) pairs of a record with keys ``layout``, cached: the
        records of one log_format all share a layout."""
        prefix = self._prefix
        plan = []
        for key in layout:
            if type(key) is str and key.startswith(prefix) and len(key) > len(prefix):
                name = "-".join(part.capitalize() for part in key[len(prefix) :].split("_"))
                plan.append((key, name))
        result = tuple(plan)
        if len(self._plans) < _MAX_LAYOUTS:
            self._plans[layout] = result
        return result


def _text(value: Any) -> str | None:
    if type(value) is str:
        return None if value in _ABSENT else value
    if value is None or type(value) is dict or type(value) is list or type(value) is bool:
        return None
    return str(value)


def _int(value: Any) -> int | None:
    kind = type(value)
    if kind is int:
        return value
    if kind is str:
        if value.isascii() and value.isdigit():
            return int(value)
        return None
    if kind is float and value == value and abs(value) < 2**63:
        return int(value)
    return None


def _float(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    if kind is str and value not in _ABSENT:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _bad_time(value: Any) -> DecodeError:
    return DecodeError(f"log record has an unreadable time {value!r:.64}", reason="bad_time_field", fatal=False)


def _parse_msec(value: Any) -> int:
    """nginx ``$msec`` (seconds with a fractional part) → exact integer nanoseconds."""
    kind = type(value)
    if kind is int and value >= 0:
        return value * _NS
    if kind is float:
        value = repr(value)
    elif kind is not str:
        raise _bad_time(value)
    sec, dot, frac = value.partition(".")
    if sec.isdigit() and (not frac or frac.isdigit()) and sec.isascii() and frac.isascii():
        return int(sec) * _NS + int(frac[:9].ljust(9, "0") if frac else 0)
    try:  # exponent forms and the like
        ns = int(Decimal(value) * _NS)
    except (InvalidOperation, ValueError) as exc:
        raise _bad_time(value) from exc
    if ns < 0:
        raise _bad_time(value)
    return ns


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _parse_iso8601(value: Any) -> int:
    """ISO 8601 (nginx ``$time_iso8601``) → integer nanoseconds; no offset means UTC."""
    if type(value) is not str:
        raise _bad_time(value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _bad_time(value) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    ns = (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000
    # datetime keeps microseconds; take the nanoseconds beyond them from the text.
    dot = value.find(".", 17)
    if dot < 0:
        dot = value.find(",", 17)
    if dot >= 0:
        end = dot + 1
        while end < len(value) and value[end].isdigit():
            end += 1
        digits = value[dot + 7 : min(end, dot + 10)]
        if digits:
            ns += int(digits.ljust(3, "0"))
    return ns


_FORMATS = {"nginx_json": NginxJsonFormat}
