"""A lean HTTP/1.1 client for replaying: keep-alive connections, one request at a time each.

The replayer's default client (``replayer.http_client = "builtin"``). It does what a
replay needs and nothing else, at about a third of aiohttp's cost per request, which is
what lets one process replay faster than a bare aiohttp loop can:

* the request goes out as given: the request-target byte for byte, the headers in order
  with their spelling, the body with a recomputed ``Content-Length``; header names and
  values are checked (no CR, LF or NUL: a logged header cannot smuggle a second request);
* the response is framed as RFC 9112 §6.3 says (no body after HEAD, 1xx, 204 and 304;
  chunked; ``Content-Length``; else until the peer closes), interim 1xx responses are
  skipped, and a ``Content-Encoding`` of gzip, deflate or br is decoded as it streams in;
* the body is kept up to a cap: past it the response is ``truncated`` and the connection
  dropped, not drained; time to first byte is when the first response byte arrived;
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

from shadowreplay.record import Headers

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one response
MAX_CHUNK_LINE = 4096
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NO_BODY_STATUS = frozenset({204, 304})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_good_names: set[str] = set()  # header names already checked (they repeat in every request)
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: [^\r\n]*)?\Z")


class HTTPFailure(Exception):
    """A request that got no usable response; ``kind`` names why (a result's error kind)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: Headers
    body: bytes
    truncated: bool
    ttfb: float


def check_header(name: str, value: str) -> None:
    """Raise HTTPFailure("request") for a header that cannot go on the wire as is."""
    if name not in _good_names:
        if not _TOKEN.match(name):
            raise HTTPFailure("request", f"header name {name!r} is not a token")
        if len(_good_names) < 4096:
            _good_names.add(name)
    if "\n" in value or "\r" in value or "\x00" in value:
        raise HTTPFailure("request", f"header {name}: value contains CR, LF or NUL")


def build_request(method: str, target: str, host: str, headers: list[tuple[str, str]], body: bytes | None) -> bytes:
    """The bytes of one request: request line, Host, headers in order, Content-Length, body."""
    if not _TOKEN.match(method):
        raise HTTPFailure("request", f"method {method!r} is not a token")
    if not target or _BAD_TARGET.search(target):
        raise HTTPFailure("request", f"request-target {target!r} contains whitespace or control characters")
    lines = [f"{method} {target} HTTP/1.1"]
    if host:
        lines.append(f"Host: {host}")
    for name, value in headers:
        check_header(name, value)
        lines.append(f"{name}: {value}")
    if body or (body is not None and method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    try:
        head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise HTTPFailure("request", f"the request head cannot be encoded: {exc}") from exc
    return head + body if body else head


class _Decoder:
    """Content-Encoding gzip, deflate (zlib or raw) or br, decoded incrementally."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._z: Any = None
        if encoding == "gzip":
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "br":
            self._z = brotli.Decompressor()

    def decode(self, data: bytes, limit: int) -> bytes:
        """Up to ``limit`` decoded bytes of ``data`` (more may exist: the caller stops then)."""
        try:
            if self._z is None:  # deflate: a zlib stream, or raw deflate from broken servers
                zlib_header = len(data) < 2 or (data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0)
                self._z = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
            if self._encoding == "br":
                return bytes(self._z.process(data, output_buffer_limit=max(limit, 1)))[:limit]
            return bytes(self._z.decompress(data, max(limit, 1)))[:limit]
        except (zlib.error, brotli.error) as exc:
            raise HTTPFailure("protocol", f"cannot decode the {self._encoding} body: {exc}") from exc


class _Parser:
    """One response: fed bytes, says when it is complete (and whether the connection lives on)."""

    __slots__ = ("_buf", "_cap", "_chunk_left", "_decoder", "_head_request", "_left", "_mode",
                 "body", "headers", "keep_alive", "status", "truncated")

    def __init__(self, head_request: bool, cap: int) -> None:
        self._head_request = head_request
        self._cap = cap
        self._buf = bytearray()
        self._mode = "head"  # head, length, chunked, eof, trailers, done
        self._left = 0
        # chunked: data bytes of the current chunk still to come; -1: a size line is next,
        # -2: the CRLF that ends a chunk's data
        self._chunk_left = -1
        self._decoder: _Decoder | None = None
        self.status = 0
        self.headers: Headers = ()
        self.body = bytearray()
        self.truncated = False
        self.keep_alive = True

    def feed(self, data: bytes) -> bool:
        """Take the next bytes; True once the response is complete (or truncated at the cap)."""
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

    def _parse_head(self) -> bool:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise HTTPFailure("protocol", f"response head longer than {MAX_HEAD_BYTES} bytes")
                if self._buf and not b"HTTP/".startswith(bytes(self._buf[:5])):
                    raise HTTPFailure("protocol", f"not an HTTP response: {bytes(self._buf[:40])!r}")
                return False
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            lines = head.split(b"\r\n")
            m = _STATUS_LINE.match(lines[0])
            if m is None:
                raise HTTPFailure("protocol", f"bad status line {lines[0][:80]!r}")
            status = int(m.group(3))
            if 100 <= status < 200:
                if status == 101:
                    raise HTTPFailure("protocol", "the target switched protocols (101)")
                continue  # an interim response (100 Continue, 103 Early Hints): the real one follows
            try:
                text = b"\n".join(lines[1:]).decode("utf-8")
            except UnicodeDecodeError:
                text = b"\n".join(lines[1:]).decode("latin-1")
            headers = []
            length: int | None = None
            chunked = False
            encoding = ""
            connection = ""
            for line in text.split("\n") if text else ():
                name, sep, value = line.partition(":")
                if not sep or not _TOKEN.match(name):
                    raise HTTPFailure("protocol", f"bad header line {line[:80]!r}")
                value = value.strip(" \t")
                headers.append((name, value))
                lname = name.lower()
                if lname == "content-length":
                    if not value.isdigit() or (length is not None and int(value) != length):
                        raise HTTPFailure("protocol", f"bad Content-Length {value!r}")
                    length = int(value)
                elif lname == "transfer-encoding":
                    chunked = value.lower().rsplit(",", 1)[-1].strip() == "chunked"
                    length = -1  # Transfer-Encoding overrides Content-Length
                elif lname == "content-encoding":
                    encoding = value.strip().lower()
                elif lname == "connection":
                    connection = value.lower()
            self.status = status
            self.headers = tuple(headers)
            minor = int(m.group(2))
            if "close" in connection or (int(m.group(1)) == 1 and minor == 0 and "keep-alive" not in connection):
                self.keep_alive = False
            if encoding in ("gzip", "x-gzip", "deflate", "br"):
                self._decoder = _Decoder("gzip" if encoding == "x-gzip" else encoding)
            if self._head_request or status in _NO_BODY_STATUS:
                self._mode = "done"
                if self._buf:
                    self.keep_alive = False  # bytes after a bodiless response: out of step
            elif chunked:
                self._mode = "chunked"
            elif length is not None and length >= 0:
                self._left = length
                self._mode = "length" if length else "done"
            else:
                self._mode = "eof"
                self.keep_alive = False
            return True

    def _parse_chunked(self) -> bool:
        buf = self._buf
        pos = 0
        try:
            while True:
                left = self._chunk_left
                if self._mode == "trailers":
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        if len(buf) - pos > MAX_HEAD_BYTES:
                            raise HTTPFailure("protocol", "chunked trailers too long")
                        return False
                    line_empty = end == pos
                    pos = end + 2
                    if line_empty:
                        self._mode = "done"
                        if pos < len(buf):
                            self.keep_alive = False  # bytes after the response: out of step
                        return True
                elif left > 0:  # chunk data
                    take = min(len(buf) - pos, left)
                    if take <= 0:
                        return False
                    self._store(bytes(buf[pos : pos + take]))
                    if self._mode == "done":  # truncated at the cap
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
                else:  # a chunk-size line
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        if len(buf) - pos > MAX_CHUNK_LINE:
                            raise HTTPFailure("protocol", "chunk size line too long")
                        return False
                    size_text = bytes(buf[pos:end]).split(b";", 1)[0].strip()
                    if not size_text or size_text.lstrip(b"0123456789abcdefABCDEF"):
                        raise HTTPFailure("protocol", f"bad chunk size {size_text[:20]!r}")
                    size = int(size_text, 16)
                    pos = end + 2
                    if size == 0:
                        self._mode = "trailers"
                    else:
                        self._chunk_left = size
        finally:
            del buf[:pos]

    def _store(self, data: bytes) -> None:
        """Keep ``data`` (decoded) up to the cap; past it the response is truncated and done."""
        if not data:
            return
        room = self._cap - len(self.body)
        if self._decoder is not None:
            data = self._decoder.decode(data, room + 1)
        if len(data) > room:
            self.body += data[:room]
            self.truncated = True
            self.keep_alive = False  # the rest is not drained: the connection goes
            self._mode = "done"
        else:
            self.body += data


class _Writes:
    """The requests of one event loop turn, written back to back once the turn's other
    callbacks have run. A target then finds several requests at each wakeup instead of
    being woken for each (nginx on loopback: 0.04 sleeps a request instead of 0.5, a quarter
    less CPU a request, and a tenth less for the replayer's event loop). A request waits for
    the rest of its turn: microseconds when paced, more only when the loop is flat out."""

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

    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.uses = 0
        self._parser: _Parser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._first_byte = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: this connection cannot be trusted again
            self.close()
            return
        if not self._first_byte:
            self._first_byte = time.perf_counter()
        try:
            done = parser.feed(data)
        except HTTPFailure as exc:
            self._fail(exc)
            self.close()
            return
        if done:
            self._wake()

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

    async def exchange(self, request: bytes, head_request: bool, cap: int) -> tuple[_Parser, float]:
        """Send ``request``; (the complete parser, time of its first byte)."""
        if self.closed or self.transport is None:
            raise HTTPFailure("reset", "the target had closed the connection")
        parser = _Parser(head_request, cap)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._parser, self._waiter, self._first_byte = parser, waiter, 0.0
        self.uses += 1
        self._writes.add(self, request, waiter)
        try:
            await waiter
            return parser, self._first_byte
        finally:
            self._parser, self._waiter = None, None

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

    async def request(
        self, method: str, target: str, host: str, headers: list[tuple[str, str]], body: bytes | None, cap: int
    ) -> RawResponse:
        """One request and its response. Raises HTTPFailure (or TimeoutError from the caller's timeout)."""
        wire = build_request(method, self.prefix + target, host or self.authority, headers, body)
        head_request = method == "HEAD"
        retry = method in IDEMPOTENT
        while True:
            conn = await self._acquire()
            reused = conn.uses > 0
            keep = False
            try:
                parser, first = await conn.exchange(wire, head_request, cap)
                keep = parser.keep_alive and not conn.closed
            except HTTPFailure as exc:
                if exc.kind == "reset" and reused and retry:
                    retry = False  # a keep-alive connection the peer had closed: once more, fresh
                    continue
                raise
            finally:
                self._release(conn, keep)
            return RawResponse(parser.status, parser.headers, bytes(parser.body), parser.truncated, first)

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
                lambda: _Connection(self._writes), self.host, self.port, ssl=self._ssl,
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
