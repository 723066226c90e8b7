"""Access-log record formats: one decoded log record (a dict) → one RequestRecord.

Formats: ``nginx_json`` (``log_format ... escape=json``), ``ltsv`` and ``combined``
(nginx/Apache combined and common). They share one mapping (``collector.fields``): a
record is a dict of log fields, named as the format names them (nginx variable names
for JSON and combined, labels for LTSV). A record that carries a raw, unparsed line in
one of ``fields.line_fields`` (Fluent Bit and Fluentd tail without a parser) is parsed
with the format's line parser (``collector/lines.py``) first.

One output per record, ``to_bus``: the partition key, the request encoded as
``shadowreplay/contract/record.py`` encodes a RequestRecord (``encode_request_fields``, without the
dataclass) and its time. Secrets are redacted (``collector/redact.py``) on the way. This
runs once per logged request: it keeps what it learns about a record layout (which keys
are headers, and ``to_bus_plain`` compiled for exactly those keys) and the numbers it has
converted, all bounded.

Ids: the logged request id (``fields.request_id``) when the record has one; else the
line id ``shadowreplay tail`` puts in ``LINE_ID_FIELD`` (file and offset of the line);
else one derived from where the record sits in what the client sent: the chunk id and
the entry's index in the chunk (the decoder passes them), so two identical lines get two
ids while a re-sent chunk gives the same ids again; a frame without a chunk id (sent
without acks, never re-sent by the protocol) gets a per-connection frame number instead.

Text that is not UTF-8 (bytes the decoder or the line parser surrogate-escaped) is kept:
a target, Host or header value holding such bytes goes on the bus with its exact bytes
(``shadowreplay/contract/record.py``: ``raw``, version 2). Only a record that cannot be a request
is refused: no method or target (``missing_method``, ``missing_target``), a request line
that is not one (``bad_request_line``), a method that is not ASCII (``bad_method``), an
unreadable time field (``bad_time_field``).
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import blake2b
from typing import Any, Protocol

from shadowreplay.collector.lines import (
    ESCAPES,
    ESCAPES_DECODE,
    FORMATS,
    LINE_ID_FIELD,
    TIME_FIELD_FORMATS,
    TIME_PARSERS,
    LineError,
    line_parser,
    split_request_line,
)
from shadowreplay.collector.redact import Redactor
from shadowreplay.contract.config import FieldMap, RedactConfig
from shadowreplay.contract.errors import ConfigError, DecodeError
from shadowreplay.contract.record import encode_request_fields, is_text, partition_key, readable, stable_id

_ABSENT = ("", "-")
_HUGE = float("inf")
_MAX_LAYOUTS = 1024
_MAX_KEYS = 256
_MAX_KEY_CHARS = 256
_MEMO_MAX = 32768
_MISS = object()

BusItem = tuple[bytes, bytes, int]
# How a header value goes on the bus: as is, redacted whole, or a URL whose query is redacted.
_KEEP, _SECRET, _URL = 0, 1, 2
# (key, header name, one of the above) for each header-carrying key of one record layout.
_Plan = tuple[tuple[Any, str, int], ...]


class LogFormat(Protocol):
    def to_bus(
        self, tag: str, time_ns: int, rec: dict[Any, Any], frame: bytes | None = None, index: int = 0
    ) -> BusItem:
        """(partition key, encoded RequestRecord, ts ns) of the request ``rec`` logs;
        DecodeError(fatal=False) when it logs none. ``frame`` and ``index`` say where the
        record came from (see ``entry_id``)."""


def make_format(
    name: str,
    fields: FieldMap,
    redact: RedactConfig | None = None,
    *,
    escapes: str = ESCAPES_DECODE,
    on_body_dropped: Callable[[str], None] | None = None,
    seq: Callable[[], int] | None = None,
) -> LogFormat:
    """The log format called ``name`` (``collector.format``), mapping ``fields``, reading
    raw lines with ``escapes`` (``collector.escapes``) and redacting per ``redact``
    (default: ``RedactConfig()``); ``on_body_dropped(reason)`` counts dropped bodies;
    ``seq()``, when given, stamps each record's ``seq`` (the collector's ingest clock)."""
    return AccessLogFormat(name, fields, redact, escapes=escapes, on_body_dropped=on_body_dropped, seq=seq)


def entry_id(tag: str, frame: bytes, index: int) -> str:
    """The id of the ``index``-th entry of the frame identified by ``frame`` (see the
    module docstring): 24 hex digits, like ``stable_id``."""
    h = blake2b(frame, digest_size=12)
    h.update(b"\x00%d\x00" % index)
    h.update(tag.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class AccessLogFormat:
    """Maps log records of format ``name`` (one of ``shadowreplay.collector.lines.FORMATS``) with a
    FieldMap (see module docstring); ConfigError naming the key for a format, escape mode
    or time format that does not exist.

    Keys starting with ``fields.header_prefix`` (``http_user_agent``) and the explicit
    ``fields.headers`` are request headers (``User-Agent``). The client address is the
    configured field only, never X-Forwarded-For. ``"-"`` and ``""`` mean absent.
    """

    def __init__(
        self,
        name: str,
        fields: FieldMap,
        redact: RedactConfig | None = None,
        *,
        escapes: str = ESCAPES_DECODE,
        on_body_dropped: Callable[[str], None] | None = None,
        seq: Callable[[], int] | None = None,
    ) -> None:
        self._seq = seq
        if name not in FORMATS:
            raise ConfigError(f"collector.format: unknown format {name!r} (known: {', '.join(FORMATS)})")
        if escapes not in ESCAPES:
            raise ConfigError(f"collector.escapes: {' or '.join(ESCAPES)}, got {escapes!r}")
        if fields.time_format not in TIME_PARSERS:
            raise ConfigError(f"collector.fields.time_format: one of {', '.join(TIME_PARSERS)}, "
                              f"got {fields.time_format!r}")
        self.name = name
        self._parse_line = line_parser(name, escapes)
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
        self._redactor = Redactor(redact if redact is not None else RedactConfig(), on_drop=on_body_dropped)
        self._redact_body = self._redactor.scans_bodies
        self._redact_query = self._redactor.scans_queries
        self._query_needles = self._redactor.query_needles
        # record layout (its keys in order) -> header plan, and -> to_bus compiled for it.
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._compiled: dict[tuple[Any, ...], Callable[[str, int, dict[Any, Any], bytes | None, int], BusItem]] = {}
        # Numbers arrive as text; the few distinct values (statuses, sizes, durations) are
        # converted once.
        self._ints: dict[str, int | None] = {}
        self._floats: dict[str, float | None] = {}
        self._time_field = fields.time
        fmt = fields.time_format
        if fmt == "auto":
            fmt = TIME_FIELD_FORMATS.get(fields.time, "auto")
        self._parse_time = TIME_PARSERS[fmt]

    def to_bus(
        self, tag: str, time_ns: int, rec: dict[Any, Any], frame: bytes | None = None, index: int = 0
    ) -> BusItem:
        # ``to_bus_plain`` compiled per record layout (its keys in order; the records of one
        # log_format share it), with the lookups, conversions and headers unrolled for the
        # keys present: this runs once per request and is most of the collector's CPU, and a
        # plain function measured clearly slower (bench/README.md). The unit tests check the
        # two agree on every record.
        fn = self._compiled.get(tuple(rec))
        if fn is None:
            fn = self._compile(tuple(rec))
        return fn(tag, time_ns, rec, frame, index)

    def to_bus_plain(
        self, tag: str, time_ns: int, rec: dict[Any, Any], frame: bytes | None = None, index: int = 0
    ) -> BusItem:
        """``to_bus`` without the compiled layouts: the reference they are tested against,
        and the path of records they leave out."""
        method_key, target_key, client_key, host_key, scheme_key, status_key, bytes_key, duration_key, body_key, id_key = (
            self._keys
        )
        get = line_get = rec.get
        method = get(method_key)
        target = get(target_key)
        if type(target) is bytes:  # msgpack bin (the WSGI/ASGI middleware sends such a target so)
            target = target.decode("utf-8", "surrogateescape")
        if type(method) is not str or method in _ABSENT or type(target) is not str or target in _ABSENT:
            rec, method, target = self._request_of(rec)
            get = rec.get
        if not method.isascii():
            raise DecodeError(f"request method {method[:32]!r} is not ASCII", reason="bad_method", fatal=False)
        if self._time_field:
            try:
                time_ns = self._parse_time(get(self._time_field))
            except LineError as exc:
                raise DecodeError(str(exc), reason=exc.reason, fatal=False) from None
        client = get(client_key)
        if type(client) is not str or client in _ABSENT:
            client = _text(client)
        if client is not None and not client.isascii():
            client = readable(client)
        host = get(host_key)
        if type(host) is not str or host in _ABSENT:
            host = _text(host) or ""
        scheme = get(scheme_key)
        if type(scheme) is not str or scheme in _ABSENT:
            scheme = _text(scheme) or "http"
        if not scheme.isascii():
            scheme = readable(scheme)
        ints = self._ints
        status = get(status_key)
        if type(status) is str:
            status = ints[status] if status in ints else _remember(ints, status, _int(status))
        elif type(status) is not int:
            status = _int(status)
        sent = get(bytes_key)
        if type(sent) is str:
            sent = ints[sent] if sent in ints else _remember(ints, sent, _int(sent))
        elif type(sent) is not int:
            sent = _int(sent)
        duration = get(duration_key)
        if type(duration) is str:
            floats = self._floats
            duration = floats[duration] if duration in floats else _remember(floats, duration, _float(duration))
        else:
            duration = _float(duration)
        body = get(body_key)
        if type(body) is str:
            body = None if body in _ABSENT else body.encode("utf-8", "surrogateescape")
        elif type(body) is not bytes or not body:
            body = None
        if body is not None and self._redact_body:
            body = self._redactor.body(body)
        if self._redact_query:
            q = target.find("?")
            if q >= 0:  # Redactor.target's quick test first: most queries hold no listed name
                query = target[q + 1 :].lower()
                if "%" in query:
                    target = self._redactor.target(target)
                else:
                    for needle in self._query_needles:
                        if needle in query:
                            target = self._redactor.target(target)
                            break
        rid = get(id_key)
        if type(rid) is not str or rid in _ABSENT or not is_text(rid):
            rid = _line_id(line_get(LINE_ID_FIELD)) or _fallback_id(
                tag, time_ns, client, method, host, target, status, sent, frame, index
            )

        layout = tuple(rec)
        plan = self._plans.get(layout)
        if plan is None:
            plan = self._plan(layout)
        headers = []
        for key, name, mode in plan:
            value = rec[key]
            if type(value) is not str:
                if value is None or type(value) is dict or type(value) is list:
                    continue
                value = _value_text(value)
            if value in _ABSENT:
                continue
            if mode == _SECRET:
                value = self._redactor.value(value)
            elif mode == _URL and "?" in value:
                value = self._redactor.target(value)
            headers.append((name, value))
        origin = None if status is None and sent is None and duration is None else (status, sent, duration, None)
        data = encode_request_fields(
            rid, time_ns, tag, method, scheme, host, target, headers, body, client, origin,
            None if self._seq is None else self._seq(),
        )
        return partition_key(client, rid), data, time_ns

    def _compile(self, layout: tuple[Any, ...]) -> Callable[[str, int, dict[Any, Any], bytes | None, int], BusItem]:
        if len(self._compiled) >= _MAX_LAYOUTS or len(layout) > _MAX_KEYS or any(
            type(k) is str and len(k) > _MAX_KEY_CHARS for k in layout
        ):
            return self.to_bus_plain
        fn = _compile_layout(self, layout)
        self._compiled[layout] = fn
        return fn

    def _request_of(self, rec: dict[Any, Any], parse_line: bool = True) -> tuple[dict[Any, Any], str, str]:
        """Method and target when the configured fields lack them: from the request line
        (``$request``), else from a raw log line parsed with this format."""
        get = rec.get
        method = get(self._method)
        target = get(self._target)
        method = method if type(method) is str and method not in _ABSENT else None
        target = target if type(target) is str and target not in _ABSENT else None
        line = get(self._request)
        bad_line = ""
        if (method is None or target is None) and type(line) is str and line not in _ABSENT:
            split = split_request_line(line)
            if split is not None:
                method = method or split[0]
                target = target or split[1]
            else:
                bad_line = line
        if method is not None and target is not None:
            return rec, method, target
        if parse_line:
            for key in self._line_fields:
                raw = get(key)
                if type(raw) is str and raw:
                    try:
                        parsed = self._parse_line(raw)
                    except LineError as exc:
                        raise DecodeError(str(exc), reason=exc.reason, fatal=False) from None
                    return self._request_of(parsed, parse_line=False)
        if bad_line:
            raise DecodeError(f"not a request line: {bad_line[:64]!r}", reason="bad_request_line", fatal=False)
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
                name = readable(name)  # a name that is no text cannot be sent; keep the record
                lname = name.lower()
                mode = _SECRET if lname in redacted else _URL if lname == "referer" and self._redact_query else _KEEP
                plan.append((key, name, mode))
        result = tuple(plan)
        if len(self._plans) < _MAX_LAYOUTS:
            self._plans[layout] = result
        return result


def _fallback_id(
    tag: str, time_ns: int, client: Any, method: str, host: str, target: str, status: Any, sent: Any,
    frame: bytes | None, index: int,
) -> str:
    """The id of a record that logs none: by position when known, else by content."""
    if frame is not None:
        return entry_id(tag, frame, index)
    return stable_id(time_ns, tag, client, method, host, target, status, sent)


def _remember(memo: dict[str, Any], text: str, value: Any) -> Any:
    """``value`` (``text`` converted), kept in ``memo`` while it has room."""
    if len(memo) < _MEMO_MAX:
        memo[text] = value
    return value


def _text(value: Any) -> str | None:
    if type(value) is bytes:  # msgpack bin: text whose bytes are kept (surrogate-escaped)
        value = value.decode("utf-8", "surrogateescape")
    if type(value) is str:
        return None if value in _ABSENT else value
    if value is None or type(value) is dict or type(value) is list or type(value) is bool:
        return None
    return str(value)


def _value_text(value: Any) -> str:
    """A header value that arrived as another type than str: bin keeps its bytes."""
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape")
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


def _compile_layout(
    fmt: AccessLogFormat, layout: tuple[Any, ...]
) -> Callable[[str, int, dict[Any, Any], bytes | None, int], BusItem]:
    """``to_bus_plain`` unrolled for records with exactly the keys ``layout``, compiled:
    the field lookups, conversions and headers for exactly the keys present.

    Keys and header names enter the source only through ``repr`` of a ``str`` (always a
    plain literal), so record contents cannot inject code. Anything unusual (a method
    that is not ASCII, an unreadable time) goes to ``to_bus_plain``, which decides."""
    present = {k for k in layout if type(k) is str}
    method_key, target_key, client_key, host_key, scheme_key, status_key, bytes_key, duration_key, body_key, id_key = (
        fmt._keys
    )
    src = ["def to_bus(tag, time_ns, rec, frame=None, index=0):"]
    add = src.append
    slow = "        return slow(tag, time_ns, rec, frame, index)"
    if method_key in present and target_key in present:
        add(f"    method = rec[{method_key!r}]")
        add(f"    target = rec[{target_key!r}]")
        add("    if method.__class__ is not str or not method or method == '-' or target.__class__ is not str or not target or target == '-' or not method.isascii():")
        add(slow)
    elif fmt._request in present and not present.intersection(fmt._line_fields):
        add("    rec2, method, target = request_of(rec)")
        add("    if not method.isascii():")
        add(slow)
    else:
        add(slow[4:])
    if fmt._time_field:
        if fmt._time_field not in present:
            add(slow[4:])
        add("    try:")
        add(f"        time_ns = parse_time(rec[{fmt._time_field!r}])")
        add("    except LineError:")
        add(slow)
    for var, key, default in ((("client", client_key, "None"), ("host", host_key, '""'), ("scheme", scheme_key, '"http"'))):
        if key in present:
            add(f"    {var} = rec[{key!r}]")
            add(f"    if {var}.__class__ is not str or not {var} or {var} == '-':")
            add(f"        {var} = text({var})" + ("" if default == "None" else f" or {default}"))
            if var == "client":  # the partition key: the readable text, as to_bus_plain has it
                add("    if client is not None and not client.isascii():")
                add("        client = readable(client)")
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
        if fmt._redact_body:
            add("        if body is not None:")
            add("            body = redact_body(body)")
        add("    else:")
        add("        body = None")
    else:
        add("    body = None")
    if fmt._redact_query:
        # Redactor.target's quick test, unrolled: most queries hold no listed name.
        quick = " or ".join(f"{needle!r} in query" for needle in fmt._redactor.query_needles)
        add("    q = target.find('?')")
        add("    if q >= 0:")
        add("        query = target[q + 1:].lower()")
        add(f"        if '%' in query or {quick}:")
        add("            target = redact_target(target)")
    fallback = "fallback_id(tag, time_ns, client, method, host, target, status, sent, frame, index)"
    if LINE_ID_FIELD in present:
        line_id = f"line_id(rec[{LINE_ID_FIELD!r}]) or {fallback}"
    else:
        line_id = fallback
    if id_key in present:
        add(f"    rid = rec[{id_key!r}]")
        add("    if rid.__class__ is not str or not rid or rid == '-' or not (rid.isascii() or is_text(rid)):")
        add(f"        rid = {line_id}")
    else:
        add(f"    rid = {line_id}")
    add("    headers = []")
    add("    append = headers.append")
    for key, name, mode in fmt._plan(layout):
        value = "redact(v)" if mode == _SECRET else "(redact_url(v) if '?' in v else v)" if mode == _URL else "v"
        add(f"    v = rec[{key!r}]")
        add("    if v.__class__ is str:")
        add("        if v and v != '-':")
        add(f"            append(({name!r}, {value}))")
        add("    elif v is not None and v.__class__ is not dict and v.__class__ is not list:")
        add("        v = value_text(v)")
        add("        if v and v != '-':")
        add(f"            append(({name!r}, {value}))")
    add("    origin = None if status is None and sent is None and duration is None else (status, sent, duration, None)")
    seq = ", seq()" if fmt._seq is not None else ""
    add(f"    data = encode(rid, time_ns, tag, method, scheme, host, target, headers, body, client, origin{seq})")
    add("    return partition_key(client, rid), data, time_ns")
    namespace: dict[str, Any] = {
        "LineError": LineError,
        "encode": encode_request_fields,
        "partition_key": partition_key,
        "fallback_id": _fallback_id,
        "line_id": _line_id,
        "is_text": is_text,
        "readable": readable,
        "text": _text,
        "value_text": _value_text,
        "to_int": _int,
        "to_float": _float,
        "parse_time": fmt._parse_time,
        "request_of": fmt._request_of,
        "redact": fmt._redactor.value,
        "redact_url": fmt._redactor.target,
        "redact_target": fmt._redactor.target,
        "redact_body": fmt._redactor.body,
        "slow": fmt.to_bus_plain,
        "INTS": fmt._ints,
        "FLOATS": fmt._floats,
        "MISS": _MISS,
        "MEMO_MAX": _MEMO_MAX,
        "seq": fmt._seq,
    }
    exec(compile("\n".join(src), f"<to_bus layout {len(layout)} keys>", "exec"), namespace)  # noqa: S102
    fn: Callable[[str, int, dict[Any, Any], bytes | None, int], BusItem] = namespace["to_bus"]
    return fn


def _line_id(value: Any) -> str | None:
    """The line id ``shadowreplay tail`` sent, or None when there is none to use."""
    return value if type(value) is str and value and value.isascii() else None
