"""The page serves the person debugging: request beside responses, a curl command that
really reproduces the request, a link per divergence, latency in ms, pages instead of
caps, nothing clipped at 1280 px. Headless Chromium over a store of hand-built results;
the curl commands the page writes are run by bash and a real curl against an aiohttp
server that records what it received.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from browser import Browser, chromium, open_page

from comparer_session import ComparerSession
from shadowreplay.comparer.web import CSP, DivergencePage
from shadowreplay.contract.config import ComparerConfig, WebConfig
from shadowreplay.contract.record import Origin, ReplayResult, RequestRecord, Response, encode_request

pytestmark = pytest.mark.integration
__all__ = ["chromium"]  # the fixture, imported for pytest

CURL_HINT = "install curl (make test installs it via tests/system-deps.sh)"
T0 = 1_795_600_800_000_000_000
JSON = (("content-type", "application/json"),)
LONG = "x" * 420  # no place to break a line
BINARY = bytes(range(256)) + b"%s%%\\'\x00\r\n"


def rpc(ident: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "result": value}


def make(i: int, method: str, target: str, endpoint: str, baseline: Response, candidate: Response,
         headers: tuple[tuple[str, str], ...] = (), body: bytes | None = None) -> ReplayResult:
    req = RequestRecord(id=f"r{i}", ts=T0 + i * 10**6, method=method, target=target, host="shop.example.com",
                        headers=headers, body=body, client="10.1.2.3", origin=Origin(200, 10, 0.0123456789))
    return ReplayResult(id=req.id, request=req, endpoint=endpoint, scheduled=req.ts, sent=req.ts,
                        responses={"baseline": baseline, "candidate": candidate})


def jresp(value: Any, status: int = 200, latency: float = 0.012345678) -> Response:
    return Response(status=status, headers=JSON, body=orjson.dumps(value), latency=latency, ttfb=latency / 2)


def results() -> list[ReplayResult]:
    out = [
        make(1, "POST", "/api/orders?x=1", "POST /api/orders",
             jresp({"order": {"id": 7, "total": 10.5}, "note": LONG}, 200, 0.012345678),
             jresp({"error": "boom " + LONG}, 500, 0.0934567891),
             headers=(("Content-Type", "application/json"), ("X-Api-Key", "redacted:hmac:0123456789abcdef"),
                      ("X-Long", LONG), ("Cookie", "a=1; b=2")),
             body=orjson.dumps({"sku": "A-1", "qty": 2, "comment": LONG})),
        make(2, "PUT", "/upload/blob", "PUT /upload/blob",
             Response(status=200, headers=(("content-type", "text/plain"),), body=b"ok\nline two\n", latency=0.004),
             Response(status=200, headers=(("content-type", "text/plain"),), body=b"ok\nline 2\n", latency=1.5),
             headers=(("Content-Type", "application/octet-stream"),), body=BINARY),
        make(3, "GET", f"/search?q={LONG}&tags=[a]{{b}}", "GET /search",
             jresp({"hits": [LONG, LONG], "took": 1}), jresp({"hits": [LONG], "took": 1})),
        make(4, "POST", "/rpc", "rpc:getBlock",
             jresp([rpc(1, "a"), rpc(1, "b"), rpc(2, "x")]), jresp([rpc(2, "x"), rpc(1, "a"), rpc(1, "B")]),
             headers=(("Content-Type", "application/json"),),
             body=orjson.dumps([{"jsonrpc": "2.0", "id": i, "method": "getBlock"} for i in (1, 1, 2)])),
    ]
    for k in range(60):  # one endpoint with more divergences than a page
        out.append(make(100 + k, "GET", f"/api/items/{k}", "GET /api/items/{id}", jresp({"v": k}), jresp({"v": -k - 1})))
    for k in range(55):  # more endpoints than a page
        out.append(make(200 + k, "GET", f"/e/{k}", f"GET /e/n{k:02d}", jresp({"v": 1}), jresp({"v": 2})))
    return out


@pytest.fixture
async def page_url(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A store of the results above, served on its own loopback listener; yields the base
    URL and the store id of each hand-built result (by result id)."""
    path = str(tmp_path / "diffs.db")
    session = ComparerSession(path)
    ids: dict[str, int] = {}
    session.store.subscribe(lambda added: ids.update({a["result_id"]: a["id"] for a in added}))
    session.feed(*results())
    page = DivergencePage(path, WebConfig(listen="127.0.0.1:0"))
    await page.start()
    try:
        yield f"http://127.0.0.1:{page.port}/", ids
    finally:
        await page.stop()
        session.close()


