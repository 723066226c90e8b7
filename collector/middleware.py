"""WSGI and ASGI middleware that records each request for shadowreplay.

Access logs rarely hold full headers and bodies; a Python service can send them itself.
The middleware observes each request — method, raw target, headers, body (up to a cap),
the peer address, status, response bytes, duration — and ships one record per request
with fluent-logger (``nanosecond_precision``, exact EventTime) in the shape the collector
maps by default (nginx variable names: ``request_method``, ``request_uri``,
``remote_addr``, ``http_<header>``, ``request_body``, ``status``, ...).

It never slows or fails the request it observes: records go into a bounded queue that a
background thread drains to the collector; when the queue is full the record is dropped
and counted (``RequestShipper.dropped``, logged), and any error while building a record
is counted (``RequestShipper.errors``) and swallowed. Bodies are captured as the app
reads them (nothing is read ahead); a body longer than ``max_body_bytes`` is not sent at
all (``request_body_truncated: "1"``), since replaying half a body would be wrong.

The client address is the socket peer (``REMOTE_ADDR`` / ``scope["client"]``), never a
client-supplied X-Forwarded-For (that one travels as an ordinary header).

    from shadowreplay.collector.middleware import RequestShipper, WSGIMiddleware
    shipper = RequestShipper("app.requests", "collector.internal", 24224)
    app = WSGIMiddleware(app, shipper)
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any, Protocol
from urllib.parse import quote

import msgpack

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_QUEUE = 10_000
_STOP = object()


class Sender(Protocol):
    """What ``RequestShipper`` needs from ``fluent.sender.FluentSender``."""

    def emit_with_time(self, label: str | None, timestamp: Any, data: dict[str, Any]) -> bool: ...

    def close(self) -> None: ...


def _event_time(ns: int) -> msgpack.ExtType:
    sec, nsec = divmod(ns, 1_000_000_000)
    return msgpack.ExtType(0, struct.pack(">II", sec, nsec))


class RequestShipper:
    """A bounded queue and one background thread sending records with fluent-logger."""

    def __init__(
        self,
        tag: str = "app.requests",
        host: str = "127.0.0.1",
        port: int = 24224,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        timeout_seconds: float = 3.0,
        sender: Sender | None = None,
    ) -> None:
        if sender is None:
            from fluent import sender as fluent_sender

            sender = fluent_sender.FluentSender(
                tag, host=host, port=port, timeout=timeout_seconds, nanosecond_precision=True
            )
        self._sender = sender
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.submitted = 0
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="shadowreplay-shipper", daemon=True)
        self._thread.start()

    def submit(self, time_ns: int, record: dict[str, Any]) -> bool:
        """Queue one record; False (and counted) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait((time_ns, record))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("shadowreplay middleware: queue full, %d records dropped so far", self.dropped)
            return False
        self.submitted += 1
        return True

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout_seconds``), then stop the thread."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                self._queue.put(_STOP, timeout=0.05)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._sender.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            time_ns, record = item
            try:
                ok = self._sender.emit_with_time(None, _event_time(time_ns), record)
            except Exception:  # the sender must never kill the thread
                log.debug("shadowreplay middleware: send failed", exc_info=True)
                ok = False
            if ok:
                self.sent += 1
            else:
                self.failed += 1
                if self.failed == 1 or self.failed % 1000 == 0:
                    log.warning("shadowreplay middleware: %d records could not be sent so far", self.failed)


class _Capture:
    """The first ``cap`` bytes of a body as the app reads it."""

    __slots__ = ("cap", "parts", "size")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        if data:
            if self.size + len(data) <= self.cap:
                self.parts.append(bytes(data))
            self.size += len(data)

    def fields(self) -> dict[str, Any]:
        if self.size == 0:
            return {}
        if self.size > self.cap:
            return {"request_body_truncated": "1"}
        body = b"".join(self.parts)
        try:
            return {"request_body": body.decode("utf-8")}
        except UnicodeDecodeError:
            return {"request_body": body}  # msgpack bin: the collector keeps bytes as bytes


def _header_field(name: str) -> str:
    return "http_" + name.lower().replace("-", "_")


def _record(
    method: str,
    target: str,
    scheme: str,
    host: str,
    client: str | None,
    protocol: str,
    headers: Iterable[tuple[str, str]],
    capture: _Capture,
    status: int | None,
    sent: int,
    started: float,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "request_method": method,
        "request_uri": target,
        "scheme": scheme,
        "host": host,
        "server_protocol": protocol,
        "status": status,
        "body_bytes_sent": sent,
        "request_time": round(time.perf_counter() - started, 6),
    }
    if client:
        rec["remote_addr"] = client
    joined: dict[str, str] = {}
    for name, value in headers:
        key = _header_field(name)
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    rec.update((key, _wire_text(value)) for key, value in joined.items())
    rec["request_uri"] = _wire_text(target)
    rec["host"] = _wire_text(host)
    rec.update(capture.fields())
    return rec


def _wire_text(value: str) -> str | bytes:
    """A target or header value as WSGI and ASGI servers give it (its bytes decoded as
    latin-1) → the text the bytes spell in UTF-8, or the bytes themselves (sent as msgpack
    bin) when they are not UTF-8: the collector keeps them and the replay sends them."""
    if value.isascii():
        return value
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:  # already real text (a server that decoded it otherwise)
        return value
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


