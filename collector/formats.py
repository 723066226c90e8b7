"""Access-log record formats: one decoded log record (a dict) → one RequestRecord.

Formats: ``nginx_json`` (``log_format ... escape=json``), ``ltsv`` and ``combined``
(nginx/Apache combined and common). They share one mapping (``collector.fields``): a
record is a dict of log fields, named as the format names them (nginx variable names
for JSON and combined, labels for LTSV). A record that carries a raw, unparsed line in
one of ``fields.line_fields`` (Fluent Bit and Fluentd tail without a parser) is parsed
with the format's line parser (``collector/lines.py``) first.

Two outputs per record: ``to_request`` (a RequestRecord) and the fast path ``to_bus``
(partition key, the encoded RequestRecord, ts) that builds the wire dict directly; they
agree exactly: ``decode_request(to_bus(...)[1]) == to_request(...)``. Secrets are
redacted (``collector/redact.py``) in both. This runs once per logged request, so the
hot path avoids regexes and caches what it learns about a record layout.
"""

from __future__ import annotations

from binascii import b2a_base64
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from collector.lines import (
    LINE_PARSERS,
    TIME_FIELD_FORMATS,
    TIME_PARSERS,
    LineError,
    split_request_line,
)
from collector.redact import Redactor
from shadowreplay.config import FieldMap, RedactConfig
from shadowreplay.errors import ConfigError, DecodeError
from shadowreplay.record import SCHEMA_VERSION, Origin, RequestRecord, stable_id

_ABSENT = ("", "-")
_HUGE = float("inf")
_MAX_LAYOUTS = 1024
_MAX_KEYS = 256
_MAX_KEY_CHARS = 256
_MEMO_MAX = 32768
_MISS = object()
_dumps = orjson.dumps

BusItem = tuple[bytes, bytes, int]
# (key, header name, redact?) for each header-carrying key of one record layout.
_Plan = tuple[tuple[Any, str, bool], ...]


class LogFormat(Protocol):
    def to_request(self, tag: str, time_ns: int, rec: dict[Any, Any]) -> RequestRecord:
        """The request ``rec`` logs; DecodeError(fatal=False) when it logs none."""

    def to_bus(self, tag: str, time_ns: int, rec: dict[Any, Any]) -> BusItem:
        """(partition key, encoded RequestRecord, ts ns) — ``to_request`` without the
        dataclass; same DecodeError. orjson raises TypeError on text that is not UTF-8."""


def make_format(name: str, fields: FieldMap, redact: RedactConfig | None = None) -> LogFormat:
    """The log format called ``name`` (``collector.format``), mapping ``fields`` and
    redacting per ``redact`` (default: ``RedactConfig()``, i.e. Authorization, Cookie, ...)."""
    factory = _FORMATS.get(name)
    if factory is None:
        raise ConfigError(f"collector.format: unknown format {name!r} (known: {', '.join(sorted(_FORMATS))})")
    return factory(fields, redact)


