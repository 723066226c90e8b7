"""The divergence page in headless Chromium, after a real replay with known divergences.

Request records go onto a SQLite bus; the real replayer sends them to the demo backends
(the candidate changes ``price`` on every 4th product and answers 500 on carts); the real
comparer diffs the responses and fills the divergence store; the page is served on the
metrics listener. A hand-built result whose body holds ``<script>`` checks escaping.
Chromium is driven over the DevTools protocol with aiohttp's websocket client.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from pathlib import Path

import aiohttp
import orjson
import pytest
from browser import chromium, open_page
from waiting import DEADLINE_SECONDS, until

from prometheus_client import CollectorRegistry

from shadowreplay.comparer.loop import Comparer
from shadowreplay.comparer.metrics import ComparerMetrics
from shadowreplay.comparer.store import DivergenceStore
from shadowreplay.comparer.web import DivergencePage
from shadowreplay.app import Pipeline
from shadowreplay.contract.config import ComparerConfig, Config, StoreConfig, WebConfig
from shadowreplay.demo.backends import Backend
from shadowreplay.contract.record import ReplayResult, RequestRecord, Response, encode_request, encode_result

pytestmark = pytest.mark.integration
__all__ = ["chromium"]  # the fixture, imported for pytest

BASE_NS = 1_795_600_800_000_000_000
PRODUCTS = 64  # every 4th id diverges on $.price (enough requests for a confident verdict)
CARTS = 12  # every cart diverges on status
HOSTILE = "GET /hostile"
SCRIPT = "<script>window.__pwned = 1</script>"
IMG = "<img src=x onerror=\"window.__pwned = 2\">"


def hostile_result(i: int) -> ReplayResult:
    """A hand-built diverging result whose bodies are HTML and script, as text/html and JSON."""
    req = RequestRecord(id=f"hostile-{i}", ts=BASE_NS + 10**9 * 100 + i, method="GET", target="/hostile?<b>=1")
    html_ct = (("content-type", "text/html"),)
    return ReplayResult(
        id=req.id,
        request=req,
        endpoint=HOSTILE,
        scheduled=req.ts,
        sent=req.ts,
        responses={
            "baseline": Response(status=200, headers=html_ct, body=b"<p>fine</p>", latency=0.01),
            "candidate": Response(status=200, headers=html_ct, body=(SCRIPT + IMG).encode(), latency=0.01),
        },
    )


async def test_page_shows_divergences_escapes_bodies_and_streams_new_ones(
    tmp_path: Path, chromium: tuple[str, aiohttp.ClientSession]
) -> None:
    devtools, session = chromium
    baseline, candidate = Backend(candidate=False), Backend(candidate=True)
    base_url, cand_url = await baseline.start(), await candidate.start()
    d = Config()
    cfg = dataclasses.replace(
        d,
        bus=dataclasses.replace(d.bus, url=f"sqlite:///{tmp_path / 'bus.db'}", partitions=2),
        replayer=dataclasses.replace(d.replayer, candidate=cand_url, baseline=base_url, speed=1000.0),
        comparer=dataclasses.replace(d.comparer, web=dataclasses.replace(d.comparer.web, heartbeat_seconds=0.5)),
        metrics=dataclasses.replace(d.metrics, listen="127.0.0.1:0"),
    )
    targets = [f"/api/products/{i}" for i in range(1, PRODUCTS + 1)] + [f"/api/users/{u}/cart" for u in range(1, CARTS + 1)]
    try:
        async with Pipeline(cfg, ("replay", "compare")) as pipeline:
            assert pipeline.bus is not None and pipeline.comparer is not None
            producer = pipeline.bus.producer()
            for i, target in enumerate(targets):
                rec = RequestRecord(id=f"req-{i}", ts=BASE_NS + i * 1_000_000, method="GET", target=target, client="10.0.0.1")
                producer.publish(cfg.bus.requests_topic, encode_request(rec), key=rec.partition_key(), timestamp_ns=rec.ts)
            producer.publish(cfg.bus.results_topic, encode_result(hostile_result(0)), key=b"h")
            producer.flush()
            comparer = pipeline.comparer
            await until(lambda: comparer.compared >= len(targets) + 1, "every result compared")
            assert pipeline.comparer.diverged == PRODUCTS // 4 + CARTS + 1
            url = f"http://127.0.0.1:{pipeline.metrics_server.port}/"

            async def all_stored() -> bool:  # the comparer writes the store after each batch
                async with session.get(url + "api/totals") as r:
                    return bool((await r.json())["stored"] == PRODUCTS // 4 + CARTS + 1)

            await until(all_stored, "every divergence stored")

            # The JSON API (also what `diffs --json` prints).
            async with session.get(url + "api/endpoints") as r:
                assert r.status == 200
                eps = {e["endpoint"]: e for e in await r.json()}
            prod = eps["GET /api/products/{id}"]
            assert (prod["compared"], prod["diverged"], prod["stored"]) == (PRODUCTS, PRODUCTS // 4, PRODUCTS // 4)
            assert [f["path"] for f in prod["fields"]] == ["$.price"]
            assert eps["GET /api/users/{id}/cart"]["diverged"] == CARTS
            async with session.get(url) as r:
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]

            # The live feed: SSE headers, a heartbeat, then an event for a new divergence.
            async with session.get(url + "api/feed") as resp:
                feed = Feed(resp)
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                assert resp.headers["X-Accel-Buffering"] == "no"
                assert b"ping" in await asyncio.wait_for(feed.until(b": ping"), DEADLINE_SECONDS)
                producer.publish(cfg.bus.results_topic, encode_result(hostile_result(1)), key=b"h")
                producer.flush()
                event = await asyncio.wait_for(feed.until(b"event: divergence"), DEADLINE_SECONDS)
                data = orjson.loads(event.split(b"data: ", 1)[1].split(b"\n", 1)[0])
                assert data["endpoint"] == HOSTILE and data["result_id"] == "hostile-1"

            browser, ws = await open_page(devtools, session)
            try:
                await browser.call("Page.enable")
                await browser.call("Page.navigate", url=url)
                await browser.wait_for("document.body && document.body.dataset.ready === '1'")
                rows = await browser.js("[...document.querySelectorAll('#endpoints tr.ep')].map(r => r.dataset.endpoint)")
                assert rows[0] == "GET /api/users/{id}/cart" and "GET /api/products/{id}" in rows  # by rate
                # Click an endpoint, see the field.
                await browser.js(
                    "[...document.querySelectorAll('#endpoints tr.ep')]"
                    ".find(r => r.dataset.endpoint === 'GET /api/products/{id}').click()"
                )
                fields = await browser.wait_for(
                    "[...document.querySelectorAll('#fields tr.field')].map(r => r.dataset.path).join(',') || null"
                )
                assert fields == "$.price"
                await browser.wait_for("document.querySelectorAll('#samples tr.sample').length > 0")  # rendered
                assert await browser.js("document.querySelectorAll('#samples tr.sample').length") == PRODUCTS // 4
                # Open one request: both sides shown, the differing field highlighted on each.
                await browser.js("document.querySelector('#samples tr.sample').click()")
                await browser.wait_for("!document.querySelector('#detail').hidden && document.querySelectorAll('#side-right pre div').length > 0")
                highlighted = await browser.js(
                    "[...document.querySelectorAll('#side-left pre div.hl, #side-right pre div.hl')].map(d => d.textContent.trim())"
                )
                assert len(highlighted) == 2 and all(h.startswith('"price":') for h in highlighted)
                assert highlighted[0] != highlighted[1]
                shot = await browser.call("Page.captureScreenshot", format="png")
                shot_path = tmp_path / "divergence-page.png"
                shot_path.write_bytes(base64.b64decode(shot["data"]))
                print(f"screenshot: {shot_path}")

                # A body with <script> and <img onerror> shows as text and runs nothing.
                await browser.js(
                    "[...document.querySelectorAll('#endpoints tr.ep')]"
                    f".find(r => r.dataset.endpoint === {orjson.dumps(HOSTILE).decode()}).click()"
                )
                await browser.wait_for("document.querySelectorAll('#samples tr.sample').length === 2")
                await browser.js("document.querySelector('#samples tr.sample').click()")
                await browser.wait_for("document.querySelector('#side-right pre') && document.querySelector('#side-right pre').textContent.includes('pwned')")
                assert await browser.js("document.querySelector('#side-right pre').textContent") == SCRIPT + IMG
                assert await browser.js("document.querySelector('#side-right pre div.hl').textContent") == SCRIPT + IMG
                assert await browser.js("document.querySelectorAll('script').length") == 1  # only page.js
                assert await browser.js("document.querySelectorAll('img').length") == 0
                assert await browser.js("document.querySelector('#detail-title').textContent.includes('/hostile?<b>=1')")
                assert await browser.js("typeof window.__pwned") == "undefined"

                # The page's own live feed shows a divergence stored after it loaded.
                producer.publish(cfg.bus.results_topic, encode_result(hostile_result(2)), key=b"h")
                producer.flush()
                item = await browser.wait_for(
                    "[...document.querySelectorAll('#feed li')].map(li => li.textContent).find(t => t.includes('/hostile')) || null"
                )
                assert item.startswith("#") and "line:1" in item  # text bodies are diffed by line
                assert await browser.js("document.querySelector('#live').className") == "live on"
            finally:
                await ws.close()
            producer.close()
    finally:
        await baseline.stop()
        await candidate.stop()


class Feed:
    """Reads a Server-Sent Events stream one block (event or comment) at a time."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buf = b""

    async def block(self) -> bytes:
        while b"\n\n" not in self.buf:
            chunk = await self.resp.content.readany()
            assert chunk, "feed closed"
            self.buf += chunk
        block, self.buf = self.buf.split(b"\n\n", 1)
        return block

    async def until(self, marker: bytes) -> bytes:
        """The next block holding ``marker`` (earlier blocks are skipped)."""
        while True:
            block = await self.block()
            if marker in block:
                return block