async def open_at(browser: Browser, url: str) -> None:
    await browser.call("Page.enable")
    await browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    await browser.call("Page.navigate", url=url)
    await browser.wait_for("document.body && document.body.dataset.ready === '1'")


# Everything laid out at 1280 px: no element past the right edge of the window, no box
# whose content is wider than the box itself (clipped, or spilling over its neighbour).
LAYOUT_PROBLEMS = r"""
(() => {
  const W = document.documentElement.clientWidth;
  const name = (e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + String(e.className).replace(/ +/g, '.') : '');
  const bad = [];
  if (document.documentElement.scrollWidth > W) bad.push('page is ' + document.documentElement.scrollWidth + ' px wide');
  for (const e of document.querySelectorAll('body *')) {
    const st = getComputedStyle(e);
    if (st.display === 'none' || e.closest('[hidden]')) continue;
    const r = e.getBoundingClientRect();
    if (!r.width && !r.height) continue;
    if (r.right > W + 0.5) bad.push(name(e) + ' ends at ' + Math.round(r.right));
    if (st.display !== 'inline' && e.scrollWidth > e.clientWidth + 1) bad.push(name(e) + ' content ' + e.scrollWidth + ' > box ' + e.clientWidth);
  }
  return bad.slice(0, 20);
})()
"""


