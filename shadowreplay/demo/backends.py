"""The demo's two HTTP backends: the current release and a candidate with regressions.

The regressions are deterministic functions of the request, so a test (and the demo's
own check) can tell exactly how many replayed requests must diverge:

* ``GET /api/products/{id}`` — for ids divisible by 4 the candidate returns a changed
  ``price`` (a changed field);
* ``GET /api/users/{id}/cart`` — the candidate answers 500 (a broken route);
* ``GET /api/search`` — the candidate is 40 ms slower (same body: latency only).
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

SLOW_SEARCH_SECONDS = 0.04


def _product(pid: int) -> dict[str, object]:
    return {
        "id": pid,
        "name": f"Product {pid}",
        "price": round(5 + (zlib.crc32(str(pid).encode()) % 9000) / 100, 2),
        "currency": "EUR",
        "stock": pid * 7 % 23,
        "tags": ["demo", "shop"] if pid % 2 else ["demo"],
    }


def expected_divergence(method: str, target: str) -> str | None:
    """Which regression (if any) a replayed request hits: "field", "status" or None."""
    if method.upper() not in ("GET", "HEAD"):
        return None
    parts = target.split("?", 1)[0].strip("/").split("/")
    if len(parts) == 3 and parts[:2] == ["api", "products"] and parts[2].isdigit():
        return "field" if int(parts[2]) % 4 == 0 else None
    if len(parts) == 4 and parts[:2] == ["api", "users"] and parts[3] == "cart":
        return "status"
    return None


@dataclass
class Backend:
    """One demo backend. ``seen`` counts requests per ``X-Shadow-Replay`` id."""

    candidate: bool
    seen: Counter[str] = field(default_factory=Counter)
    runner: web.AppRunner | None = None
    port: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/products", self._products)
        app.router.add_get("/api/products/{pid:\\d+}", self._product)
        app.router.add_get("/api/users/{uid:\\d+}/cart", self._cart)
        app.router.add_get("/api/search", self._search)
        app.router.add_get("/healthz", self._health)
        app.router.add_route("*", "/{tail:.*}", self._fallback)
        app.middlewares.append(self._count)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        rid = request.headers.get("X-Shadow-Replay")
        if rid:
            self.seen[rid] += 1
        return await handler(request)

    async def _products(self, request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1") or 1)
        items = [_product(pid) for pid in range((page - 1) * 5 + 1, page * 5 + 1)]
        return web.json_response({"page": page, "items": items})

    async def _product(self, request: web.Request) -> web.Response:
        pid = int(request.match_info["pid"])
        body = _product(pid)
        if self.candidate and pid % 4 == 0:
            body["price"] = round(float(body["price"]) * 1.1, 2)  # type: ignore[arg-type]
        return web.json_response(body)

    async def _cart(self, request: web.Request) -> web.Response:
        uid = int(request.match_info["uid"])
        if self.candidate:
            return web.json_response({"error": "internal"}, status=500)
        items = [{"product": _product(uid % 50 + i)["id"], "qty": 1 + i} for i in range(uid % 3 + 1)]
        return web.json_response({"user": uid, "items": items})

    async def _search(self, request: web.Request) -> web.Response:
        q = request.query.get("q", "")
        if self.candidate:
            await asyncio.sleep(SLOW_SEARCH_SECONDS)
        hits = [_product(zlib.crc32(q.encode()) % 50 + i) for i in range(3)]
        return web.json_response({"query": q, "results": [h["id"] for h in hits]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _fallback(self, request: web.Request) -> web.Response:
        if request.path.startswith("/static/"):
            return web.Response(text="body{margin:0}\n", content_type="text/css")
        return web.json_response({"error": "not found"}, status=404)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
