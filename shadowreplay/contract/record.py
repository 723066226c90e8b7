"""The wire contract between collector, replayer and comparer.

Field names are API (see DESIGN.md). Messages are JSON encoded with orjson:

* ``RequestRecord`` — one per logged request, on topic ``shadow.requests``.
* ``ReplayResult`` — one per replayed request, on topic ``shadow.results``.

Times are integer nanoseconds since the epoch; durations are float seconds.
Bodies travel as base64 strings (``null`` when absent) so binary bodies survive.
Headers are lists of ``[name, value]`` pairs so repeated headers and their order survive.

Bytes that are not UTF-8. Logs carry them (``\\xHH`` escapes in Referer, User-Agent or
the request line decode to any byte), and a replay must send them byte for byte. In
memory such a value is a ``str`` holding the bytes surrogate-escaped
(``bytes.decode("utf-8", "surrogateescape")``: every undecodable byte 0xHH becomes the
lone surrogate U+DCHH), which is lossless and keeps ``target`` and header values ``str``
for everything that works on them (rules, endpoint names). JSON cannot hold lone
surrogates, so on the wire a request record with such a ``target``, ``host`` or header
value carries the exact bytes in an extra member ``raw`` and is version 2 (see
``RAW_SCHEMA_VERSION``)::

    "v": 2, "target": "/caf\\ufffd", ...,
    "raw": {"target": "<base64>", "host": "<base64>", "headers": [[<index>, "<base64>"]]}

``target``, ``host`` and the header values keep a readable form (each undecodable byte
replaced by U+FFFD) for tools that only print them. Members of ``raw`` are present only
for the values that need them. A reader of version 1 refuses a version-2 record as
"newer" (it is never replayed with U+FFFD in place of its bytes); records without such
bytes stay version 1, byte for byte as before.
"""

from __future__ import annotations

import hashlib
from binascii import Error as Base64Error
from binascii import a2b_base64, b2a_base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from shadowreplay.contract.errors import RecordError

SCHEMA_VERSION = 1
# A request record whose target, host or header values hold bytes that are not UTF-8:
# version 2 adds the member "raw" (module docstring). Readers accept both.
RAW_SCHEMA_VERSION = 2
MAX_SCHEMA_VERSION = RAW_SCHEMA_VERSION

#: A ``ReplayResult.responses`` name besides the targets': the reference target (the
#: baseline; the candidate, without a baseline, if so configured) asked the same request a second
#: time (once its first answer is in), so the comparer learns what differs between two answers of
#: one release (noise) without a secondary. See ``replayer/probe.py``.
PROBE = "probe"

Headers = tuple[tuple[str, str], ...]
#: An origin as ``encode_request_fields`` takes it: (status, bytes, duration, body_sha256).
OriginFields = tuple[int | None, int | None, float | None, str | None]

# The encoders and decoders below are the only Python code that names wire members (the
# page's script reads stored results as its API returns them). Each decoder reads the
# common case (exact JSON types, as orjson decodes them) with one type test per member and
# hands anything else to a helper that accepts the lenient forms (null for a default, an
# int where a float is due) or raises RecordError naming the member.


@dataclass(frozen=True, slots=True)
class Origin:
    """What production answered, as logged."""

    status: int | None = None
    bytes: int | None = None
    duration: float | None = None
    body_sha256: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return _origin_wire((self.status, self.bytes, self.duration, self.body_sha256))

    @classmethod
    def from_wire(cls, obj: Any) -> Origin | None:
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise RecordError("origin must be an object or null")
        get = obj.get
        status, size, duration, sha = get("status"), get("bytes"), get("duration"), get("body_sha256")
        if status is not None and type(status) is not int:
            status = _opt(obj, "status", int)
        if size is not None and type(size) is not int:
            size = _opt(obj, "bytes", int)
        if duration is not None and type(duration) is not float:
            duration = _opt_float(obj, "duration")
        if sha is not None and type(sha) is not str:
            sha = _opt(obj, "body_sha256", str)
        return cls(status, size, duration, sha)