async def test_request_beside_responses_permalink_ms_pages_and_1280_layout(
    tmp_path: Path, chromium: tuple[str, aiohttp.ClientSession], page_url: tuple[str, dict[str, int]]
) -> None:
    devtools, session = chromium
    url, ids = page_url
    browser, ws = await open_page(devtools, session)
    try:
        # A permalink opens its divergence, and selects its endpoint, on a fresh page.
        await open_at(browser, f"{url}#d={ids['r1']}")
        await browser.wait_for("document.querySelector('#side-request .request-line') !== null")
        assert await browser.js("document.querySelector('#endpoint-title').textContent") == "POST /api/orders"
        assert await browser.js("document.querySelector('#permalink').getAttribute('href')") == f"#d={ids['r1']}"
        title = await browser.js("document.querySelector('#detail-title').textContent")
        assert title.startswith(f"#{ids['r1']} ")

        # The full request: method and target, headers, body as text.
        assert await browser.js("document.querySelector('#side-request .request-line').textContent") == "POST /api/orders?x=1"
        headers = await browser.js(
            "[...document.querySelectorAll('#side-request table.headers tr')].map(tr => [...tr.cells].map(c => c.textContent))"
        )
        assert headers[:2] == [["Content-Type", "application/json"], ["X-Api-Key", "redacted:hmac:0123456789abcdef"]]
        assert '"sku":"A-1"' in await browser.js("document.querySelector('#side-request pre.body').textContent")

        # A status change is listed first; latency reads in ms, never as raw seconds.
        diffs = await browser.js("[...document.querySelectorAll('#diffs tr.diff')].map(tr => tr.cells[0].textContent)")
        assert diffs[0] == "status" and "$.error" in diffs
        assert await browser.js("document.querySelector('#side-left .latency').textContent") == " · 12.3 ms"
        assert await browser.js("document.querySelector('#side-right .latency').textContent") == " · 93.5 ms"
        assert "duration" not in await browser.js("document.querySelector('#side-left').textContent")  # baseline, not origin
        texts = await browser.js("document.querySelector('#detail').innerText")
        assert "0.0123" not in texts and "0.0934" not in texts

        assert (problems := await browser.js(LAYOUT_PROBLEMS)) == [], '\n'.join(problems)
        shot = await browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (tmp_path / "page-1280.png").write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {tmp_path / 'page-1280.png'}")

        # A long target and long values wrap at 1280 px too.
        await browser.js(f"window.shadowreplay.showDivergence({ids['r3']})")
        await browser.wait_for("document.querySelector('#side-request .request-line').textContent.startsWith('GET /search')")
        assert (problems := await browser.js(LAYOUT_PROBLEMS)) == [], '\n'.join(problems)

        # A binary body: its size, a hex view, and base64 on request.
        await browser.js(f"window.shadowreplay.showDivergence({ids['r2']})")
        await browser.wait_for("document.querySelector('#side-request .binary') !== null")
        hexdump = await browser.js("document.querySelector('#side-request .binary pre').textContent")
        tabs = await browser.js("document.querySelector('#side-request .binary .tabs').textContent")
        assert hexdump.startswith("00000000  00 01 02 03") and f"{len(BINARY)} bytes" in tabs
        await browser.js("[...document.querySelectorAll('#side-request .binary button')].find(b => b.textContent === 'base64').click()")
        b64 = await browser.js("document.querySelector('#side-request .binary pre').textContent")
        assert base64.b64decode(b64.replace("\n", "")) == BINARY
        assert await browser.js("document.querySelector('#side-right .latency').textContent") == " · 1,500 ms"
        assert (problems := await browser.js(LAYOUT_PROBLEMS)) == [], '\n'.join(problems)

        # JSON-RPC: the answer that changed is the second one with id 1, on both sides.
        await browser.js(f"window.shadowreplay.showDivergence({ids['r4']})")
        await browser.wait_for("document.querySelectorAll('#side-right pre div.hl').length > 0")
        marked = await browser.js(
            "[...document.querySelectorAll('#side-left pre div.hl, #side-right pre div.hl')].map(d => d.dataset.path)"
        )
        assert marked == ["$[?(@.id==1)][1].result", "$[?(@.id==1)][1].result"]

        # Pages, not a silent cap: 60 requests of an endpoint, 50 at a time.
        await browser.js("window.shadowreplay.selectEndpoint('GET /api/items/{id}')")
        await browser.wait_for("document.querySelectorAll('#samples tr.sample').length === 50")
        assert await browser.js("document.querySelector('#samples-pager span').textContent") == "1–50 of 60"
        await browser.js("document.querySelector('#samples-pager button.next').click()")
        await browser.wait_for("document.querySelectorAll('#samples tr.sample').length === 10")
        assert await browser.js("document.querySelector('#samples-pager span').textContent") == "51–60 of 60"
        await browser.js("document.querySelector('#samples-pager button.prev').click()")
        await browser.wait_for("document.querySelectorAll('#samples tr.sample').length === 50")
        # ...and 60 endpoints, 50 at a time.
        assert await browser.js("document.querySelector('#endpoints-pager span').textContent") == "1–50 of 60"
        await browser.js("document.querySelector('#endpoints-pager button.next').click()")
        await browser.wait_for("document.querySelectorAll('#endpoints tr.ep').length === 10")
        assert (problems := await browser.js(LAYOUT_PROBLEMS)) == [], '\n'.join(problems)

        # Clicking a request puts its link in the address bar.
        await browser.js("document.querySelector('#samples tr.sample').click()")
        await browser.wait_for("location.hash.includes('d=')")
        first = await browser.js("document.querySelector('#samples tr.sample').dataset.id")
        assert f"d={first}" in await browser.js("location.hash")
    finally:
        await ws.close()


# -- curl: the command the page writes, run by a shell against a server that records ------