class AccessLogFormat:
    """Maps log records with a FieldMap (see module docstring).

    Keys starting with ``fields.header_prefix`` (``http_user_agent``) and the explicit
    ``fields.headers`` are request headers (``User-Agent``). The client address is the
    configured field only, never X-Forwarded-For. ``"-"`` and ``""`` mean absent.
    """

    name = ""
    line_parser: Callable[[str], dict[str, Any]] = staticmethod(LINE_PARSERS["nginx_json"])

    def __init__(self, fields: FieldMap, redact: RedactConfig | None = None) -> None:
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
        self._method = fields.method
        self._target = fields.target
        self._request = fields.request
        self._line_fields = fields.line_fields
        self._prefix = fields.header_prefix
        explicit: dict[str, str] = {}
        for entry in fields.headers:
            hname, _sep, src = entry.partition("=")
            explicit[src.strip()] = hname.strip()
        self._explicit = explicit
        self._redactor = Redactor(redact if redact is not None else RedactConfig())
        self._redact_body = bool(self._redactor._needles)
        # record layout (its keys in order) -> header plan.
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._compiled: dict[tuple[Any, ...], Callable[[str, int, dict[Any, Any]], BusItem]] = {}
        self._int_memo: dict[str, int | None] = {}
        self._float_memo: dict[str, float | None] = {}
        self._time_field = fields.time
        fmt = fields.time_format
        if fmt == "auto":
            fmt = TIME_FIELD_FORMATS.get(fields.time, "auto")
        self._parse_time = TIME_PARSERS[fmt]

    # -- the two outputs ---------------------------------------------------------------

    def to_request(self, tag: str, time_ns: int, rec: dict[Any, Any]) -> RequestRecord:
        rid, ts, method, target, scheme, host, headers, body, client, status, sent, duration = self._parts(
            tag, time_ns, rec
        )
        origin = None
        if status is not None or sent is not None or duration is not None:
            origin = Origin(status, sent, duration)
        return RequestRecord(rid, ts, method, target, tag, scheme, host, tuple(headers), body, client, origin)

    def to_bus(self, tag: str, time_ns: int, rec: dict[Any, Any]) -> BusItem:
        # One function compiled per record layout (its keys in order; the records of one
        # log_format share it): the field lookups, conversions and headers unrolled for
        # exactly the keys present. This runs once per request and is most of the
        # collector's CPU; the unit tests check it agrees with to_request on every record.
        layout = tuple(rec)
        fn = self._compiled.get(layout)
        if fn is None:
            fn = self._compile(layout)
        return fn(tag, time_ns, rec)

    def _bus_from_parts(self, tag: str, time_ns: int, rec: dict[Any, Any]) -> BusItem:
        """to_bus the slow, general way (odd records, and layouts past the cache)."""
        rid, ts, method, target, scheme, host, headers, body, client, status, sent, duration = self._parts(
            tag, time_ns, rec
        )
        wire = {
            "v": SCHEMA_VERSION,
            "id": rid,
            "ts": ts,
            "tag": tag,
            "method": method,
            "scheme": scheme,
            "host": host,
            "target": target,
            "headers": headers,
            "body": None if body is None else b2a_base64(body, newline=False).decode("ascii"),
            "client": client,
            "origin": (
                None
                if status is None and sent is None and duration is None
                else {"status": status, "bytes": sent, "duration": duration}
            ),
        }
        return (client or rid).encode("utf-8", "surrogateescape"), _dumps(wire), ts

    def _compile(self, layout: tuple[Any, ...]) -> Callable[[str, int, dict[Any, Any]], BusItem]:
        if len(self._compiled) >= _MAX_LAYOUTS or len(layout) > _MAX_KEYS or any(
            type(k) is str and len(k) > _MAX_KEY_CHARS for k in layout
        ):
            return self._bus_from_parts
        fn = _compile_layout(self, layout)
        self._compiled[layout] = fn
        return fn

    # -- mapping -----------------------------------------------------------------------

    def _parts(self, tag: str, time_ns: int, rec: dict[Any, Any]) -> tuple[Any, ...]:
        method_key, target_key, client_key, host_key, scheme_key, status_key, bytes_key, duration_key, body_key, id_key = (
            self._keys
        )
        get = rec.get
        method = get(method_key)
        target = get(target_key)
        if type(method) is not str or method in _ABSENT or type(target) is not str or target in _ABSENT:
            rec, method, target = self._request_of(rec)
            get = rec.get
        if self._time_field:
            try:
                time_ns = self._parse_time(get(self._time_field))
            except LineError as exc:
                raise DecodeError(str(exc), reason=exc.reason, fatal=False) from None
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
        duration = _float(get(duration_key))
        body = get(body_key)
        if type(body) is str:
            body = None if body in _ABSENT else body.encode("utf-8", "surrogateescape")
        elif type(body) is not bytes or not body:
            body = None
        if body is not None and self._redact_body:
            body = self._redactor.body(body)
        rid = get(id_key)
        if type(rid) is not str or rid in _ABSENT:
            rid = stable_id(time_ns, tag, client, method, host, target, status, sent)

        layout = tuple(rec)
        plan = self._plans.get(layout)
        if plan is None:
            plan = self._plan(layout)
        headers = []
        for key, name, secret in plan:
            value = rec[key]
            if type(value) is not str:
                if value is None or type(value) is dict or type(value) is list:
                    continue
                value = str(value)
            elif value in _ABSENT:
                continue
            if secret:
                value = self._redactor.value(value)
            headers.append((name, value))
        return rid, time_ns, method, target, scheme, host, headers, body, client, status, sent, duration

    def _request_of(self, rec: dict[Any, Any], parse_line: bool = True) -> tuple[dict[Any, Any], str, str]:
        """Method and target when the configured fields lack them: from the request line
        (``$request``), else from a raw log line parsed with this format."""
        get = rec.get
        method = get(self._method)
        target = get(self._target)
        method = method if type(method) is str and method not in _ABSENT else None
        target = target if type(target) is str and target not in _ABSENT else None
        line = get(self._request)
        if (method is None or target is None) and type(line) is str:
            split = split_request_line(line)
            if split is not None:
                method = method or split[0]
                target = target or split[1]
        if method is not None and target is not None:
            return rec, method, target
        if parse_line:
            for key in self._line_fields:
                raw = get(key)
                if type(raw) is str and raw:
                    try:
                        parsed = type(self).line_parser(raw)
                    except LineError as exc:
                        raise DecodeError(str(exc), reason=exc.reason, fatal=False) from None
                    return self._request_of(parsed, parse_line=False)
        if method is None:
            raise DecodeError("log record has no request method", reason="missing_method", fatal=False)
        raise DecodeError("log record has no request target", reason="missing_target", fatal=False)

    def _plan(self, layout: tuple[Any, ...]) -> _Plan:
        """The headers of a record with keys ``layout``, cached: the records of one
        log_format all share a layout."""
        prefix = self._prefix
        explicit = self._explicit
        redacted = self._redactor.headers
        plan = []
        for key in layout:
            if type(key) is not str:
                continue
            name = explicit.get(key)
            if name is None and prefix and key.startswith(prefix) and len(key) > len(prefix):
                name = "-".join(part.capitalize() for part in key[len(prefix) :].split("_"))
            if name is not None:
                plan.append((key, name, name.lower() in redacted))
        result = tuple(plan)
        if len(self._plans) < _MAX_LAYOUTS:
            self._plans[layout] = result
        return result


