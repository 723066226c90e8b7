"""Send one RequestRecord to one target and capture what it answers.

Two HTTP clients do the sending: the built-in one (``replayer/http1.py``, the default:
lean, about three times cheaper per request) and aiohttp's (``http_client = "aiohttp"``),
kept as a second opinion for a target that the built-in client does not get along with.
Both behave as follows.

The request-target is sent exactly as logged (no re-encoding, query order kept);
hop-by-hop headers are dropped, Host is the target's unless kept, X-Forwarded-For is
the trusted client address and X-Shadow-Replay carries the record id. The response is
read streaming up to a cap, with time to first byte; a ``Content-Encoding`` of gzip,
deflate or br is decoded before the body is stored (br needs the ``brotli`` package). Failures never raise: they come
back as a ``Response`` whose ``error`` names the kind and whose ``status`` is None.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from replayer.http1 import ConnectionPool, HTTPFailure
from shadowreplay.config import HTTP_CLIENTS
from shadowreplay.record import Headers, RequestRecord, Response

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed or set by the replayer, never copied from the record.
_REPLACED = frozenset({"content-length", "host", "x-forwarded-for", "x-shadow-replay"})
# aiohttp adds these when absent; a replay sends only what was logged.
_DROPPED = HOP_BY_HOP | _REPLACED
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_READ_CHUNK = 64 * 1024


def outgoing_headers(record: RequestRecord, *, keep_host: bool) -> list[tuple[str, str]]:
    """The headers a replay of ``record`` carries (Host only when kept; else the target's)."""
    dropped: frozenset[str] | set[str] = _DROPPED
    for name, value in record.headers:
        if name.lower() == "connection":  # names listed in Connection are hop-by-hop too
            dropped = set(dropped)
            dropped.update(t.strip().lower() for t in value.split(",") if t.strip())
    # Repeats keep their order; each name is spelled as at its first occurrence, because
    # aiohttp folds a repeat whose spelling differs (``X-A`` then ``x-a``) into one value.
    spelling: dict[str, str] = {}
    out = [
        (spelling.setdefault(k.lower(), k), v)
        for k, v in record.headers
        if k.lower() not in dropped and not k.lower().startswith("proxy-")
    ]
    if keep_host:
        host = logged_host(record)
        if host:
            out.append(("Host", host))
    if record.client:
        out.append(("X-Forwarded-For", record.client))
    out.append(("X-Shadow-Replay", record.id))
    return out


def logged_host(record: RequestRecord) -> str:
    """The Host production saw: the record's host, else its Host header, else ""."""
    return record.host or record.header("Host") or ""


def origin_form(target: str) -> str:
    """The logged request-target as a path and query (absolute-form loses its scheme and host)."""
    if target.startswith("/"):
        return target
    if target.startswith(("http://", "https://")):  # absolute-form: keep path and query only
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    return "/" + target


def target_url(base_url: str, target: str) -> URL:
    """``base_url`` + the raw request-target, marked encoded so it goes on the wire as is."""
    return URL(base_url.rstrip("/") + origin_form(target), encoded=True)


def error_kind(exc: BaseException) -> str:
    """A short, bounded name for why a request failed (used in results and metrics)."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout"
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return "reset"
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        return "protocol"
    if isinstance(exc, (aiohttp.InvalidURL, ValueError)):
        return "request"
    if isinstance(exc, (aiohttp.ClientOSError, OSError)):
        return "connect"
    return "client"


class TargetClient:
    """One replay target (e.g. ``candidate`` at ``http://staging:8080``) with its own session."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout_seconds: float,
        max_body_bytes: int,
        concurrency: int,
        keep_host: bool = False,
        tls_verify: bool = True,
        http_client: str = "builtin",
    ) -> None:
        if http_client not in HTTP_CLIENTS:
            raise ValueError(f"http_client must be one of {', '.join(HTTP_CLIENTS)}, got {http_client!r}")
        self.name = name
        self.http_client = http_client
        self.concurrency = concurrency
        self._tls_verify = tls_verify
        self.base_url = base_url
        # The Host and path prefix a request to this target carries (see as_sent).
        parts = urlsplit(base_url)
        name = parts.hostname or ""
        name = f"[{name}]" if ":" in name else name
        port, default = parts.port, 443 if parts.scheme == "https" else 80
        self._authority = name if port in (None, default) else f"{name}:{port}"
        self._prefix = parts.path.rstrip("/")
        self._timeout_seconds = timeout_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_body_bytes = max_body_bytes
        self._concurrency = concurrency
        self._keep_host = keep_host
        self._session: aiohttp.ClientSession | None = None
        self._pool: ConnectionPool | None = None

    async def start(self) -> None:
        if self.http_client == "builtin":
            self._pool = ConnectionPool(self.base_url, limit=self._concurrency, tls_verify=self._tls_verify)
            return
        # The connection limit is the target's concurrency bound: a request beyond it
        # waits for a free connection (and is measured late), it is never dropped.
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            limit_per_host=self._concurrency,
            ssl=True if self._tls_verify else False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=True,
            # staging's cookies must not leak into later replays
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> TargetClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def as_sent(self, record: RequestRecord) -> RequestRecord:
        """``record`` as this target gets it (what a result records): the request-target
        on the wire (the target URL's path prefix + the logged one), Host first (the
        target's unless kept), the headers after the safety rewrites of
        ``outgoing_headers``, and Content-Length when a body goes out."""
        host = (logged_host(record) if self._keep_host else "") or self._authority
        headers = [("Host", host), *outgoing_headers(record, keep_host=False)]
        body = record.body
        if body or (body is not None and record.method in ("POST", "PUT", "PATCH")):
            headers.append(("Content-Length", str(len(body))))
        # Built field by field: dataclasses.replace costs three times as much, once per request.
        return RequestRecord(record.id, record.ts, record.method, self._prefix + origin_form(record.target),
                             record.tag, record.scheme, host, tuple(headers), record.body, record.client,
                             record.origin, record.seq)

    async def send(self, record: RequestRecord) -> Response:
        """Replay ``record`` on this target. Never raises for network or HTTP failures."""
        if self._pool is not None:
            return await self._send_builtin(record, self._pool)
        if self._session is None:
            raise RuntimeError(f"target {self.name!r}: send() before start()")
        ttfb: float | None = None
        t0 = time.perf_counter()
        try:
            url = target_url(self.base_url, record.target)
            async with self._session.request(
                record.method,
                url,
                headers=outgoing_headers(record, keep_host=self._keep_host),
                data=record.body,
                allow_redirects=False,
            ) as resp:
                ttfb = time.perf_counter() - t0
                length = resp.content_length
                if length is not None and length <= self._max_body_bytes and "Content-Encoding" not in resp.headers:
                    body, truncated = await resp.read(), False  # known small and not encoded: one read
                else:
                    body, truncated = await _read_capped(resp.content, self._max_body_bytes)
                latency = time.perf_counter() - t0
                return Response(
                    status=resp.status,
                    headers=_headers(resp.headers.items()),
                    body=body,
                    truncated=truncated,
                    latency=latency,
                    ttfb=ttfb,
                )
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            kind = error_kind(exc)
            log.debug("target %s: %s %s failed: %s: %r",
                      self.name, record.method, record.id, kind, exc)
            return Response(status=None, latency=time.perf_counter() - t0, ttfb=ttfb, error=kind)

    async def _send_builtin(self, record: RequestRecord, pool: ConnectionPool) -> Response:
        t0 = time.perf_counter()
        host = logged_host(record) if self._keep_host else ""  # "": the pool sends the target's
        try:
            async with asyncio.timeout(self._timeout_seconds):
                raw = await pool.request(
                    record.method,
                    origin_form(record.target),
                    host,
                    outgoing_headers(record, keep_host=False),
                    record.body,
                    self._max_body_bytes,
                )
        except HTTPFailure as exc:
            kind = exc.kind
        except TimeoutError:
            kind = "timeout"
        except (OSError, ValueError) as exc:  # not expected from the pool; still a result, not a crash
            kind = error_kind(exc)
        else:
            return Response(
                status=raw.status,
                headers=raw.headers,
                body=raw.body,
                truncated=raw.truncated,
                latency=time.perf_counter() - t0,
                ttfb=raw.ttfb - t0,
            )
        log.debug("target %s: %s %s failed: %s", self.name, record.method, record.id, kind)
        return Response(status=None, latency=time.perf_counter() - t0, error=kind)


async def _read_capped(stream: aiohttp.StreamReader, cap: int) -> tuple[bytes, bool]:
    buf = bytearray()
    while len(buf) <= cap:
        chunk = await stream.read(min(_READ_CHUNK, cap + 1 - len(buf)))
        if not chunk:
            return bytes(buf), False
        buf += chunk
    # One byte past the cap proves there is more; the connection is dropped, not drained.
    return bytes(buf[:cap]), True


def _headers(items: Iterable[tuple[str, str]]) -> Headers:
    return tuple((k, v) for k, v in items)