class Recorder:
    """An aiohttp server that keeps what each request carried, byte for byte."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append({
            "method": request.method,
            "target": request.raw_path,
            "headers": [(k.decode("latin-1"), v.decode("utf-8")) for k, v in request.raw_headers],
            "body": await request.read(),
        })
        return web.Response(text="recorded")

    async def start(self) -> str:
        server = web.Server(self.handle)
        self.runner = web.ServerRunner(server)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


HOSTILE_VALUE = "it's \"both\" $(touch pwned) `touch pwned` \\ ! ; & | > < * ? ~ #"
CURL_CASES: list[RequestRecord] = [
    RequestRecord(id="c1", ts=T0, method="GET", target="/search?q=it's&x=[1]{2}&y=$HOME&z=`id`&w=a\\b!",
                  headers=(("X-Quote", HOSTILE_VALUE), ("X-Empty", ""), ("X-Multi", "1"), ("X-Multi", "2"),
                           ("Accept", "application/json"), ("X-Unicode", "café ☕"))),
    RequestRecord(id="c2", ts=T0, method="POST", target="/orders",
                  headers=(("Content-Type", "application/json"),),
                  body=('@{"a": "it\'s $HOME \\n `id`"}\n second line ☕ ' + HOSTILE_VALUE).encode()),
    RequestRecord(id="c3", ts=T0, method="PUT", target="/blob", headers=(("Content-Type", "application/octet-stream"),),
                  body=BINARY),
    RequestRecord(id="c4", ts=T0, method="POST", target="/form", body=b"a=1&b=it%27s\r\nc=$HOME"),
    RequestRecord(id="c5", ts=T0, method="HEAD", target="/head", headers=(("User-Agent", "probe/1.0"),)),
    RequestRecord(id="c6", ts=T0, method="DELETE", target="/items/9/../10"),
    RequestRecord(id="c7", ts=T0, method="GET", target="/a b/ü?q=ü ö"),
    RequestRecord(id="c8", ts=T0, method="PATCH", target="/p", headers=(("Content-Type", "text/plain"),), body=b"-"),
]


def expected_target(target: str) -> str:
    # The page percent-encodes what no URL may hold (spaces, non-ASCII); the rest goes as logged.
    return "".join(c if 0x20 < ord(c) < 0x7F else "".join(f"%{b:02X}" for b in c.encode()) for c in target)


async def test_curl_command_reproduces_the_request_exactly(
    tmp_path: Path, chromium: tuple[str, aiohttp.ClientSession], page_url: tuple[str, dict[str, int]]
) -> None:
    bash, curl = shutil.which("bash"), shutil.which("curl")
    if curl is None or bash is None:
        pytest.fail(CURL_HINT)
    devtools, session = chromium
    url, ids = page_url
    recorder = Recorder()
    base = await recorder.start() + "/prefix/"
    browser, ws = await open_page(devtools, session)
    try:
        await open_at(browser, f"{url}#d={ids['r2']}")
        await browser.wait_for("document.querySelector('#curl') !== null")
        # The command shown for a stored divergence, with a base URL typed into the field.
        await browser.js(
            "(() => { const i = document.querySelector('#curl-base'); i.value = " + orjson.dumps(base).decode()
            + "; i.dispatchEvent(new Event('input')); })()"
        )
        shown = await browser.js("document.querySelector('#curl').textContent")
        assert shown.startswith("printf '") and base.rstrip("/") in shown
        records = [("shown", RequestRecord(id="r2", ts=T0, method="PUT", target="/upload/blob",
                                           headers=(("Content-Type", "application/octet-stream"),), body=BINARY), shown)]
        for rec in CURL_CASES:
            wire = encode_request(rec).decode()
            cmd = await browser.js(f"window.shadowreplay.curlCommand({wire}, {orjson.dumps(base).decode()}).command")
            records.append((rec.id, rec, cmd))
        for name, rec, cmd in records:
            proc = await asyncio.create_subprocess_exec(
                bash, "-c", cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, (name, cmd, err)
            got = recorder.got.pop()
            assert got["method"] == rec.method, name
            assert got["target"] == "/prefix" + expected_target(rec.target), name
            assert got["body"] == (rec.body or b""), name
            sent = [(k, v) for k, v in got["headers"] if k.lower() not in ("host", "content-length")]
            assert sent == list(rec.headers), (name, cmd)
        assert not (tmp_path / "pwned").exists()  # nothing in a value ever ran
    finally:
        await ws.close()
        await recorder.stop()


# -- streams: the arrival chart and the delays in ms ------------------------------------------

STREAM_TEXT = (("content-type", "text/plain"),)
STREAM_BODY = b"".join(b"line %02d of the deploy log\n" % i for i in range(20))
PROGRESSIVE = tuple((round(0.002 + 0.1 * i, 6), 27 * (i + 1)) for i in range(20))  # 20 lines, 100 ms apart
HELD = ((2.015, 91),)  # the same body gzipped and held to the end (as nginx with gzip on does)
LATE = tuple((round(t + 0.8, 6), n) for t, n in PROGRESSIVE)  # the same cadence, 800 ms late


def streamed(timeline: tuple[tuple[float, int], ...], **kw: Any) -> Response:
    return Response(status=200, headers=STREAM_TEXT, body=STREAM_BODY, latency=timeline[-1][0], ttfb=timeline[0][0],
                    timeline=timeline, **kw)


def stream_results() -> list[ReplayResult]:
    # Eight of each: enough for the endpoint's noise model to call the stream kinds real.
    out = [make(300 + k, "GET", f"/deploys/{k}/log", "GET /deploys/{id}/log",
                streamed(PROGRESSIVE, stream=True), streamed(HELD)) for k in range(8)]
    out += [make(400 + k, "GET", f"/exports/{k}", "GET /exports/{id}",
                 streamed(PROGRESSIVE, stream=True), streamed(LATE)) for k in range(8)]
    out.append(make(500, "GET", "/api/orders/1", "GET /api/orders/{id}", jresp({"total": 1}), jresp({"total": 2})))
    return out


@pytest.fixture
async def stream_page_url(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A store with a buffered stream, a late stream and a JSON divergence, served on
    loopback; latency diffs on, so seconds and milliseconds meet in one table."""
    path = str(tmp_path / "streams.db")
    config = ComparerConfig(latency_ratio_threshold=1.2, latency_min_delta_seconds=0.05)
    session = ComparerSession(path, config)
    ids: dict[str, int] = {}
    session.store.subscribe(lambda added: ids.update({a["result_id"]: a["id"] for a in added}))
    session.feed(*stream_results())
    page = DivergencePage(path, WebConfig(listen="127.0.0.1:0"))
    await page.start()
    try:
        yield f"http://127.0.0.1:{page.port}/", ids
    finally:
        await page.stop()
        session.close()


