"""A noisy-backend scenario for the verdict (tests/integration/test_verdict.py and
bench/verdict.py): three aiohttp backends whose JSON carries ordinary noise, a candidate
with three real regressions, ~3,000 requests through the real pipeline.

Every JSON object answered carries ``generated_at`` (the time, to the millisecond),
``request_id`` (random) and ``served_by`` (one of 50 nodes, at random). The candidate,
when built with regressions, changes ``price`` on products whose id is a multiple of 5,
answers 500 on carts of users whose id is a multiple of 4, and answers ``/api/search``
60 ms later. ``/api/products`` lists ``facets`` in a random order (the one array that
``unordered_paths`` names), and a JSON-RPC 2.0 batch on ``POST /rpc`` is answered by the
candidate in reverse order (matched by id, so not a difference).

:func:`run` feeds the access-log lines through the forward protocol into the collector,
replays them (with a secondary, or without one using the baseline probes) and returns
what the store says, with the ground truth to hold it against.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from shadowreplay.comparer.store import EndpointView, StoreReader
from shadowreplay.app import Pipeline
from shadowreplay.contract.config import Config
from shadowreplay.demo.run import feed

N_REQUESTS = 3000
SLOW_SECONDS = 0.060
BASE_NS = 1_795_600_800_000_000_000
PRODUCTS, CARTS, SEARCH, LISTING, RPC = (
    "GET /api/products/{id}", "GET /api/users/{id}/cart", "GET /api/search", "GET /api/products", "rpc:getBalance",
)
FACETS = ["brand", "colour", "size", "price", "rating", "stock"]


def price_changed(pid: int) -> bool:
    return pid % 5 == 0


def cart_broken(uid: int) -> bool:
    return uid % 4 == 0


@dataclass
class NoisyBackend:
    """One backend. ``regressions``: the candidate's changes (price, 500, slow route)."""

    regressions: bool = False
    runner: web.AppRunner | None = None
    seen: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(default_factory=random.Random)

    def noise(self) -> dict[str, Any]:
        return {
            "generated_at": round(time.time(), 3),
            "request_id": uuid.uuid4().hex,
            "served_by": f"node-{self.rng.randrange(50)}",
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/products/{pid:\\d+}", self._product)
        app.router.add_get("/api/products", self._listing)
        app.router.add_get("/api/users/{uid:\\d+}/cart", self._cart)
        app.router.add_get("/api/search", self._search)
        app.router.add_post("/rpc", self._rpc)
        return app

    def _json(self, body: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    async def _product(self, request: web.Request) -> web.Response:
        noise = self.noise()
        pid = int(request.match_info["pid"])
        price = round(5 + pid * 0.37, 2)
        if self.regressions and price_changed(pid):
            price = round(price * 1.1, 2)
        return self._json({"id": pid, "name": f"Product {pid}", "price": price, **noise})

    async def _listing(self, request: web.Request) -> web.Response:
        noise = self.noise()
        page = int(request.query.get("page", "1"))
        facets = list(FACETS)
        self.rng.shuffle(facets)
        items = [{"id": i, "price": round(5 + i * 0.37, 2)} for i in range(page * 10, page * 10 + 10)]
        return self._json({"page": page, "items": items, "facets": facets, **noise})

    async def _cart(self, request: web.Request) -> web.Response:
        noise = self.noise()
        uid = int(request.match_info["uid"])
        if self.regressions and cart_broken(uid):
            return self._json({"error": "internal", **noise}, status=500)
        return self._json({"user": uid, "items": [{"product": uid % 50 + i, "qty": 1 + i} for i in range(uid % 3 + 1)], **noise})

    async def _search(self, request: web.Request) -> web.Response:
        noise = self.noise()
        if self.regressions:
            await asyncio.sleep(SLOW_SECONDS)
        q = request.query.get("q", "")
        return self._json({"query": q, "results": [len(q) + i for i in range(3)], **noise})

    async def _rpc(self, request: web.Request) -> web.Response:
        calls = orjson.loads(await request.read())
        answers = [{"jsonrpc": "2.0", "id": c["id"], "result": {"balance": sum(map(ord, c["params"][0]))}} for c in calls]
        if self.regressions:
            answers.reverse()  # another order: JSON-RPC batches are matched by id
        return self._json(answers)

    async def start(self, port: int = 0) -> str:
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass(frozen=True)
class Line:
    record: dict[str, str]
    expect: str | None  # "value", "status" or None


def access_log(n: int = N_REQUESTS, seed: int = 16) -> list[Line]:
    """``n`` nginx JSON access-log lines, 1 ms apart, with the regression each one hits."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        roll = rng.random()
        method, body, expect = "GET", "", None
        if roll < 0.40:
            pid = rng.randrange(1, 200)
            uri, expect = f"/api/products/{pid}", "value" if price_changed(pid) else None
        elif roll < 0.55:
            uid = rng.randrange(1, 400)
            uri, expect = f"/api/users/{uid}/cart", "status" if cart_broken(uid) else None
        elif roll < 0.75:
            uri = f"/api/search?q={rng.choice(['lamp', 'desk', 'chair', 'mug'])}"
        elif roll < 0.90:
            uri = f"/api/products?page={rng.randrange(1, 6)}"
        else:
            method, uri = "POST", "/rpc"
            body = orjson.dumps(
                [{"jsonrpc": "2.0", "id": k, "method": "getBalance", "params": [f"0x{rng.getrandbits(32):08x}"]}
                 for k in range(1, 4)]
            ).decode()
        ms = BASE_NS // 10**6 + i
        out.append(Line({
            "msec": f"{ms // 1000}.{ms % 1000:03d}",
            "request_id": f"req-{i:05d}",
            "remote_addr": f"10.0.{i % 200}.{i % 250 + 1}",
            "request_method": method,
            "request_uri": uri,
            "server_protocol": "HTTP/1.1",
            "host": "shop.example.com",
            "status": "200",
            "body_bytes_sent": "100",
            "request_time": "0.005",
            "request_body": body,
            "http_content_type": "application/json" if body else "",
        }, expect))
    return out


@dataclass
class Outcome:
    views: dict[str, EndpointView]
    reported: dict[str, set[str]]  # endpoint -> ids of requests with a real divergence (stored)
    expected: dict[str, set[str]]  # "value"/"status" -> ids that hit that regression
    compared: int
    probes: int

    @property
    def noise_reported(self) -> int:
        """Requests reported divergent that hit no regression."""
        hit = self.expected["value"] | self.expected["status"]
        return sum(len(ids - hit) for ids in self.reported.values())

    def found(self, kind: str) -> int:
        ids = set().union(*self.reported.values()) if self.reported else set()
        return len(self.expected[kind] & ids)

    @property
    def latency_regressions(self) -> list[str]:
        return sorted(name for name, v in self.views.items() if v.latency.regression)


async def run(workdir: Path, *, secondary: bool, regressions: bool, n: int = N_REQUESTS,
              timeout_seconds: float = 240.0) -> Outcome:
    lines = access_log(n)
    backends = {"baseline": NoisyBackend(), "candidate": NoisyBackend(regressions=regressions)}
    if secondary:
        backends["secondary"] = NoisyBackend()
    urls = {name: await b.start() for name, b in backends.items()}
    d = Config()
    store_path = workdir / "diffs.db"
    cfg = dataclasses.replace(
        d,
        bus=dataclasses.replace(d.bus, url=f"sqlite:///{workdir / 'bus.db'}"),
        collector=dataclasses.replace(d.collector, listen="127.0.0.1:0"),
        replayer=dataclasses.replace(
            d.replayer, speed=2.0, methods=("GET", "POST"), candidate=urls["candidate"], baseline=urls["baseline"],
            secondary=urls.get("secondary", ""),
        ),
        comparer=dataclasses.replace(
            d.comparer, unordered_paths=("$.facets",), store=dataclasses.replace(d.comparer.store, path=str(store_path)),
        ),
        metrics=dataclasses.replace(d.metrics, listen="127.0.0.1:0"),
    )
    try:
        async with Pipeline(cfg) as pipeline:
            assert pipeline.collector is not None and pipeline.comparer is not None and pipeline.replayer is not None
            await asyncio.to_thread(feed, [line.record for line in lines], "127.0.0.1", pipeline.collector.port)
            deadline = time.monotonic() + timeout_seconds
            comparer = pipeline.comparer
            while comparer.compared + comparer.not_compared + comparer.skipped < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"compared {comparer.compared} of {n} in {timeout_seconds:.0f} s")
                await asyncio.sleep(0.1)
            compared = comparer.compared
            probes = pipeline.replayer._probes.sent
    finally:
        for b in backends.values():
            await b.stop()
    reader = StoreReader(str(store_path))
    views = {v.endpoint: v for v in reader.endpoints()}
    reported = {name: {s["result_id"] for s in reader.samples(name, limit=100_000)} for name in views}
    expected: dict[str, set[str]] = {"value": set(), "status": set()}
    for line in lines:
        if line.expect and regressions:
            expected[line.expect].add(line.record["request_id"])
    return Outcome(views, reported, expected, compared, probes)