async def test_api_on_its_own_listener_errors_and_feed_resume(tmp_path: Path) -> None:
    path = str(tmp_path / "d.db")
    store = DivergenceStore(path, StoreConfig())
    # A comparer without a bus: its tallies are what the store's readers judge by.
    comparer = Comparer(ComparerConfig(), None, ComparerMetrics(CollectorRegistry()), store=store)  # type: ignore[arg-type]
    store.set_tallies_source(lambda: comparer.tallies)
    page = DivergencePage(path, WebConfig(listen="127.0.0.1:0", heartbeat_seconds=5.0))
    page.attach(store)
    await page.start()
    base = f"http://127.0.0.1:{page.port}/"
    try:
        for i in range(3):
            comparer.handle_result(hostile_result(i))
        store.flush()
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "api/samples") as r:
                assert r.status == 400
            async with s.get(base + "api/endpoints?since=someday") as r:
                assert r.status == 400 and "since" in (await r.json())["error"]
            async with s.get(base + "api/divergences/999") as r:
                assert r.status == 404
            async with s.get(base + "api/divergences/2") as r:
                item = await r.json()
                assert item["result_id"] == "hostile-1" and item["diffs"][0]["path"] == "line:1"
            async with s.get(base + "static/page.js") as r:
                assert r.status == 200 and "textContent" in await r.text()
            # A reconnecting client sends Last-Event-ID and gets what it missed, in order.
            async with s.get(base + "api/feed", headers={"Last-Event-ID": "1"}) as resp:
                feed = Feed(resp)
                events = [await asyncio.wait_for(feed.until(b"event: divergence"), DEADLINE_SECONDS) for _ in range(2)]
                assert [e.split(b"\n", 1)[0] for e in events] == [b"id: 2", b"id: 3"]
                assert b"hostile-1" in events[0] and b"hostile-2" in events[1]
                comparer.handle_result(hostile_result(3))
                store.flush()
                assert (await asyncio.wait_for(feed.until(b"event: divergence"), 5)).startswith(b"id: 4\nevent: divergence")
    finally:
        await page.stop()
        store.close()
