"""The divergence page: HTML + a small script, a JSON API under ``/api/`` and a live feed.

Routes (all GET):

* ``/`` — the page; ``/static/page.js`` and ``/static/page.css`` — its script and style.
* ``/api/endpoints[?endpoint=E][&since=T]`` — endpoints by divergence rate (the
  ``shadowreplay diffs --json`` shape).
* ``/api/samples?endpoint=E[&path=P][&limit=N]`` — newest stored divergences of one endpoint.
* ``/api/divergences/{id}`` — one stored divergence: request, every response, field diffs.
* ``/api/totals`` — compared / diverged / stored over the whole store.
* ``/api/feed`` — Server-Sent Events, one ``divergence`` event per newly stored
  divergence (``id:`` = its store id; ``Last-Event-ID`` resumes), a ``: ping`` comment
  every ``heartbeat_seconds``. Each event is flushed on its own and the response carries
  ``X-Accel-Buffering: no`` so nginx streams it (or set ``proxy_buffering off``).

The page builds every piece of data into the DOM with ``textContent`` (never HTML), and
the responses carry a Content-Security-Policy allowing only the page's own script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, UTC
from typing import Any

import orjson
from aiohttp import web

from comparer.page import PAGE_CSS, PAGE_HTML, PAGE_JS
from comparer.store import DivergenceStore, StoreReader
from shadowreplay.config import WebConfig, parse_hostport
from shadowreplay.errors import ShadowError

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Events queued per live-feed client before the oldest are dropped.
FEED_QUEUE = 256
#: Concurrent live-feed clients; more are refused with 503.
MAX_FEED_CLIENTS = 32
MAX_LIMIT = 500


def parse_since(value: str | None, now_ns: int) -> int | None:
    """``--since``/``since=``: nanoseconds since the epoch, from ``30m``/``2h``/``7d``/``90s``
    (ago), a Unix time in seconds, or an ISO 8601 timestamp."""
    if not value:
        return None
    v = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if v[-1:] in units and v[:-1].replace(".", "", 1).isdigit():
        return now_ns - int(float(v[:-1]) * units[v[-1]] * 1e9)
    try:
        return int(float(v) * 1e9)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ShadowError(f"since: expected e.g. 30m, 2h, 7d, a Unix time or ISO 8601, got {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1e9)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(value, default=str),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


class DivergencePage:
    """Serves the page over a store file; mounted on an app, or on its own listener."""

    def __init__(self, store_path: str, config: WebConfig) -> None:
        self.reader = StoreReader(store_path)
        self._config = config
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._runner: web.AppRunner | None = None
        self.dropped = 0
        self.port = 0

    def mount(self, app: web.Application) -> None:
        """Add the page's routes to ``app`` (before it starts)."""
        r = app.router
        r.add_get("/", self._index)
        r.add_get("/static/page.js", self._asset(PAGE_JS, "application/javascript"))
        r.add_get("/static/page.css", self._asset(PAGE_CSS, "text/css"))
        r.add_get("/api/endpoints", self._endpoints)
        r.add_get("/api/samples", self._samples)
        r.add_get("/api/divergences/{id:\\d+}", self._divergence)
        r.add_get("/api/totals", self._totals)
        r.add_get("/api/feed", self._feed)

    def attach(self, store: DivergenceStore) -> None:
        """Feed newly stored divergences of ``store`` (same event loop thread) to live clients."""
        self._unsubscribe = store.subscribe(self._publish)

    async def start(self) -> None:
        """Serve on ``config.listen`` (only when it is set; otherwise ``mount`` elsewhere)."""
        host, port = parse_hostport(self._config.listen, "comparer.web.listen")
        app = web.Application()
        self.mount(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """End every live feed, then stop the own listener if any."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for q in list(self._clients):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- live feed ------------------------------------------------------------------------

    def _publish(self, added: list[dict[str, Any]]) -> None:
        for item in added:
            data = _event(item)
            for q in self._clients:
                if q.full():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        q.get_nowait()
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log.warning("live feed client too slow: %d events dropped so far", self.dropped)
                q.put_nowait(data)

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= MAX_FEED_CLIENTS:
            return _json({"error": "too many live feed clients"}, 503)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(FEED_QUEUE)
        self._clients.add(queue)
        try:
            await resp.prepare(request)
            await resp.write(b"retry: 3000\n: connected\n\n")
            last = request.headers.get("Last-Event-ID", "")
            if last.isdigit():
                missed = await asyncio.to_thread(self.reader.recent, after_id=int(last), limit=FEED_QUEUE)
                for item in reversed(missed):
                    await resp.write(_event(item))
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), self._config.heartbeat_seconds)
                except TimeoutError:
                    data = b": ping\n\n"
                if data is None:
                    break
                await resp.write(data)  # one write per event: aiohttp sends it at once
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(queue)
        return resp

    # -- pages and API --------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE_HTML,
            content_type="text/html",
            headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
        )

    def _asset(self, text: str, ctype: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=text, content_type=ctype, headers={"X-Content-Type-Options": "nosniff"})

        return handler

    async def _endpoints(self, request: web.Request) -> web.Response:
        try:
            since = parse_since(request.query.get("since"), _now_ns())
        except ShadowError as exc:
            return _json({"error": str(exc)}, 400)
        views = await asyncio.to_thread(
            self.reader.endpoints, endpoint=request.query.get("endpoint") or None, since_ns=since
        )
        return _json([v.to_json() for v in views])

    async def _samples(self, request: web.Request) -> web.Response:
        endpoint = request.query.get("endpoint")
        if not endpoint:
            return _json({"error": "endpoint= is required"}, 400)
        try:
            limit = min(max(int(request.query.get("limit", "50")), 1), MAX_LIMIT)
        except ValueError:
            return _json({"error": "limit must be an integer"}, 400)
        rows = await asyncio.to_thread(
            self.reader.samples, endpoint, limit=limit, path=request.query.get("path") or None
        )
        return _json(rows)

    async def _divergence(self, request: web.Request) -> web.Response:
        item = await asyncio.to_thread(self.reader.divergence, int(request.match_info["id"]))
        if item is None:
            return _json({"error": "no such divergence (pruned?)"}, 404)
        return _json(item)

    async def _totals(self, request: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(self.reader.totals))


def _event(item: dict[str, Any]) -> bytes:
    keys = ("id", "ts_ns", "endpoint", "result_id", "method", "target", "kinds")
    summary: dict[str, Any] = {k: item[k] for k in keys if k in item}
    summary["paths"] = item.get("paths") or sorted({d["path"] for d in item.get("diffs", [])})[:20]
    return b"id: %d\nevent: divergence\ndata: %s\n\n" % (int(item["id"]), orjson.dumps(summary, default=str))


def _now_ns() -> int:
    return time.time_ns()