class NginxJsonFormat(AccessLogFormat):
    """nginx ``escape=json`` access-log records."""

    name = "nginx_json"
    line_parser = staticmethod(LINE_PARSERS["nginx_json"])


class LtsvFormat(AccessLogFormat):
    """LTSV records (labels as field names); map labels with ``collector.fields``."""

    name = "ltsv"
    line_parser = staticmethod(LINE_PARSERS["ltsv"])


class CombinedFormat(AccessLogFormat):
    """nginx/Apache combined and common log lines, parsed into nginx variable names."""

    name = "combined"
    line_parser = staticmethod(LINE_PARSERS["combined"])


def _text(value: Any) -> str | None:
    if type(value) is str:
        return None if value in _ABSENT else value
    if value is None or type(value) is dict or type(value) is list or type(value) is bool:
        return None
    return str(value)


def _int(value: Any) -> int | None:
    kind = type(value)
    if kind is int:
        return int(value)
    if kind is str:
        if value.isascii() and value.isdigit():
            return int(value)
        return None
    if kind is float and value == value and abs(value) < 2**63:
        return int(value)
    return None


def _float(value: Any) -> float | None:
    kind = type(value)
    if kind is float and -_HUGE < value < _HUGE:  # not NaN, not infinite
        return float(value)
    if kind is int and abs(value) < 2**53:
        return float(value)
    if kind is str and value not in _ABSENT:
        try:
            value = float(value)
        except ValueError:
            return None
        kind = float
    if kind is float and -_HUGE < value < _HUGE:  # not NaN, not infinite
        return float(value)
    return None


# -- the per-layout compiler behind to_bus ---------------------------------------------------


