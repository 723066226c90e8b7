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

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from shadowreplay.errors import RecordError

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


@dataclass(frozen=True, slots=True)
class Origin:
    """What production answered, as logged."""

    status: int | None = None
    bytes: int | None = None
    duration: float | None = None
    body_sha256: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "bytes": self.bytes, "duration": self.duration}
        if self.body_sha256 is not None:
            out["body_sha256"] = self.body_sha256
        return out

    @classmethod
    def from_wire(cls, obj: Any) -> Origin | None:
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise RecordError("origin must be an object or null")
        get = obj.get
        status, size, duration, sha = get("status"), get("bytes"), get("duration"), get("body_sha256")
        if (  # the common case, as orjson decodes it; anything else takes the checks below
            (status is None or type(status) is int) and (size is None or type(size) is int)
            and (duration is None or type(duration) is float) and (sha is None or type(sha) is str)
        ):
            return cls(status, size, duration, sha)
        return cls(
            status=_opt(obj, "status", int),
            bytes=_opt(obj, "bytes", int),
            duration=_opt_float(obj, "duration"),
            body_sha256=_opt(obj, "body_sha256", str),
        )


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
    # The collector's ingest clock (ns since the epoch, strictly increasing within one
    # collector process): the log order of records whose ``ts`` is equal. None when the
    # producer set none (then offset order stands in).
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

    def has_raw_bytes(self) -> bool:
        """Whether the target, host or a header value holds bytes that are not UTF-8
        (surrogate-escaped; see the module docstring)."""
        return not (is_text(self.target) and is_text(self.host) and all(is_text(v) for _, v in self.headers))

    def partition_key(self) -> bytes:
        """Default partition key: the trusted client address, else the id."""
        return (self.client or self.id).encode("utf-8", "surrogateescape")

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "ts": self.ts,
            "tag": self.tag,
            "method": self.method,
            "scheme": self.scheme,
            "host": self.host,
            "target": self.target,
            "headers": [[k, v] for k, v in self.headers],
            "body": _b64(self.body),
            "client": self.client,
            "origin": self.origin.to_wire() if self.origin is not None else None,
        }
        if self.seq is not None:  # absent, not null: records without one encode as before
            wire["seq"] = self.seq
        if self.has_raw_bytes():
            add_raw(wire)
        return wire

    @classmethod
    def from_wire(cls, obj: Any) -> RequestRecord:
        if not isinstance(obj, dict):
            raise RecordError("request record must be a JSON object")
        _check_version(obj)
        fast = _request_fast(cls, obj)
        if fast is not None:
            return fast
        if obj.get("raw") is not None:
            obj = _with_raw(obj)
        return cls(
            id=_req(obj, "id", str),
            ts=_req(obj, "ts", int),
            tag=_opt(obj, "tag", str) or "",
            method=_req(obj, "method", str),
            scheme=_opt(obj, "scheme", str) or "http",
            host=_opt(obj, "host", str) or "",
            target=_req(obj, "target", str),
            headers=_headers(obj.get("headers")),
            body=_unb64(obj.get("body"), "body"),
            client=_opt(obj, "client", str),
            origin=Origin.from_wire(obj.get("origin")),
            seq=_opt(obj, "seq", int),
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
            "headers": [[k, v] for k, v in self.headers],
            "body": _b64(self.body),
            "truncated": self.truncated,
            "latency": self.latency,
            "ttfb": self.ttfb,
            "error": self.error,
        }
        if self.timeline:
            out["timeline"] = [[t, n] for t, n in self.timeline]
        if self.stream:
            out["stream"] = True
        if self.stream_window_reached:
            out["stream_window_reached"] = True
        return out

    @classmethod
    def from_wire(cls, obj: Any) -> Response:
        if not isinstance(obj, dict):
            raise RecordError("response must be a JSON object")
        return cls(
            status=_opt(obj, "status", int),
            headers=_headers(obj.get("headers")),
            body=_unb64(obj.get("body"), "body") or b"",
            truncated=bool(obj.get("truncated", False)),
            latency=_opt_float(obj, "latency"),
            ttfb=_opt_float(obj, "ttfb"),
            error=_opt(obj, "error", str),
            timeline=_timeline(obj.get("timeline")),
            stream=bool(obj.get("stream", False)),
            stream_window_reached=bool(obj.get("stream_window_reached", False)),
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

    def to_wire(self) -> dict[str, Any]:
        return self._wire(self.request.to_wire())

    def _wire(self, request: Any) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "request": request,
            "endpoint": self.endpoint,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "responses": {name: r.to_wire() for name, r in self.responses.items()},
            "origin": self.origin.to_wire() if self.origin is not None else None,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> ReplayResult:
        if not isinstance(obj, dict):
            raise RecordError("replay result must be a JSON object")
        _check_version(obj)
        responses = obj.get("responses") or {}
        if not isinstance(responses, dict):
            raise RecordError("responses must be an object")
        return cls(
            id=_req(obj, "id", str),
            request=RequestRecord.from_wire(obj.get("request")),
            endpoint=_opt(obj, "endpoint", str) or "",
            scheduled=_req(obj, "scheduled", int),
            sent=_req(obj, "sent", int),
            responses={str(k): Response.from_wire(v) for k, v in responses.items()},
            origin=Origin.from_wire(obj.get("origin")),
        )


def encode_request(record: RequestRecord) -> bytes:
    return orjson.dumps(record.to_wire())


def decode_request(data: bytes) -> RequestRecord:
    return RequestRecord.from_wire(_loads(data))


def encode_result(result: ReplayResult, request_json: bytes | None = None) -> bytes:
    """``request_json``, when given, is ``encode_request(result.request)`` already made
    (e.g. the bus message the request was decoded from, when no rule changed it): it is
    embedded as is instead of being encoded again. The output is the same bytes."""
    if request_json is None:
        return orjson.dumps(result.to_wire())
    return orjson.dumps(result._wire(orjson.Fragment(request_json)))


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


def add_raw(wire: dict[str, Any]) -> None:
    """Make a request's wire dict (``RequestRecord.to_wire`` or the collector's own) JSON-safe:
    a ``target``, ``host`` or header value holding bytes that are not UTF-8 becomes its
    readable form, its exact bytes go to ``raw`` and the version becomes 2."""
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


def _request_fast(cls: type[RequestRecord], obj: dict[str, Any]) -> RequestRecord | None:
    """``RequestRecord.from_wire`` for the well-formed common case (exact JSON types, as
    orjson decodes them), or None: then the general path decides (and names the fault)."""
    get = obj.get
    if get("raw") is not None:
        return None
    id_, ts, method, target = get("id"), get("ts"), get("method"), get("target")
    tag, scheme, host, client, seq = get("tag"), get("scheme"), get("host"), get("client"), get("seq")
    if not (
        type(id_) is str and type(ts) is int and type(method) is str and type(target) is str
        and (tag is None or type(tag) is str) and (scheme is None or type(scheme) is str)
        and (host is None or type(host) is str) and (client is None or type(client) is str)
        and (seq is None or type(seq) is int)
    ):
        return None
    wire_headers = get("headers")
    headers: Headers = ()
    if wire_headers is not None:
        if type(wire_headers) is not list:
            return None
        pairs = []
        for pair in wire_headers:
            if type(pair) is not list or len(pair) != 2:
                return None
            name, value = pair
            if type(name) is not str or type(value) is not str:
                return None
            pairs.append((name, value))
        headers = tuple(pairs)
    body = get("body")
    origin = get("origin")
    return cls(
        id=id_,
        ts=ts,
        tag=tag or "",
        method=method,
        scheme=scheme or "http",
        host=host or "",
        target=target,
        headers=headers,
        body=None if body is None else _unb64(body, "body"),
        client=client,
        origin=None if origin is None else Origin.from_wire(origin),
        seq=seq,
    )


def _check_version(obj: dict[str, Any]) -> None:
    v = obj.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise RecordError("missing schema version 'v'")
    if v > MAX_SCHEMA_VERSION:
        raise RecordError(f"schema version {v} is newer than this build understands ({MAX_SCHEMA_VERSION})")


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
    data = _unb64(value, key)
    if data is None:
        raise RecordError(f"field {key!r} must be base64 text")
    return data.decode("utf-8", "surrogateescape")


def _req(obj: dict[str, Any], key: str, typ: type) -> Any:
    if key not in obj:
        raise RecordError(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise RecordError(f"field {key!r} must be {typ.__name__}, got {type(value).__name__}")
    return value


def _opt(obj: dict[str, Any], key: str, typ: type) -> Any:
    if obj.get(key) is None:
        return None
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
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], str)
        ):
            raise RecordError("headers must be a list of [name, value] string pairs")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _timeline(value: Any) -> Timeline:
    if value is None:
        return ()
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


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(value: Any, key: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be base64 text or null")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(f"field {key!r} is not valid base64") from exc