def expected_steps(timeline: tuple[tuple[float, int], ...], end: float, frame: dict[str, float]) -> list[tuple[float, float]]:
    """Cumulative steps of a timeline in the chart's plot frame: the share of the side's own
    body over time, flat at 0 until the first byte and flat after the last."""
    total = timeline[-1][1]

    def xy(t: float, share: float) -> tuple[float, float]:
        return frame["x"] + frame["width"] * t / end, frame["y"] + frame["height"] * (1 - share)

    out, share = [xy(0, 0)], 0.0
    for t, n in timeline:
        out.append(xy(t, share))
        share = n / total
        out.append(xy(t, share))
    return [*out, xy(end, share)]


CHART = r"""
(() => {
  const svg = document.querySelector('#arrival-chart svg');
  if (!svg) return null;
  const r = svg.querySelector('rect');
  const box = svg.getBoundingClientRect();
  return {
    ns: svg.namespaceURI, width: box.width, height: box.height,
    frame: Object.fromEntries(['x', 'y', 'width', 'height'].map((k) => [k, Number(r.getAttribute(k))])),
    lines: [...svg.querySelectorAll('polyline, path')].map((p) => (p.getAttribute('points') || '').trim().split(/\s+/)
      .map((xy) => xy.split(',').map(Number))),
    text: svg.textContent,
  };
})()
"""