def _compile_layout(fmt: AccessLogFormat, layout: tuple[Any, ...]) -> Callable[[str, int, dict[Any, Any]], BusItem]:
    """Source for ``to_bus`` on records with exactly the keys ``layout``, compiled.

    Keys and header names enter the source only through ``repr`` of a ``str`` (always a
    plain literal), so record contents cannot inject code."""
    present = {k for k in layout if type(k) is str}
    method_key, target_key, client_key, host_key, scheme_key, status_key, bytes_key, duration_key, body_key, id_key = (
        fmt._keys
    )
    src = ["def to_bus(tag, time_ns, rec):"]
    add = src.append
    if method_key in present and target_key in present:
        add(f"    method = rec[{method_key!r}]")
        add(f"    target = rec[{target_key!r}]")
        add("    if method.__class__ is not str or not method or method == '-' or target.__class__ is not str or not target or target == '-':")
        add("        return slow(tag, time_ns, rec)")
    elif fmt._request in present and not present.intersection(fmt._line_fields):
        add("    rec2, method, target = request_of(rec)")
    else:
        add("    return slow(tag, time_ns, rec)")
    if fmt._time_field:
        if fmt._time_field not in present:
            add("    return slow(tag, time_ns, rec)")
        add("    try:")
        add(f"        time_ns = parse_time(rec[{fmt._time_field!r}])")
        add("    except LineError:")
        add("        return slow(tag, time_ns, rec)")
    for var, key, default in ((("client", client_key, "None"), ("host", host_key, '""'), ("scheme", scheme_key, '"http"'))):
        if key in present:
            add(f"    {var} = rec[{key!r}]")
            add(f"    if {var}.__class__ is not str or not {var} or {var} == '-':")
            add(f"        {var} = text({var})" + ("" if default == "None" else f" or {default}"))
        else:
            add(f"    {var} = {default}")
    # Numbers arrive as text; the few distinct values (statuses, durations, sizes) are
    # converted once and remembered (bounded), with the same result as to_int/to_float.
    for var, key, memo, conv in (
        ("status", status_key, "INTS", "to_int"),
        ("sent", bytes_key, "INTS", "to_int"),
        ("duration", duration_key, "FLOATS", "to_float"),
    ):
        if key in present:
            add(f"    {var} = rec[{key!r}]")
            add(f"    if {var}.__class__ is str:")
            add(f"        v = {memo}.get({var}, MISS)")
            add("        if v is MISS:")
            add(f"            v = {conv}({var})")
            add(f"            if len({memo}) < MEMO_MAX:")
            add(f"                {memo}[{var}] = v")
            add(f"        {var} = v")
            if conv == "to_int":
                add(f"    elif {var}.__class__ is not int:")
            else:
                add("    else:")
            add(f"        {var} = {conv}({var})")
        else:
            add(f"    {var} = None")
    if body_key in present:
        add(f"    body = rec[{body_key!r}]")
        add("    if body:")
        add("        if body.__class__ is str:")
        add('            body = None if body == "-" else body.encode("utf-8", "surrogateescape")')
        add("        elif body.__class__ is not bytes:")
        add("            body = None")
        add("        if body is not None:")
        if fmt._redact_body:
            add("            body = redact_body(body)")
        add('            body = b64(body, newline=False).decode("ascii")')
        add("    else:")
        add("        body = None")
    else:
        add("    body = None")
    if id_key in present:
        add(f"    rid = rec[{id_key!r}]")
        add("    if rid.__class__ is not str or not rid or rid == '-':")
        add("        rid = stable_id(time_ns, tag, client, method, host, target, status, sent)")
    else:
        add("    rid = stable_id(time_ns, tag, client, method, host, target, status, sent)")
    add("    headers = []")
    add("    append = headers.append")
    for key, name, secret in fmt._plan(layout):
        value = "redact(v)" if secret else "v"
        add(f"    v = rec[{key!r}]")
        add("    if v.__class__ is str:")
        add("        if v and v != '-':")
        add(f"            append(({name!r}, {value}))")
        add("    elif v is not None and v.__class__ is not dict and v.__class__ is not list:")
        add("        v = str(v)")
        add(f"        append(({name!r}, {value}))")
    add("    return (client or rid).encode('utf-8', 'surrogateescape'), dumps({")
    add("        'v': V, 'id': rid, 'ts': time_ns, 'tag': tag, 'method': method, 'scheme': scheme,")
    add("        'host': host, 'target': target, 'headers': headers, 'body': body, 'client': client,")
    add("        'origin': None if status is None and sent is None and duration is None")
    add("        else {'status': status, 'bytes': sent, 'duration': duration},")
    add("    }), time_ns")
    namespace: dict[str, Any] = {
        "ABSENT": _ABSENT,
        "HUGE": _HUGE,
        "V": SCHEMA_VERSION,
        "LineError": LineError,
        "b64": b2a_base64,
        "dumps": _dumps,
        "stable_id": stable_id,
        "text": _text,
        "to_int": _int,
        "to_float": _float,
        "parse_time": fmt._parse_time,
        "request_of": fmt._request_of,
        "redact": fmt._redactor.value,
        "redact_body": fmt._redactor.body,
        "slow": fmt._bus_from_parts,
        "INTS": fmt._int_memo,
        "FLOATS": fmt._float_memo,
        "MISS": _MISS,
        "MEMO_MAX": _MEMO_MAX,
    }
    exec(compile("\n".join(src), f"<to_bus layout {len(layout)} keys>", "exec"), namespace)  # noqa: S102
    fn: Callable[[str, int, dict[Any, Any]], BusItem] = namespace["to_bus"]
    return fn


_FORMATS: dict[str, type[AccessLogFormat]] = {
    "nginx_json": NginxJsonFormat,
    "ltsv": LtsvFormat,
    "combined": CombinedFormat,
}