def _origin_wire(origin: OriginFields) -> dict[str, Any]:
    status, size, duration, sha = origin
    out: dict[str, Any] = {"status": status, "bytes": size, "duration": duration}
    if sha is not None:
        out["body_sha256"] = sha
    return out


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One logged request."""

    id: str
    ts: int
    method: str
    target: str
    tag: str = ""
    scheme: str = "http"
    host: str = ""
    headers: Headers = ()
    body: bytes | None = None
    client: str | None = None
    origin: Origin | None = None
    # The collector's ingest clock (ns, strictly increasing within one collector): records
    # with equal ``ts`` are replayed in ``seq`` order, the order they were logged in.
    # None for records from elsewhere; absent from the JSON then.
    seq: int | None = None

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def partition_key(self) -> bytes:
        """Default partition key: the trusted client address, else the id."""
        return partition_key(self.client, self.id)

    @classmethod
    def from_wire(cls, obj: Any) -> RequestRecord:
        if not isinstance(obj, dict):
            raise RecordError("request record must be a JSON object")
        _check_version(obj)
        if obj.get("raw") is not None:
            obj = _with_raw(obj)
        get = obj.get
        id_, ts, method, target = get("id"), get("ts"), get("method"), get("target")
        if type(id_) is not str:
            id_ = _req(obj, "id", str)
        if type(ts) is not int:
            ts = _req(obj, "ts", int)
        if type(method) is not str:
            method = _req(obj, "method", str)
        if type(target) is not str:
            target = _req(obj, "target", str)
        tag, scheme, host, client = get("tag"), get("scheme"), get("host"), get("client")
        if type(tag) is not str:
            tag = _opt(obj, "tag", str, "")
        if type(scheme) is not str:
            scheme = _opt(obj, "scheme", str, "http")
        if type(host) is not str:
            host = _opt(obj, "host", str, "")
        if client is not None and type(client) is not str:
            client = _opt(obj, "client", str)
        seq = get("seq")
        if seq is not None and type(seq) is not int:
            seq = _opt(obj, "seq", int)
        body = get("body")
        origin = get("origin")
        return cls(
            id_, ts, method, target, tag, scheme, host, _headers(get("headers")),
            None if body is None else _unb64(body, "body"),
            client,
            None if origin is None else Origin.from_wire(origin),
            seq,
        )


Timeline = tuple[tuple[float, int], ...]
MAX_TIMELINE_POINTS = 1024  # what a decoder accepts; the replayer writes at most 64


@dataclass(frozen=True, slots=True)
class Response:
    """What one target answered to a replayed request (or why it did not).

    ``timeline``: when the body arrived, as (seconds since the request was sent, body
    bytes received so far) points in time order, the bytes counted off the wire (after
    de-chunking, before Content-Encoding is decoded); bounded, first and last arrivals
    kept (see docs/streaming.md). ``stream``: the response was read as a stream;
    ``stream_window_reached``: its window (seconds or bytes) closed it, which is neither an
    error nor a timeout. The three are new in schema 1 and written only when set: results
    without them decode as before."""

    status: int | None = None
    headers: Headers = ()
    body: bytes = b""
    truncated: bool = False
    latency: float | None = None
    ttfb: float | None = None
    error: str | None = None
    timeline: Timeline = ()
    stream: bool = False
    stream_window_reached: bool = False

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "headers": self.headers,
            "body": _b64(self.body),
            "truncated": self.truncated,
            "latency": self.latency,
            "ttfb": self.ttfb,
            "error": self.error,
        }
        if self.timeline:
            out["timeline"] = self.timeline
        if self.stream:
            out["stream"] = True
        if self.stream_window_reached:
            out["stream_window_reached"] = True
        return out

    @classmethod
    def from_wire(cls, obj: Any) -> Response:
        if not isinstance(obj, dict):
            raise RecordError("response must be a JSON object")
        get = obj.get
        status, body, latency, ttfb, error = get("status"), get("body"), get("latency"), get("ttfb"), get("error")
        if status is not None and type(status) is not int:
            status = _opt(obj, "status", int)
        if latency is not None and type(latency) is not float:
            latency = _opt_float(obj, "latency")
        if ttfb is not None and type(ttfb) is not float:
            ttfb = _opt_float(obj, "ttfb")
        if error is not None and type(error) is not str:
            error = _opt(obj, "error", str)
        timeline = get("timeline")
        return cls(
            status,
            _headers(get("headers")),
            b"" if body is None else _unb64(body, "body"),
            bool(get("truncated", False)),
            latency,
            ttfb,
            error,
            () if timeline is None else _timeline(timeline),
            bool(get("stream", False)),
            bool(get("stream_window_reached", False)),
        )


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """One replayed request with every target's response."""

    id: str
    request: RequestRecord
    endpoint: str
    scheduled: int
    sent: int
    responses: dict[str, Response] = field(default_factory=dict)
    origin: Origin | None = None

    @classmethod
    def from_wire(cls, obj: Any) -> ReplayResult:
        if not isinstance(obj, dict):
            raise RecordError("replay result must be a JSON object")
        _check_version(obj)
        get = obj.get
        id_, endpoint, scheduled, sent = get("id"), get("endpoint"), get("scheduled"), get("sent")
        if type(id_) is not str:
            id_ = _req(obj, "id", str)
        if type(endpoint) is not str:
            endpoint = _opt(obj, "endpoint", str, "")
        if type(scheduled) is not int:
            scheduled = _req(obj, "scheduled", int)
        if type(sent) is not int:
            sent = _req(obj, "sent", int)
        responses = get("responses") or {}
        if not isinstance(responses, dict):
            raise RecordError("responses must be an object")
        origin = get("origin")
        return cls(
            id_,
            RequestRecord.from_wire(get("request")),
            endpoint,
            scheduled,
            sent,
            {str(k): Response.from_wire(v) for k, v in responses.items()},
            None if origin is None else Origin.from_wire(origin),
        )