# -- WSGI ----------------------------------------------------------------------------------


class _Input:
    """``wsgi.input`` that remembers what the app read."""

    def __init__(self, stream: Any, capture: _Capture) -> None:
        self._stream = stream
        self._capture = capture

    def read(self, *args: Any) -> bytes:
        data = self._stream.read(*args)
        self._capture.add(data)
        return data  # type: ignore[no-any-return]

    def readline(self, *args: Any) -> bytes:
        data = self._stream.readline(*args)
        self._capture.add(data)
        return data  # type: ignore[no-any-return]

    def readlines(self, *args: Any) -> list[bytes]:
        lines = self._stream.readlines(*args)
        for line in lines:
            self._capture.add(line)
        return lines  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._capture.add(line)
            yield line


def _wsgi_target(environ: dict[str, Any]) -> str:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")  # gunicorn, uwsgi
    if raw:
        return str(raw)
    path = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1", "replace")
    target = quote(path, safe="/:@!$&'()*+,;=-._~%") or "/"
    query = environ.get("QUERY_STRING")
    return f"{target}?{query}" if query else target


def _wsgi_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            out.append((key[5:].replace("_", "-"), str(value)))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            out.append((key.replace("_", "-"), str(value)))
    return out


class WSGIMiddleware:
    """Wraps a WSGI app; every request it serves is shipped with ``shipper``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], shipper: RequestShipper, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.shipper = shipper
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_ns = time.time_ns()
        started = time.perf_counter()
        capture = _Capture(self.max_body_bytes)
        status: list[int | None] = [None]
        try:
            environ["wsgi.input"] = _Input(environ["wsgi.input"], capture)
        except Exception:
            self.shipper.errors += 1

        def observe_start(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            try:
                status[0] = int(status_line.split(" ", 1)[0])
            except ValueError:
                status[0] = None
            if exc_info is None:
                return start_response(status_line, headers)
            return start_response(status_line, headers, exc_info)

        result = self.app(environ, observe_start)
        return _Observed(result, lambda sent: self._ship(environ, capture, status[0], sent, start_ns, started))

    def _ship(self, environ: dict[str, Any], capture: _Capture, status: int | None, sent: int, start_ns: int, started: float) -> None:
        try:
            rec = _record(
                str(environ.get("REQUEST_METHOD", "GET")),
                _wsgi_target(environ),
                str(environ.get("wsgi.url_scheme", "http")),
                str(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")),
                environ.get("REMOTE_ADDR"),
                str(environ.get("SERVER_PROTOCOL", "")),
                _wsgi_headers(environ),
                capture,
                status,
                sent,
                started,
            )
            self.shipper.submit(start_ns, rec)
        except Exception:
            self.shipper.errors += 1
            log.debug("shadowreplay middleware: could not record a request", exc_info=True)


class _Observed:
    """The app's response iterable, counting bytes; ships the record on ``close()``."""

    def __init__(self, result: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._result = result
        self._done: Callable[[int], None] | None = done
        self._sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._result:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done(self._sent)


# -- ASGI ----------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _asgi_target(scope: Scope) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else quote(scope.get("root_path", "") + scope.get("path", "/"), safe="/:@!$&'()*+,;=-._~%")
    query = scope.get("query_string") or b""
    return f"{path}?{query.decode('latin-1')}" if query else path


class ASGIMiddleware:
    """Wraps an ASGI app; every HTTP request it serves is shipped with ``shipper``."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], shipper: RequestShipper, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.shipper = shipper
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        start_ns = time.time_ns()
        started = time.perf_counter()
        capture = _Capture(self.max_body_bytes)
        state: dict[str, Any] = {"status": None, "sent": 0}

        async def observe_receive() -> Message:
            message = await receive()
            try:
                if message.get("type") == "http.request":
                    capture.add(message.get("body", b""))
            except Exception:
                self.shipper.errors += 1
            return message

        async def observe_send(message: Message) -> None:
            try:
                kind = message.get("type")
                if kind == "http.response.start":
                    state["status"] = int(message.get("status", 0)) or None
                elif kind == "http.response.body":
                    state["sent"] += len(message.get("body", b""))
            except Exception:
                self.shipper.errors += 1
            await send(message)

        try:
            await self.app(scope, observe_receive, observe_send)
        finally:
            self._ship(scope, capture, state, start_ns, started)

    def _ship(self, scope: Scope, capture: _Capture, state: dict[str, Any], start_ns: int, started: float) -> None:
        try:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]
            host = next((v for k, v in headers if k.lower() == "host"), "")
            client = scope.get("client")
            rec = _record(
                str(scope.get("method", "GET")),
                _asgi_target(scope),
                str(scope.get("scheme", "http")),
                host,
                str(client[0]) if client else None,
                "HTTP/" + str(scope.get("http_version", "1.1")),
                headers,
                capture,
                state["status"],
                state["sent"],
                started,
            )
            self.shipper.submit(start_ns, rec)
        except Exception:
            self.shipper.errors += 1
            log.debug("shadowreplay middleware: could not record a request", exc_info=True)