async def test_a_stream_divergence_draws_its_arrival_and_reads_in_ms(
    chromium: tuple[str, aiohttp.ClientSession], stream_page_url: tuple[str, dict[str, int]]
) -> None:
    devtools, session = chromium
    url, ids = stream_page_url
    held, late, plain = ids["r307"], ids["r407"], ids["r500"]
    # The API: the chart and the wording with the divergence, nothing of the kind without a stream.
    async with session.get(f"{url}api/divergences/{held}") as r:
        detail = await r.json()
    assert detail["arrival_svg"].startswith("<svg ") and "<script" not in detail["arrival_svg"]
    assert [d["text"] for d in detail["diffs"] if "text" in d] == [
        "buffering: first byte 2.0 → 2015.0 ms, average byte 952.0 → 2015.0 ms, last byte 1902.0 → 2015.0 ms, "
        "largest burst 10 % → 100 % of the body"
    ]
    async with session.get(f"{url}api/divergences/{plain}") as r:
        assert "arrival_svg" not in await r.json()
    async with session.get(url) as r:
        assert r.headers["Content-Security-Policy"] == CSP

    browser, ws = await open_page(devtools, session)
    try:
        await open_at(browser, f"{url}#d={held}")
        await browser.js(
            "window.violations = []; document.addEventListener('securitypolicyviolation', "
            "(e) => window.violations.push(e.violatedDirective + ' ' + e.blockedURI))"
        )
        await browser.js(f"window.shadowreplay.showDivergence({held})")  # again, now that violations are watched
        chart = await browser.wait_for(CHART)
        assert chart["ns"] == "http://www.w3.org/2000/svg" and chart["width"] > 100 and chart["height"] > 50
        assert "baseline: 540 B, first byte 2.0 ms" in chart["text"] and "candidate: 91 B, first byte 2.02 s" in chart["text"]
        end = HELD[-1][0]
        baseline_line, candidate_line = chart["lines"]
        for got, timeline in ((baseline_line, PROGRESSIVE), (candidate_line, HELD)):
            want = expected_steps(timeline, end, chart["frame"])
            assert len(got) == len(want)
            assert all(abs(gx - wx) <= 0.1 and abs(gy - wy) <= 0.1 for (gx, gy), (wx, wy) in zip(got, want, strict=True)), (got, want)
        # The candidate is flat until it jumps at the end; the baseline climbs in twenty steps.
        assert len({round(y, 1) for _, y in candidate_line}) == 2 and len({round(y, 1) for _, y in baseline_line}) == 21

        rows = await browser.js("[...document.querySelectorAll('#diffs tr.diff')].map(tr => [...tr.cells].map(c => c.textContent))")
        assert rows == [[
            "cadence:buffering", "buffering",
            "first byte 2 ms · average byte 952 ms · last byte 1,902 ms · largest burst 10 % of 540 bytes",
            "first byte 2,015 ms · average byte 2,015 ms · last byte 2,015 ms · largest burst 100 % of 91 bytes",
        ]]  # 2.015 s against 1.902 s is no latency diff at a 1.2 ratio
        caption = await browser.js("document.querySelector('#arrival-text').textContent")
        assert caption.startswith("buffering: first byte 2.0 → 2015.0 ms")
        assert (problems := await browser.js(LAYOUT_PROBLEMS)) == [], '\n'.join(problems)

        # A late first byte beside a latency diff: both in ms, each from its own unit.
        await browser.js(f"window.shadowreplay.showDivergence({late})")
        await browser.wait_for(f"document.querySelector('#detail-title').textContent.startsWith('#{late} ')")
        rows = await browser.js("[...document.querySelectorAll('#diffs tr.diff')].map(tr => [...tr.cells].map(c => c.textContent))")
        cells = {r[0]: r[1:] for r in rows}
        assert cells["cadence:first_byte"] == ["first_byte_delay", "2 ms", "802 ms"]
        assert cells["latency"] == ["latency", "1,902 ms", "2,702 ms"]
        assert await browser.js("document.querySelector('#arrival').hidden") is False
        assert await browser.js("document.querySelector('#arrival-text').textContent") == "first_byte_delay: first body byte 2.0 → 802.0 ms"

        # No stream, no chart (and the last one is gone).
        await browser.js(f"window.shadowreplay.showDivergence({plain})")
        await browser.wait_for(f"document.querySelector('#detail-title').textContent.startsWith('#{plain} ')")
        assert await browser.js("document.querySelector('#arrival').hidden") is True
        assert await browser.js("document.querySelectorAll('#detail svg, #arrival-text li').length") == 0
        assert await browser.js("window.violations") == []

        # Markup the chart never holds is refused whole, never half-imported.
        refused = [
            "<svg xmlns='http://www.w3.org/2000/svg'><script>window.ran = 1</script></svg>",
            "<svg xmlns='http://www.w3.org/2000/svg' onload='window.ran = 1'><rect/></svg>",
            "<svg xmlns='http://www.w3.org/2000/svg'><foreignObject><p xmlns='http://www.w3.org/1999/xhtml'>x</p></foreignObject></svg>",
            "<svg xmlns='http://www.w3.org/2000/svg'><a href='javascript:1'><text>x</text></a></svg>",
            "<svg xmlns='http://www.w3.org/2000/svg'><rect></svg>",
            "<html xmlns='http://www.w3.org/1999/xhtml'><img src='x' onerror='window.ran = 1'/></html>",
            "<svg><rect/></svg>",  # no SVG namespace: not an SVG element
        ]
        got = await browser.js(f"{orjson.dumps(refused).decode()}.map((t) => window.shadowreplay.svgNode(t) === null)")
        assert got == [True] * len(refused)
        assert await browser.js(f"window.shadowreplay.svgNode({orjson.dumps(detail['arrival_svg']).decode()}).localName") == "svg"
        assert await browser.js("window.ran === undefined")
    finally:
        await ws.close()