# -- bytes on the bus ------------------------------------------------------------------


def encode_request(record: RequestRecord) -> bytes:
    o = record.origin
    return encode_request_fields(
        record.id, record.ts, record.tag, record.method, record.scheme, record.host, record.target,
        record.headers, record.body, record.client,
        None if o is None else (o.status, o.bytes, o.duration, o.body_sha256),
        record.seq,
    )


def encode_request_fields(
    id: str, ts: int, tag: str, method: str, scheme: str, host: str, target: str,
    headers: Sequence[tuple[str, str]], body: bytes | None, client: str | None, origin: OriginFields | None,
    seq: int | None = None,
) -> bytes:
    """``encode_request`` of the RequestRecord these fields make, without making it (the
    collector encodes every logged request: this saves it the dataclasses)."""
    wire: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": id,
        "ts": ts,
        "tag": tag,
        "method": method,
        "scheme": scheme,
        "host": host,
        "target": target,
        "headers": headers,  # pairs: orjson writes a tuple as an array
        "body": None if body is None else _b64(body),
        "client": client,
        "origin": None if origin is None else _origin_wire(origin),
    }
    if seq is not None:  # absent, not null: records without one encode as before
        wire["seq"] = seq
    try:
        return orjson.dumps(wire)
    except TypeError:  # a lone surrogate: text holding bytes that are not UTF-8 (module docstring)
        _add_raw(wire)
        return orjson.dumps(wire)


def decode_request(data: bytes) -> RequestRecord:
    return RequestRecord.from_wire(_loads(data))


def partition_key(client: str | None, id: str) -> bytes:
    """A request's default partition key: the trusted client address, else the id."""
    return (client or id).encode("utf-8", "surrogateescape")


def encode_result(result: ReplayResult) -> bytes:
    return orjson.dumps({
        "v": SCHEMA_VERSION,
        "id": result.id,
        "request": orjson.Fragment(encode_request(result.request)),
        "endpoint": result.endpoint,
        "scheduled": result.scheduled,
        "sent": result.sent,
        "responses": {name: r.to_wire() for name, r in result.responses.items()},
        "origin": None if result.origin is None else result.origin.to_wire(),
    })


def decode_result(data: bytes) -> ReplayResult:
    return ReplayResult.from_wire(_loads(data))


