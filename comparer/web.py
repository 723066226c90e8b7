"""The divergence page: HTML + a small script, a JSON API under ``/api/`` and a live feed.

Routes (all GET):

* ``/`` — the page; ``/static/page.js`` and ``/static/page.css`` — its script and style.
* ``/api/endpoints[?endpoint=E][&since=T][&limit=N][&offset=K][&fields_limit=F]`` —
  endpoints by divergence rate (the ``shadowreplay diffs --json`` shape), one page of them.
* ``/api/samples?endpoint=E[&path=P][&limit=N][&before=ID]`` — stored divergences of one
  endpoint, newest first, one page of them.
* ``/api/divergences/{id}`` — one stored divergence: request, every response, field diffs;
  a stream diff carries its wording (``text``), and a divergence with one the arrival
  chart of baseline and candidate (``arrival_svg``, :func:`shadowreplay.comparer.chart.arrival_svg`).
* ``/api/totals`` — compared / diverged / stored over the whole store.
* ``/api/feed`` — Server-Sent Events, one ``divergence`` event per newly stored
  divergence (``id:`` = its store id; ``Last-Event-ID`` resumes), a ``: ping`` comment
  every ``heartbeat_seconds``. Each event is flushed on its own and the response carries
  ``X-Accel-Buffering: no`` so nginx streams it (or set ``proxy_buffering off``).

Every list is paged: the body is a JSON array of at most ``limit`` items, the
``X-Total-Count`` header says how many there are in all and a ``Link: <…>; rel="next"``
header gives the next page while there is one. Bad parameters are answered 400 with
``{"error": …}``.

Private by default (see :class:`~shadowreplay.contract.config.WebConfig`): every page route checks
the Host header (IP addresses, ``localhost`` and ``allowed_hosts`` only, against DNS
rebinding), then the credential when one is configured, else that the client is on
loopback. Store queries run in a small thread pool of their own, bounded in number and
in time, so a slow page request never holds the event loop that the collector and the
replayer of the same process run on.

The page builds every piece of data into the DOM with ``textContent`` (never HTML), and
the responses carry a Content-Security-Policy allowing only the page's own script. The
one piece of markup it takes from the API, the arrival chart, is drawn here (numbers and
escaped text only) and parsed by the page as an SVG document, not as HTML.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hmac
import ipaddress
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from aiohttp import web

from shadowreplay.comparer.chart import arrival_svg
from shadowreplay.comparer.page import PAGE_CSS, PAGE_HTML, PAGE_JS
from shadowreplay.comparer.store import DivergenceStore, Page, QueryTimeout, StoreReader
from shadowreplay.comparer.streams import STREAM_KINDS, describe_stored
from shadowreplay.contract.config import WebConfig, parse_hostport
from shadowreplay.contract.errors import ConfigError, ShadowError
from shadowreplay.contract.record import Response

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Events queued per live-feed client before the oldest are dropped.
FEED_QUEUE = 256
#: Concurrent live-feed clients; more are refused with 503.
MAX_FEED_CLIENTS = 32
#: Store queries run at once, and queued or running at most (more: 503, retry).
QUERY_THREADS = 2
MAX_QUERIES = 8
#: Page sizes: (default, maximum).
ENDPOINTS_LIMIT = (50, 500)
FIELDS_LIMIT = (20, 500)
SAMPLES_LIMIT = (50, 100)
MAX_OFFSET = 10_000_000
MAX_ID = 2**63 - 1
MAX_TEXT_PARAM = 2048
_NS_MAX = 2**63 - 1

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ShadowError):
    """A query parameter the API cannot use; answered 400 with the message."""


class Busy(ShadowError):
    """Too many store queries queued; answered 503 with Retry-After."""


def parse_since(value: str | None, now_ns: int) -> int | None:
    """``--since``/``since=``: nanoseconds since the epoch, from ``30m``/``2h``/``7d``/``90s``
    (ago), a Unix time in seconds, or an ISO 8601 timestamp. ShadowError for anything
    else, including infinities, NaN and times outside 1970–2262."""
    if not value:
        return None
    v = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    seconds: float | None = None
    if not v.isascii():  # float() would take other scripts' digits too
        pass
    elif v[-1:] in units and v[:-1].replace(".", "", 1).isdigit():
        seconds = now_ns / 1e9 - float(v[:-1]) * units[v[-1]]
    else:
        try:
            seconds = float(v)
        except ValueError:
            try:
                dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                seconds = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds * 1e9 <= _NS_MAX:
        raise ShadowError(
            f"since: expected e.g. 30m, 2h, 7d, a Unix time or ISO 8601 between 1970 and 2262, got {value[:80]!r}"
        )
    return int(seconds * 1e9)


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json_bytes(orjson.dumps(value, default=str), status, headers)


def _json_bytes(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **(headers or {})},
    )


# -- who may see the page ------------------------------------------------------------------


def read_secret(file: str, env: str, key: str, environ: Mapping[str, str]) -> bytes | None:
    """The secret in ``file`` (surrounding whitespace stripped) or the environment variable
    ``env``; None when neither is set; ConfigError naming ``key`` when it is empty or unreadable."""
    if file:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{key}_file: cannot read {file!r}: {exc}") from exc
        where = f"{key}_file: {file!r} is empty"
    elif env:
        value = environ.get(env, "").strip()
        where = f"{key}_env: environment variable {env} is not set or empty"
    else:
        return None
    if not value:
        raise ConfigError(where)
    return value.encode("utf-8")


class WebAuth:
    """The credentials the page accepts: a bearer token, ``user:password`` for basic auth,
    either, or none (then only loopback clients are served)."""

    def __init__(self, bearer: bytes | None = None, basic: bytes | None = None) -> None:
        self.bearer = bearer
        self.basic = basic

    @classmethod
    def from_config(cls, config: WebConfig, environ: Mapping[str, str]) -> WebAuth:
        key = "comparer.web."
        bearer = read_secret(config.bearer_token_file, config.bearer_token_env, key + "bearer_token", environ)
        basic = read_secret(config.basic_auth_file, config.basic_auth_env, key + "basic_auth", environ)
        if basic is not None and (b":" not in basic or not basic.partition(b":")[0]):
            raise ConfigError(f"{key}basic_auth: expected user:password")
        return cls(bearer, basic)

    @property
    def configured(self) -> bool:
        return self.bearer is not None or self.basic is not None

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries a configured credential."""
        if not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.bearer is not None:
            return hmac.compare_digest(value.encode("utf-8", "replace"), self.bearer)
        if scheme == "basic" and self.basic is not None:
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(given, self.basic)
        return False

    def challenges(self) -> list[str]:
        out = []
        if self.basic is not None:
            out.append('Basic realm="shadowreplay", charset="UTF-8"')
        if self.bearer is not None:
            out.append('Bearer realm="shadowreplay"')
        return out


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a Host header names this page: an IP address, ``localhost`` (or a name under
    ``.localhost``), or one of ``allowed``. A request without Host (not from a browser) passes.

    A DNS-rebinding page reaches us under its own host name, which is none of these."""
    if host is None:
        return True
    value = host.strip().lower()
    if value.startswith("["):
        name = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:
        name = value.rsplit(":", 1)[0]
    else:
        name = value
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost") or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def peer_is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


# -- query parameters ----------------------------------------------------------------------


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 20:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}, got {raw[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}, got {value}")
    return value


def _text_param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name) or None
    if value is not None and len(value) > MAX_TEXT_PARAM:
        raise BadRequest(f"{name}: longer than {MAX_TEXT_PARAM} characters")
    return value


def _paged(request: web.Request, page: Page, next_query: dict[str, str] | None) -> dict[str, str]:
    """``X-Total-Count`` and, while there is more, a relative ``Link`` to the next page."""
    headers = {"X-Total-Count": str(page.total)}
    if next_query is not None:
        query = {k: v for k, v in request.query.items() if k not in next_query}
        query.update(next_query)
        name = request.path.rsplit("/", 1)[-1]
        headers["Link"] = f'<{name}?{urlencode(query)}>; rel="next"'
    return headers


class DivergencePage:
    """Serves the page over a store file; mounted on an app, or on its own listener."""

    def __init__(self, store_path: str, config: WebConfig, *, environ: Mapping[str, str] | None = None) -> None:
        self.reader = StoreReader(store_path, timeout_seconds=config.query_timeout_seconds)
        self._config = config
        self.auth = WebAuth.from_config(config, os.environ if environ is None else environ)
        self._allowed_hosts = frozenset(h.lower().rstrip(".") for h in config.allowed_hosts)
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._runner: web.AppRunner | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="page-store")
        self._queries = 0
        self._queries_lock = threading.Lock()
        self.dropped = 0
        self.refused: dict[str, int] = {}
        self.port = 0

    def mount(self, app: web.Application) -> None:
        """Add the page's routes to ``app`` (before it starts)."""
        r, g = app.router, self._guarded
        r.add_get("/", g(self._index))
        r.add_get("/static/page.js", g(self._asset(PAGE_JS, "application/javascript")))
        r.add_get("/static/page.css", g(self._asset(PAGE_CSS, "text/css")))
        r.add_get("/api/endpoints", g(self._endpoints))
        r.add_get("/api/samples", g(self._samples))
        r.add_get("/api/divergences/{id}", g(self._divergence))
        r.add_get("/api/totals", g(self._totals))
        r.add_get("/api/feed", g(self._feed))
        r.add_get("/api/{tail:.*}", g(self._unknown))

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
        """End every live feed, then stop the own listener if any, then the query threads."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for q in list(self._clients):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- access and errors ----------------------------------------------------------------

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
            try:
                return await handler(request)
            except BadRequest as exc:
                return _json({"error": str(exc)}, 400)
            except (Busy, QueryTimeout) as exc:
                return _json({"error": str(exc)}, 503, {"Retry-After": "2"})
            except web.HTTPException:
                raise
            except Exception:  # a bug or a broken store: logged with its traceback, answered without
                log.exception("page request %s failed", request.path)
                return _json({"error": "internal error (see the comparer's log)"}, 500)

        return guarded

    def _refusal(self, request: web.Request) -> web.Response | None:
        host = request.headers.get("Host")
        if host is not None and not host_allowed(host, self._allowed_hosts):
            shown = repr(host[:100])
            self._tell_refused("host", f"Host {shown}, not an IP address, localhost or in comparer.web.allowed_hosts")
            return _json({"error": f"Host {shown} is not allowed: add it to comparer.web.allowed_hosts"}, 403)
        if self.auth.configured:
            if self.auth.accepts(request.headers.get("Authorization")):
                return None
            self._tell_refused("credential", "a request without a valid credential")
            return web.Response(
                body=orjson.dumps({"error": "a credential is required (comparer.web bearer token or basic auth)"}),
                status=401,
                content_type="application/json",
                headers=[("WWW-Authenticate", c) for c in self.auth.challenges()] + [("Cache-Control", "no-store")],
            )
        if not peer_is_loopback(request.remote):
            self._tell_refused(
                "remote",
                f"a client at {request.remote}: without a credential the page answers loopback clients only "
                "(set comparer.web.basic_auth_file or bearer_token_file, or their _env forms)",
            )
            return _json({"error": "without a configured credential the page answers loopback clients only"}, 403)
        return None

    def _tell_refused(self, reason: str, detail: str) -> None:
        n = self.refused[reason] = self.refused.get(reason, 0) + 1
        if n == 1 or n % 1000 == 0:
            log.warning("page refused %s (%d refused for this reason so far)", detail, n)

    async def _query(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a store read) on the page's own threads; Busy when too many wait."""
        with self._queries_lock:
            if self._queries >= MAX_QUERIES:
                raise Busy(f"{MAX_QUERIES} store queries already running or queued; retry shortly")
            self._queries += 1

        def job() -> T:
            try:
                return fn()
            finally:  # counted down when the work ends, not when a client gives up waiting
                with self._queries_lock:
                    self._queries -= 1

        try:
            future = self._executor.submit(job)
        except RuntimeError:  # shutting down
            with self._queries_lock:
                self._queries -= 1
            raise Busy("the page is stopping") from None
        return await asyncio.wrap_future(future)

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
            if last.isascii() and last.isdigit() and int(last) <= MAX_ID:
                after = int(last)
                missed = await self._query(lambda: self.reader.recent(after_id=after, limit=FEED_QUEUE))
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
        except (ConnectionResetError, asyncio.CancelledError, Busy, QueryTimeout):
            pass  # the client went away, or resuming failed: the browser reconnects
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

    def _asset(self, text: str, ctype: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=text, content_type=ctype, headers={"X-Content-Type-Options": "nosniff"})

        return handler

    async def _unknown(self, request: web.Request) -> web.Response:
        return _json({"error": f"no such API: {request.path[:200]}"}, 404)

    async def _endpoints(self, request: web.Request) -> web.Response:
        try:
            since = parse_since(_text_param(request, "since"), _now_ns())
        except ShadowError as exc:
            raise BadRequest(str(exc)) from None
        endpoint = _text_param(request, "endpoint")
        limit = _int_param(request, "limit", ENDPOINTS_LIMIT[0], 1, ENDPOINTS_LIMIT[1])
        offset = _int_param(request, "offset", 0, 0, MAX_OFFSET) or 0
        fields_limit = _int_param(request, "fields_limit", FIELDS_LIMIT[0], 0, FIELDS_LIMIT[1])

        def query() -> tuple[Page, bytes]:
            page = self.reader.endpoints_page(
                endpoint=endpoint, since_ns=since, limit=limit, offset=offset, fields_limit=fields_limit
            )
            body = [v.to_json() for v in page.items]
            if fields_limit:
                for item, view in zip(body, page.items, strict=True):
                    item["fields_total"] = view.fields_total
            return page, orjson.dumps(body, default=str)

        page, body = await self._query(query)
        more = offset + len(page.items) < page.total and page.items
        headers = _paged(request, page, {"offset": str(offset + len(page.items))} if more else None)
        return _json_bytes(body, headers=headers)

    async def _samples(self, request: web.Request) -> web.Response:
        endpoint = _text_param(request, "endpoint")
        if not endpoint:
            raise BadRequest("endpoint= is required")
        path = _text_param(request, "path")
        limit = _int_param(request, "limit", SAMPLES_LIMIT[0], 1, SAMPLES_LIMIT[1]) or SAMPLES_LIMIT[0]
        before = _int_param(request, "before", None, 1, MAX_ID)

        def query() -> tuple[Page, bytes, bool]:
            # One more than asked: whether an older page exists, without counting them.
            page = self.reader.samples_page(endpoint, limit=limit + 1, path=path, before_id=before)
            items = page.items[:limit]
            return Page(items, page.total), orjson.dumps(items, default=str), len(page.items) > limit

        page, body, more = await self._query(query)
        next_query = {"before": str(page.items[-1]["id"])} if more else None
        return _json_bytes(body, headers=_paged(request, page, next_query))

    async def _divergence(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 1 <= int(raw) <= MAX_ID:
            raise BadRequest(f"divergence id: expected an integer from 1 to {MAX_ID}, got {raw[:40]!r}")
        div_id = int(raw)

        def query() -> dict[str, Any] | None:
            found = self.reader.divergence(div_id)
            return None if found is None else with_streams(found)

        item = await self._query(query)
        if item is None:
            return _json({"error": "no such divergence (pruned?)"}, 404)
        return _json(item)

    async def _totals(self, request: web.Request) -> web.Response:
        return _json(await self._query(self.reader.totals))


def with_streams(item: dict[str, Any]) -> dict[str, Any]:
    """A stored divergence (``StoreReader.divergence``) with each stream diff worded
    (``text``: :func:`shadowreplay.comparer.streams.describe`, delays in ms) and, when it has one and
    was compared with a baseline that has an arrival timeline on either side, the arrival
    chart of both (``arrival_svg``)."""
    stream = [d for d in item["diffs"] if d["kind"] in STREAM_KINDS]
    for d in stream:
        d["text"] = describe_stored(d)
    responses = item["result"].get("responses") or {}
    if not stream or item.get("reference") != "baseline" or "candidate" not in responses:
        return item
    baseline = Response.from_wire(responses["baseline"]).timeline
    candidate = Response.from_wire(responses["candidate"]).timeline
    if baseline or candidate:
        item["arrival_svg"] = arrival_svg(baseline, candidate)
    return item


def _event(item: dict[str, Any]) -> bytes:
    keys = ("id", "ts_ns", "endpoint", "result_id", "method", "target", "kinds")
    summary: dict[str, Any] = {k: item[k] for k in keys if k in item}
    summary["paths"] = item.get("paths") or sorted({d["path"] for d in item.get("diffs", [])})[:20]
    return b"id: %d\nevent: divergence\ndata: %s\n\n" % (int(item["id"]), orjson.dumps(summary, default=str))


def _now_ns() -> int:
    return time.time_ns()
