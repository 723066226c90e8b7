"""A lean HTTP/1.1 client for replaying: keep-alive connections, one request at a time each.

The replayer's only client. It does what a replay needs and nothing else, so it costs
much less CPU per request than a general-purpose client, which is what lets one process
replay faster than a bare aiohttp loop can (bench/replayer.py; figures in
bench/README.md). docs/http-client.md is the user's page; in short:

* the request goes out as given: the request-target byte for byte, the headers in order
  with their spelling, the body with a recomputed ``Content-Length``. ``build_request``
  refuses anything that could change the request's meaning on the wire: a method or
  header name that is not a token, a target or Host that is not what its grammar allows,
  a control byte (CR, LF, NUL, ...) anywhere in a value;
* the response is read as RFC 9112 says a user agent reads one, and as h11 (the reference
  the differential test holds this parser to) reads it: line ends CRLF or a bare LF,
  obs-fold replaced by a space, a ``Transfer-Encoding`` of ``chunked`` wins over any
  ``Content-Length`` (the connection is then not reused), no body after HEAD, 1xx, 204
  and 304, else until the peer closes; interim 1xx responses are skipped (at most
  ``MAX_INTERIM``), chunk extensions ignored, trailers checked and dropped; every head of a
  response shares ``MAX_HEAD_BYTES``, trailers have ``MAX_TRAILER_BYTES`` and
  ``MAX_TRAILER_FIELDS``, whatever the segmentation;
* a ``Content-Encoding`` of gzip, deflate (zlib or raw) or br is decoded as it streams in;
  the body is kept up to a cap: past it the response is ``truncated`` and the connection
  dropped, not drained; time to first byte is when the first response byte arrived, and
  the body's arrival is kept as a bounded ``Timeline``;
* a response that streams (``StreamWindow``: forced for the endpoint, ``text/event-stream``,
  or a chunked or close-delimited body still arriving after a threshold) is read for its
  window of seconds and bytes, then closed: ``window_reached``, not an error;
* the requests made in one event loop turn are written back to back at its end
  (``_Writes``), so a target finds several at each wakeup;
* connections are pooled per target up to its concurrency (a request beyond it waits
  for a free one), reused while both sides keep them alive; a request that finds a
  reused connection already closed by the peer (nothing received) is retried once on a
  fresh one if its method is idempotent;
* failures raise ``HTTPFailure`` whose ``kind`` is the error kind results carry:
  ``connect``, ``tls``, ``reset``, ``protocol``, ``request`` (timeouts are the caller's:
  ``TimeoutError``).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import brotli

from shadowreplay.contract.record import Headers

MAX_HEAD_BYTES = 64 * 1024  # every head of one response, interim ones included
MAX_INTERIM = 16  # 1xx responses before the final one
MAX_TRAILER_BYTES = 16 * 1024
MAX_TRAILER_FIELDS = 64
MAX_CHUNK_LINE = 4096
MAX_CHECKED_NAMES = 4096  # header names a pool remembers as checked
TIMELINE_POINTS = 64
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NO_BODY_STATUS = frozenset({204, 304})
_FRAMING_FIELDS = frozenset({"content-length", "transfer-encoding", "content-encoding", "content-type", "connection"})
# A stream's window timer fires first; the request's deadline moves past it by this much
# so that only a stalled event loop could see a timeout instead.
_WINDOW_GRACE_SECONDS = 1.0

# -- grammar (RFC 9110/9112), responses read the way h11 reads them ------------------------
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(_TCHAR + r"+\Z")
_VCHAR = r"[^\x00\t\n\x0b\x0c\r ]"  # visible or obs-text: no NUL, no whitespace
_FIELD_LINE = re.compile(rf"({_TCHAR}+):[ \t]*((?:{_VCHAR}+(?:[ \t]+{_VCHAR}+)*)?)[ \t]*\Z")
_BAD_FIELD_CHAR = re.compile(r"[\x00\x0b\x0c\r]")  # in a field line, besides LF: what _VCHAR and OWS exclude
_STATUS_LINE = re.compile(rf"HTTP/([0-9])\.([0-9]) ([0-9]{{3}})(?: (?:[ \t]|{_VCHAR})*)?\Z")
_HEAD_END = re.compile(rb"\n\r?\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*\Z")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,20}\Z")
# Requests: Host is uri-host [":" port] (an IP literal, or a reg-name: no "@", "/", space);
# the target is origin-form or "*"; a value has no control byte but HTAB.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::[0-9]*)?\Z")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
# In a header value only the bytes that end a line or a string are refused: CR and LF
# (a second request smuggled in) and NUL. Other control bytes are invalid per RFC 9110
# but harmless to framing, and production accepted them when it logged the request, so
# they are replayed as logged.
_CTL = re.compile(r"[\x00\r\n]")


class HTTPFailure(Exception):
    """A request that got no usable response; ``kind`` names why (a result's error kind)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class StreamWindow:
    """How a streaming response is read. ``forced``: the endpoint is known to stream (it is a
    stream from its head on); otherwise a ``text/event-stream`` response is one from its
    head, and a chunked or close-delimited body still arriving ``chunked_after_seconds``
    after the send becomes one then (0: never). A stream is read until ``window_seconds``
    after the send or ``window_bytes`` of body, then closed."""

    window_seconds: float
    window_bytes: int
    chunked_after_seconds: float = 0.0
    forced: bool = False


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: Headers
    body: bytes
    truncated: bool
    ttfb: float
    timeline: tuple[tuple[float, int], ...] = ()
    stream: bool = False
    window_reached: bool = False


def build_request(
    method: str,
    target: str,
    host: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    checked_names: set[str] | None = None,
) -> bytes:
    """The bytes of one request: request line, Host, headers in order, Content-Length, body.

    Raises HTTPFailure("request") for anything that could not go on the wire as it is: a
    method or header name that is not a token, a target that is not origin-form (or "*") or
    holds a space or control byte, a Host that is not ``host[:port]``, a header value with
    CR, LF or NUL (no second request can be smuggled).
    ``checked_names`` (a pool's own set, bounded) remembers header names already checked."""
    if not _TOKEN.match(method):
        raise HTTPFailure("request", f"method {method!r} is not a token")
    if not (target.startswith("/") or target == "*") or _BAD_TARGET.search(target):
        raise HTTPFailure("request", f"request-target {target!r} is not origin-form without whitespace or controls")
    if not _HOST.match(host):
        raise HTTPFailure("request", f"Host {host!r} is not host[:port]")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers:
        if checked_names is None or name not in checked_names:
            if not _TOKEN.match(name):
                raise HTTPFailure("request", f"header name {name!r} is not a token")
            if checked_names is not None and len(checked_names) < MAX_CHECKED_NAMES:
                checked_names.add(name)
        lines.append(f"{name}: {value}")
    values = "".join([v for _, v in headers])
    # isprintable() is False for any control byte (and for HTAB, some Unicode spaces and
    # the escapes of bytes that are not UTF-8): only then does the regex look for what is refused.
    if not values.isprintable() and _CTL.search(values):
        bad = next(n for n, v in headers if _CTL.search(v))
        raise HTTPFailure("request", f"header {bad}: value contains CR, LF or NUL")
    if body or (body is not None and method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    text = "\r\n".join(lines)
    try:
        head = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise HTTPFailure("request", f"the request head cannot be encoded: {exc}") from exc
    return head + body if body else head


class _Decoder:
    """Content-Encoding gzip, deflate (zlib or raw) or br, decoded incrementally."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._z: Any = None
        self._start = b""  # deflate: its first bytes, until two tell zlib from raw
        if encoding == "gzip":
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "br":
            self._z = brotli.Decompressor()

    def decode(self, data: bytes, limit: int) -> bytes:
        """Up to ``limit`` decoded bytes of ``data`` (more may exist: the caller stops then)."""
        try:
            if self._z is None:  # deflate: a zlib stream, or raw deflate from broken servers
                data = self._start + data
                if len(data) < 2:
                    self._start = data
                    return b""
                zlib_header = data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
                self._z = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
            if self._encoding == "br":
                return bytes(self._z.process(data, output_buffer_limit=max(limit, 1)))[:limit]
            return bytes(self._z.decompress(data, max(limit, 1)))[:limit]
        except (zlib.error, brotli.error) as exc:
            raise HTTPFailure("protocol", f"cannot decode the {self._encoding} body: {exc}") from exc


class Timeline:
    """When a response's body arrived: points (seconds since the request was sent, body bytes
    received so far), at most ``TIMELINE_POINTS``. Bytes are counted as they come off the
    wire (after de-chunking, before Content-Encoding is decoded), so a compressed stream
    shows its real cadence. The first point is the first body byte and the last point the
    last one seen; when the list is full every other point goes and later points closer than
    the new spacing to their predecessor are merged into the last one."""

    __slots__ = ("_gap", "points")

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []
        self._gap = 0.0

    def add(self, seconds: float, total: int) -> None:
        points = self.points
        if len(points) >= 2 and seconds - points[-2][0] < self._gap:
            points[-1] = (seconds, total)
            return
        points.append((seconds, total))
        if len(points) > TIMELINE_POINTS:
            kept = points[:-1:2]
            kept.append(points[-1])
            self._gap = max(self._gap * 2, (kept[-1][0] - kept[0][0]) / TIMELINE_POINTS)
            self.points = kept

    def freeze(self) -> tuple[tuple[float, int], ...]:
        return tuple((round(t, 6), n) for t, n in self.points)


def _decode_head(head: bytes) -> str:
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError:
        return head.decode("latin-1")


def _field_lines(lines: list[str], where: str) -> list[tuple[str, str]]:
    """``name: value`` lines as pairs, each obs-fold replaced by one SP (RFC 9112 §5.2)."""
    fields: list[tuple[str, str]] = []
    folded: list[str] = []
    for line in lines:
        if line[:1] == " " or line[:1] == "\t":
            if not folded:
                raise HTTPFailure("protocol", f"{where} begin with a continuation line")
            folded[-1] += " " + line.lstrip(" \t")
        else:
            folded.append(line)
    for line in folded:
        m = _FIELD_LINE.match(line)
        if m is None:
            raise HTTPFailure("protocol", f"bad {where} line {line[:80]!r}")
        fields.append((m.group(1), m.group(2)))
    return fields


def _fields(text: str, start: int, tokens: set[str]) -> list[tuple[str, str]]:
    """The field lines of ``text`` from ``start`` (each ending with LF) as pairs. ``tokens``:
    names already known to be tokens (a pool's own set, bounded)."""
    block = text[start:-1]
    if not block:
        return []
    # The common case in one pass over the bytes: no fold, no refused character; each line
    # then only needs its name checked. Anything else takes the line-by-line reading.
    if _BAD_FIELD_CHAR.search(block) is None and "\n " not in block and "\n\t" not in block and block[0] not in " \t":
        fields = []
        for line in block.split("\n"):
            name, sep, value = line.partition(":")
            if not sep or (name not in tokens and not _TOKEN.match(name)):
                break
            if len(tokens) < MAX_CHECKED_NAMES:
                tokens.add(name)
            fields.append((name, value.strip(" \t")))
        else:
            return fields
    return _field_lines(block.split("\n"), "header")


def _lines(block: bytes) -> list[str]:
    """The lines of a head or trailer section that ends with its last line's LF."""
    lines = _decode_head(block).replace("\r\n", "\n").split("\n")
    lines.pop()  # "" after the last LF
    return lines


class _Parser:
    """One response: fed bytes, says when it is complete (and whether the connection lives on)."""

    __slots__ = ("_buf", "_cap", "_chunk_left", "_decoder", "_head_left", "_head_request", "_interim", "_left",
                 "_mode", "_scan", "_tokens", "body", "event_stream", "headers", "keep_alive", "received", "status",
                 "stream", "truncated", "window_reached")

    def __init__(self, head_request: bool, cap: int, tokens: set[str] | None = None) -> None:
        self._head_request = head_request
        self._tokens = tokens if tokens is not None else set()
        self._cap = cap
        self._buf = bytearray()
        self._scan = 0  # where the search for the end of the head resumes
        self._head_left = MAX_HEAD_BYTES
        self._interim = 0
        self._mode = "head"  # head, length, chunked, eof, trailers, done
        self._left = 0
        # chunked: data bytes of the current chunk still to come; -1: a size line is next,
        # -2: the CRLF that ends a chunk's data
        self._chunk_left = -1
        self._decoder: _Decoder | None = None
        self.status = 0
        self.headers: Headers = ()
        self.body = bytearray()
        self.received = 0  # body bytes off the wire (de-chunked, not yet decoded)
        self.truncated = False
        self.keep_alive = True
        self.event_stream = False  # Content-Type: text/event-stream
        self.stream = False
        self.window_reached = False

    def feed(self, data: bytes) -> bool:
        """Take the next bytes; True once the response is complete (or cut at the cap)."""
        if self._mode == "done":
            if data:
                self.keep_alive = False  # bytes after the response: the stream is out of step
            return True
        if self._mode == "head":
            self._buf += data
            if not self._parse_head():
                return False
            data, self._buf = bytes(self._buf), bytearray()
            if self._mode == "done":
                return True
        if self._mode == "length":
            take = data[: self._left]
            self._left -= len(take)
            if len(data) > len(take):
                self.keep_alive = False  # more than the response: the stream is out of step
            self._store(take)
            if self._left == 0:
                self._mode = "done"
            return self._mode == "done"
        if self._mode == "chunked" or self._mode == "trailers":
            self._buf += data
            return self._parse_chunked()
        self._store(data)  # "eof": the body runs until the peer closes
        return self._mode == "done"

    def feed_eof(self) -> bool:
        """The peer closed: True if that completes the response (a body read until close)."""
        if self._mode == "eof":
            self._mode = "done"
            self.keep_alive = False
            return True
        return self._mode == "done"

    @property
    def started(self) -> bool:
        return bool(self._buf) or self._mode != "head"

    @property
    def done(self) -> bool:
        return self._mode == "done"

    @property
    def open_ended(self) -> bool:
        """In a body whose end the head did not announce (chunked or until close)."""
        return self._mode in ("chunked", "eof", "trailers")

    def become_stream(self, window_bytes: int) -> bool:
        """From now on a stream read up to ``window_bytes`` of body; True if that is reached."""
        self.stream = True
        self._cap = min(self._cap, window_bytes)
        if len(self.body) > self._cap:
            del self.body[self._cap :]
            self.end_window()
        return self._mode == "done"

    def end_window(self) -> None:
        """The stream's window is over: the response is what arrived within it."""
        if self._mode != "done":
            self.window_reached = True
            self.keep_alive = False
            self._mode = "done"

    def _parse_head(self) -> bool:
        buf = self._buf
        while True:
            m = _HEAD_END.search(buf, self._scan)
            if m is None:
                if len(buf) > self._head_left:
                    raise HTTPFailure("protocol", f"response head longer than {MAX_HEAD_BYTES} bytes")
                if not b"HTTP/".startswith(bytes(buf[:5])):
                    raise HTTPFailure("protocol", f"not an HTTP response: {bytes(buf[:40])!r}")
                self._scan = max(0, len(buf) - 2)
                return False
            end = m.end()
            if end > self._head_left:
                raise HTTPFailure("protocol", f"response head longer than {MAX_HEAD_BYTES} bytes")
            self._head_left -= end
            text = _decode_head(bytes(buf[: m.start() + 1]))
            del buf[:end]
            self._scan = 0
            if "\r" in text:
                text = text.replace("\r\n", "\n")
            status_end = text.find("\n")
            sm = _STATUS_LINE.match(text, 0, status_end)
            if sm is None:
                raise HTTPFailure("protocol", f"bad status line {text[:min(status_end, 80)]!r}")
            status = int(sm.group(3))
            fields = _fields(text, status_end + 1, self._tokens)
            if status < 200:
                if status < 100:
                    raise HTTPFailure("protocol", f"bad status code {status}")
                if status == 101:
                    raise HTTPFailure("protocol", "the target switched protocols (101)")
                self._interim += 1
                if self._interim > MAX_INTERIM:
                    raise HTTPFailure("protocol", f"more than {MAX_INTERIM} interim (1xx) responses")
                continue  # an interim response (100 Continue, 103 Early Hints): the real one follows
            self.status = status
            self.headers = tuple(fields)
            self._frame(fields, http10=sm.group(1) == "1" and sm.group(2) == "0")
            return True

    def _frame(self, fields: list[tuple[str, str]], http10: bool) -> None:  # noqa: C901 - one branch per field
        """Body framing from the final response's fields (RFC 9112 §6.3)."""
        length: int | None = None
        chunked = False
        encoding = ""
        keep_alive: bool | None = None
        for name, value in fields:
            lname = name.lower()
            if lname not in _FRAMING_FIELDS:
                continue
            if lname == "content-length":  # "5, 5" or repeats of one value: that value
                if value.isascii() and value.isdigit() and len(value) <= 20:
                    n = int(value)
                else:
                    values = {v.strip(" \t") for v in value.split(",")}
                    if len(values) != 1 or not _CONTENT_LENGTH.match(v := values.pop()):
                        raise HTTPFailure("protocol", f"bad Content-Length {value[:40]!r}")
                    n = int(v)
                if length is not None and n != length:
                    raise HTTPFailure("protocol", "conflicting Content-Length values")
                length = n
            elif lname == "transfer-encoding":
                # The only transfer coding a replay can read; applied once (RFC 9112 §7).
                if chunked or not (value.isascii() and value.lower() == "chunked"):
                    raise HTTPFailure("protocol", f"unsupported Transfer-Encoding {value[:40]!r}")
                chunked = True
            elif lname == "content-encoding":
                encoding = value.lower()
            elif lname == "content-type":
                ctype = value.lower()
                self.event_stream = ctype.startswith("text/event-stream") and ctype[17:18] in ("", ";", " ", "\t")
            else:  # connection
                tokens = {t.strip(" \t") for t in value.lower().split(",")}
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens and keep_alive is None:
                    keep_alive = True
        if keep_alive is False or (http10 and not keep_alive):
            self.keep_alive = False
        if chunked and (length is not None or http10):
            # Transfer-Encoding wins (RFC 9112 §6.3); the framing was ambiguous to someone,
            # so the connection is not used again (§6.1, §6.3).
            self.keep_alive = False
        if encoding in ("gzip", "x-gzip", "deflate", "br"):
            self._decoder = _Decoder("gzip" if encoding == "x-gzip" else encoding)
        if self._head_request or self.status in _NO_BODY_STATUS:
            self._mode = "done"
            if self._buf:
                self.keep_alive = False  # bytes after a bodiless response: out of step
        elif chunked:
            self._mode = "chunked"
        elif length is not None:
            self._left = length
            self._mode = "length" if length else "done"
        else:
            self._mode = "eof"
            self.keep_alive = False

    def _parse_chunked(self) -> bool:  # noqa: C901 - one state machine
        buf = self._buf
        pos = 0
        try:
            while True:
                left = self._chunk_left
                if self._mode == "trailers":
                    done, pos = self._parse_trailers(pos)
                    return done
                if left > 0:  # chunk data
                    take = min(len(buf) - pos, left)
                    if take <= 0:
                        return False
                    self._store(bytes(buf[pos : pos + take]))
                    if self._mode == "done":  # cut at the cap
                        return True
                    pos += take
                    self._chunk_left = left - take or -2
                elif left == -2:  # the CRLF after a chunk's data
                    if len(buf) - pos < 2:
                        return False
                    if buf[pos : pos + 2] != b"\r\n":
                        raise HTTPFailure("protocol", "chunk data not followed by CRLF")
                    pos += 2
                    self._chunk_left = -1
                else:  # a chunk-size line, with extensions that are ignored
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        if len(buf) - pos > MAX_CHUNK_LINE:
                            raise HTTPFailure("protocol", "chunk size line too long")
                        return False
                    m = _CHUNK_SIZE.match(bytes(buf[pos:end]))
                    if m is None:
                        raise HTTPFailure("protocol", f"bad chunk size line {bytes(buf[pos:end])[:20]!r}")
                    size = int(m.group(1), 16)
                    pos = end + 2
                    if size == 0:
                        self._mode = "trailers"
                        self._head_left = MAX_TRAILER_BYTES
                    else:
                        self._chunk_left = size
        finally:
            del buf[:pos]

    def _parse_trailers(self, pos: int) -> tuple[bool, int]:
        """The trailer section after the last chunk, from ``pos``: checked, bounded, dropped.
        (complete?, where the unread bytes begin)."""
        buf = self._buf
        if buf[pos : pos + 1] == b"\n" or buf[pos : pos + 2] == b"\r\n":
            end = pos + (1 if buf[pos] == 10 else 2)
            lines: list[str] = []
        else:
            m = _HEAD_END.search(buf, pos)
            if m is None:
                if len(buf) - pos > self._head_left:
                    raise HTTPFailure("protocol", f"trailers longer than {MAX_TRAILER_BYTES} bytes")
                return False, pos
            end = m.end()
            if end - pos > self._head_left:
                raise HTTPFailure("protocol", f"trailers longer than {MAX_TRAILER_BYTES} bytes")
            lines = _lines(bytes(buf[pos : m.start() + 1]))
        if len(lines) > MAX_TRAILER_FIELDS:
            raise HTTPFailure("protocol", f"more than {MAX_TRAILER_FIELDS} trailer fields")
        _field_lines(lines, "trailer")
        self._mode = "done"
        if end < len(buf):
            self.keep_alive = False  # bytes after the response: out of step
        return True, end

    def _store(self, data: bytes) -> None:
        """Keep ``data`` (decoded) up to the cap; past it the response is cut and done:
        ``truncated`` at the body cap, ``window_reached`` at a stream's byte window."""
        if not data:
            return
        self.received += len(data)
        room = self._cap - len(self.body)
        if self._decoder is not None:
            data = self._decoder.decode(data, room + 1)
        if len(data) > room:
            self.body += data[:room]
            if self.stream:
                self.window_reached = True
            else:
                self.truncated = True
            self.keep_alive = False  # the rest is not drained: the connection goes
            self._mode = "done"
        else:
            self.body += data


class _Writes:
    """The requests of one event loop turn, written back to back once the turn's other
    callbacks have run. A target then finds several requests at each wakeup instead of
    being woken for each, which costs it (and the replayer) less CPU per request. A request
    waits for the rest of its turn: little when paced, more only when the loop is flat out."""

    __slots__ = ("_queued",)

    def __init__(self) -> None:
        self._queued: list[tuple[_Connection, bytes, asyncio.Future[None]]] = []

    def add(self, conn: _Connection, data: bytes, waiter: asyncio.Future[None]) -> None:
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued.append((conn, data, waiter))

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        for conn, data, waiter in queued:
            conn.send(data, waiter)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` sends a request and awaits its response."""

    def __init__(self, writes: _Writes, tokens: set[str]) -> None:
        self._writes = writes
        self._tokens = tokens
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.uses = 0
        self._parser: _Parser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._first_byte = 0.0
        self._sent_at = 0.0  # perf_counter origin of the timeline (the caller's send time)
        self._timeline = Timeline()
        self._window: StreamWindow | None = None
        self._deadline: asyncio.Timeout | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watching = False  # the head is in and the stream policy has been applied

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: this connection cannot be trusted again
            self.close()
            return
        now = time.perf_counter()
        if not self._first_byte:
            self._first_byte = now
        received = parser.received
        try:
            done = parser.feed(data)
        except HTTPFailure as exc:
            self._fail(exc)
            self.close()
            return
        if parser.received != received:
            self._timeline.add(now - self._sent_at, parser.received)
        if not self._watching and parser.status:
            self._watching = True
            if not done and self._window is not None:
                done = self._watch_stream(parser, self._window)
        if done:
            if self.transport is not None and self.transport.get_write_buffer_size():
                parser.keep_alive = False  # answered before the request was all written
            self._wake()

    def _watch_stream(self, parser: _Parser, window: StreamWindow) -> bool:
        """The head is in, the body is not: make it a stream now, or look again later."""
        if window.forced or parser.event_stream:
            return self._start_window(parser, window)
        if window.chunked_after_seconds > 0 and parser.open_ended:
            delay = window.chunked_after_seconds - (time.perf_counter() - self._sent_at)
            self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._still_streaming)
        return False

    def _still_streaming(self) -> None:
        self._timer = None
        parser, window = self._parser, self._window
        if parser is not None and window is not None and not parser.done and parser.open_ended:
            if self._start_window(parser, window):
                self._wake()
                self.close()

    def _start_window(self, parser: _Parser, window: StreamWindow) -> bool:
        if parser.become_stream(window.window_bytes):
            return True
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, window.window_seconds - (time.perf_counter() - self._sent_at))
        self._timer = loop.call_at(end, self._window_over)
        deadline = self._deadline
        if deadline is not None:
            when = deadline.when()
            if when is not None and when < end + _WINDOW_GRACE_SECONDS:
                deadline.reschedule(end + _WINDOW_GRACE_SECONDS)
        return False

    def _window_over(self) -> None:
        self._timer = None
        parser = self._parser
        if parser is not None and not parser.done:
            parser.end_window()
            self._wake()
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser = self._parser
        if parser is None:
            return
        if parser.feed_eof():
            self._wake()
        elif isinstance(exc, ssl.SSLError):
            self._fail(HTTPFailure("tls", f"TLS failed mid-response: {exc}"))
        elif parser.started:
            self._fail(HTTPFailure("protocol", "the target closed the connection mid-response"))
        else:
            self._fail(HTTPFailure("reset", f"the target closed the connection without answering{f': {exc}' if exc else ''}"))

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(
        self,
        request: bytes,
        head_request: bool,
        cap: int,
        sent_at: float,
        window: StreamWindow | None = None,
        deadline: asyncio.Timeout | None = None,
    ) -> tuple[_Parser, float, Timeline]:
        """Send ``request``; (the complete parser, time of its first byte, its body's
        timeline with times since ``sent_at``, a ``time.perf_counter()`` value)."""
        if self.closed or self.transport is None:
            raise HTTPFailure("reset", "the target had closed the connection")
        parser = _Parser(head_request, cap, self._tokens)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._parser, self._waiter, self._first_byte = parser, waiter, 0.0
        self._sent_at, self._window, self._deadline, self._watching = sent_at, window, deadline, False
        timeline = self._timeline = Timeline()
        self.uses += 1
        self._writes.add(self, request, waiter)
        try:
            await waiter
            return parser, self._first_byte, timeline
        finally:
            self._parser, self._waiter, self._window, self._deadline = None, None, None, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def send(self, request: bytes, waiter: asyncio.Future[None]) -> None:
        """Write the request that ``waiter`` awaits the response of, unless that exchange
        is over (cancelled: its connection is closed and never reused)."""
        if waiter.done() or waiter is not self._waiter:
            return
        if self.closed or self.transport is None:
            self._fail(HTTPFailure("reset", "the target had closed the connection"))
            return
        try:
            self.transport.write(request)
        except (RuntimeError, OSError) as exc:  # the transport closed under us
            self._fail(HTTPFailure("reset", f"cannot send on the connection: {exc}"))
        except Exception as exc:  # anything else reaches its request; the turn's other writes go on
            self._fail(exc)


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to one ``http(s)://host:port``, at most ``limit`` open."""

    def __init__(self, base_url: str, *, limit: int, tls_verify: bool = True) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"target URL must be http:// or https://host[:port][/prefix], got {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if self.port == default else f"{host}:{self.port}"
        self.prefix = parts.path.rstrip("/")
        self._limit = max(1, limit)
        self._ssl: ssl.SSLContext | None = None
        if self.tls:
            self._ssl = ssl.create_default_context()
            if not tls_verify:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._idle: list[_Connection] = []
        self._open = 0  # connections open or opening, idle or busy
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False
        self._writes = _Writes()
        self._checked_names: set[str] = set()

    async def request(
        self,
        method: str,
        target: str,
        host: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        cap: int,
        *,
        sent_at: float | None = None,
        window: StreamWindow | None = None,
        deadline: asyncio.Timeout | None = None,
    ) -> RawResponse:
        """One request and its response (``host`` "": this target's authority). ``sent_at``
        (a ``time.perf_counter()`` value, default now) is the origin of the timeline;
        ``window`` says how a stream is read; ``deadline``, the caller's ``asyncio.timeout``,
        is moved past a stream's window. Raises HTTPFailure (or TimeoutError from the
        caller's timeout)."""
        if sent_at is None:
            sent_at = time.perf_counter()
        wire = build_request(method, self.prefix + target, host or self.authority, headers, body, self._checked_names)
        head_request = method == "HEAD"
        retry = method in IDEMPOTENT
        while True:
            conn = await self._acquire()
            reused = conn.uses > 0
            keep = False
            try:
                parser, first, timeline = await conn.exchange(wire, head_request, cap, sent_at, window, deadline)
                keep = parser.keep_alive and not conn.closed
            except HTTPFailure as exc:
                if exc.kind == "reset" and reused and retry:
                    retry = False  # a keep-alive connection the peer had closed: once more, fresh
                    continue
                raise
            finally:
                self._release(conn, keep)
            return RawResponse(parser.status, parser.headers, bytes(parser.body), parser.truncated, first,
                               timeline.freeze(), parser.stream, parser.window_reached)

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
                self._open -= 1
            if self._closed:
                raise HTTPFailure("client", "the client is closed")
            if self._open < self._limit:
                self._open += 1
                return await self._connect()
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                got = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release(waiter.result(), True)  # handed over as we were cancelled: pass it on
                raise
            if got is None:
                return await self._connect()  # a slot was freed for us (counted already)
            if not got.closed:
                return got
            self._open -= 1

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self._writes, self._checked_names), self.host, self.port, ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
            )
        except BaseException as exc:
            self._release(None, False)
            if isinstance(exc, ssl.SSLError):
                raise HTTPFailure("tls", f"TLS handshake with {self.authority} failed: {exc}") from exc
            if isinstance(exc, OSError):
                raise HTTPFailure("connect", f"cannot connect to {self.authority}: {exc}") from exc
            raise
        return conn

    def _release(self, conn: _Connection | None, keep: bool) -> None:
        """Give ``conn`` back (``keep``: reusable) or drop it, waking the first waiter."""
        if conn is not None and not keep:
            conn.close()
        handed: _Connection | None = conn if keep and conn is not None else None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handed)  # a connection, or None: open one in this slot
                return
        if handed is not None and not self._closed:
            self._idle.append(handed)
        else:
            self._open -= 1
            if handed is not None:
                handed.close()

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._open -= len(self._idle)
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(HTTPFailure("client", "the client is closed"))