def is_text(value: str) -> bool:
    """Whether ``value`` is plain Unicode text (no surrogate-escaped bytes): JSON can hold it."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_bytes(value: str) -> bytes:
    """The bytes a ``str`` field stands for (its surrogate-escaped bytes restored)."""
    return value.encode("utf-8", "surrogateescape")


def readable(value: str) -> str:
    """``value`` with each surrogate-escaped byte shown as U+FFFD: text any encoder takes
    (metric labels, SQLite, JSON), for display only."""
    if is_text(value):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def stable_id(*parts: object) -> str:
    """A stable request id from the parts of a log line that identify it."""
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


# -- helpers ---------------------------------------------------------------------------


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from exc


def _check_version(obj: dict[str, Any]) -> None:
    v = obj.get("v")
    if type(v) is not int:
        raise RecordError("missing schema version 'v'")
    if v > MAX_SCHEMA_VERSION:
        raise RecordError(f"schema version {v} is newer than this build understands ({MAX_SCHEMA_VERSION})")


def _add_raw(wire: dict[str, Any]) -> None:
    """Make a request's wire dict JSON-safe: a ``target``, ``host`` or header value holding
    bytes that are not UTF-8 becomes its readable form, its exact bytes go to ``raw`` and
    the version becomes 2."""
    raw: dict[str, Any] = {}
    for key in ("target", "host"):
        value = wire.get(key)
        if type(value) is str and not is_text(value):
            raw[key] = _b64(to_bytes(value))
            wire[key] = readable(value)
    pairs = []
    headers = []
    for i, (name, value) in enumerate(wire.get("headers") or ()):
        if not is_text(value):
            pairs.append([i, _b64(to_bytes(value))])
            value = readable(value)
        headers.append([readable(name), value])  # a name that is no text cannot be sent anyway
    wire["headers"] = headers
    if pairs:
        raw["headers"] = pairs
    for key in ("id", "tag", "method", "scheme", "client"):  # text by construction; never fail on it
        value = wire.get(key)
        if type(value) is str and not is_text(value):
            wire[key] = readable(value)
    if raw:
        wire["raw"] = raw
        wire["v"] = RAW_SCHEMA_VERSION


def _with_raw(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of wire dict ``obj`` whose ``target``, ``host`` and header values are the
    exact values that ``raw`` holds for them (surrogate-escaped where not UTF-8)."""
    raw = obj["raw"]
    if not isinstance(raw, dict):
        raise RecordError("raw must be an object")
    out = dict(obj)
    for key in ("target", "host"):
        if raw.get(key) is not None:
            out[key] = _raw_text(raw[key], f"raw.{key}")
    pairs = raw.get("headers")
    if pairs is not None:
        headers = obj.get("headers")
        if not isinstance(pairs, list) or not isinstance(headers, list):
            raise RecordError("raw.headers must be a list of [index, base64] pairs")
        headers = [list(h) if isinstance(h, list) else h for h in headers]
        for pair in pairs:
            if (
                not isinstance(pair, list) or len(pair) != 2 or type(pair[0]) is not int
                or not 0 <= pair[0] < len(headers) or not isinstance(headers[pair[0]], list)
            ):
                raise RecordError("raw.headers must be a list of [index, base64] pairs with indexes into headers")
            headers[pair[0]] = [headers[pair[0]][0], _raw_text(pair[1], "raw.headers")]
        out["headers"] = headers
    return out


def _raw_text(value: Any, key: str) -> str:
    if value is None:
        raise RecordError(f"field {key!r} must be base64 text")
    return _unb64(value, key).decode("utf-8", "surrogateescape")


def _req(obj: dict[str, Any], key: str, typ: type) -> Any:
    if key not in obj:
        raise RecordError(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise RecordError(f"field {key!r} must be {typ.__name__}, got {type(value).__name__}")
    return value


def _opt(obj: dict[str, Any], key: str, typ: type, default: Any = None) -> Any:
    """Member ``key``: ``default`` when absent or null, else it must be a ``typ``."""
    if obj.get(key) is None:
        return default
    return _req(obj, key, typ)


def _opt_float(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"field {key!r} must be a number")
    return float(value)


def _headers(value: Any) -> Headers:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RecordError("headers must be a list of [name, value] pairs")
    out = []
    for pair in value:
        if type(pair) is not list or len(pair) != 2:
            raise RecordError("headers must be a list of [name, value] string pairs")
        name, text = pair
        if type(name) is not str or type(text) is not str:
            raise RecordError("headers must be a list of [name, value] string pairs")
        out.append((name, text))
    return tuple(out)


def _timeline(value: Any) -> Timeline:
    if not isinstance(value, list) or len(value) > MAX_TIMELINE_POINTS:
        raise RecordError(f"timeline must be a list of at most {MAX_TIMELINE_POINTS} [seconds, bytes] pairs")
    out = []
    for point in value:
        if (
            not isinstance(point, list)
            or len(point) != 2
            or isinstance(point[0], bool)
            or not isinstance(point[0], (int, float))
            or isinstance(point[1], bool)
            or not isinstance(point[1], int)
        ):
            raise RecordError("timeline must be a list of [seconds, bytes] pairs")
        out.append((float(point[0]), point[1]))
    return tuple(out)


def _b64(data: bytes) -> str:
    return b2a_base64(data, newline=False).decode("ascii")


def _unb64(value: Any, key: str) -> bytes:
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be base64 text or null")
    try:
        return a2b_base64(value, strict_mode=True)
    except (Base64Error, ValueError) as exc:
        raise RecordError(f"field {key!r} is not valid base64") from exc
