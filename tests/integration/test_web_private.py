"""The page as an attacker finds it: parameters, Host, credentials, pages, and a store of
20,000 diverging endpoints beside a collector that must keep acking.

Everything is real and on loopback: the page on its own listener or mounted on the
metrics listener of a Pipeline, aiohttp clients, a forward-protocol client that waits for
its ack.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest

from comparer_session import ComparerSession
from shadowreplay.comparer.store import DivergenceStore
from shadowreplay.comparer.web import DivergencePage
from shadowreplay.app import Pipeline
from shadowreplay.contract.config import Config, WebConfig
from shadowreplay.contract.record import ReplayResult, RequestRecord, Response, encode_result
from tests.conftest import loopback_config

pytestmark = pytest.mark.integration

JSON = (("content-type", "application/json"),)
T0 = 1_795_600_800_000_000_000


def diverging(i: int, target: str, *, fields: int = 1, status: int = 200) -> ReplayResult:
    req = RequestRecord(id=f"r{i}", ts=T0 + i, method="GET", target=target)
    base = {f"f{k}": 0 for k in range(fields)}
    cand = {f"f{k}": i + 1 for k in range(fields)}
    return ReplayResult(
        id=req.id, request=req, endpoint="", scheduled=req.ts, sent=req.ts,
        responses={
            "baseline": Response(status=200, headers=JSON, body=orjson.dumps(base), latency=0.01),
            "candidate": Response(status=status, headers=JSON, body=orjson.dumps(cand), latency=0.02),
        },
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, DivergenceStore]]:
    """A store (7 divergences on GET /p/{id}, 6 endpoints, 30 fields on one) behind a page
    on its own loopback listener."""
    path = str(tmp_path / "d.db")
    session = ComparerSession(path)
    store = session.store
    session.feed(*(diverging(i, f"/p/{i}") for i in range(7)))
    session.feed(*(diverging(100, f"/q/{name}") for name in "abcd"))
    session.feed(diverging(200, "/wide", fields=30, status=503))
    page = DivergencePage(path, WebConfig(listen="127.0.0.1:0"))
    await page.start()
    try:
        yield f"http://127.0.0.1:{page.port}/", store
    finally:
        await page.stop()
        store.close()


BAD = [
    "api/endpoints?since=inf", "api/endpoints?since=-inf", "api/endpoints?since=nan", "api/endpoints?since=1e400",
    "api/endpoints?since=99999999999999999999d", "api/endpoints?since=%00", "api/endpoints?limit=abc",
    "api/endpoints?limit=0", "api/endpoints?limit=100000", "api/endpoints?limit=1e3", "api/endpoints?offset=-1",
    "api/endpoints?offset=99999999999999999999999", "api/endpoints?fields_limit=NaN", "api/endpoints?endpoint=" + "x" * 5000,
    "api/samples", "api/samples?endpoint=GET%20/p/{id}&before=9223372036854775808", "api/samples?endpoint=x&before=0",
    "api/samples?endpoint=x&limit=-5", "api/samples?endpoint=x&limit=%E2%91%A0",
    "api/divergences/99999999999999999999999", "api/divergences/9223372036854775808", "api/divergences/abc",
    "api/divergences/-1", "api/divergences/0", "api/divergences/1.5",
]


async def test_bad_parameters_are_400_with_a_json_error_never_500(served: tuple[str, DivergenceStore]) -> None:
    url, _ = served
    async with aiohttp.ClientSession() as s:
        for q in BAD:
            async with s.get(url + q) as r:
                body = await r.json()
                assert r.status == 400 and body["error"], (q, r.status, body)
                assert "Traceback" not in body["error"]
        async with s.get(url + "api/nothing/here") as r:
            assert r.status == 404 and "no such API" in (await r.json())["error"]
        async with s.get(url + "api/divergences/9223372036854775807") as r:
            assert r.status == 404  # in range, just not there
        for good in ("api/endpoints?since=30m", "api/endpoints?limit=500&fields_limit=500", "api/samples?endpoint=x"):
            async with s.get(url + good) as r:
                assert r.status == 200, good


async def follow(s: aiohttp.ClientSession, url: str) -> tuple[list[Any], list[int]]:
    """Every item of a paged list, following Link rel=next; and each page's X-Total-Count."""
    items: list[Any] = []
    totals: list[int] = []
    while url:
        async with s.get(url) as r:
            assert r.status == 200
            items += await r.json()
            totals.append(int(r.headers["X-Total-Count"]))
            link = r.headers.get("Link")
            url = str(r.url.join(aiohttp.client.URL(link.split(">")[0][1:]))) if link else ""
    return items, totals


async def test_lists_are_paged_with_a_total_and_a_next_link(served: tuple[str, DivergenceStore]) -> None:
    url, _ = served
    async with aiohttp.ClientSession() as s:
        samples, totals = await follow(s, url + "api/samples?endpoint=GET%20/p/%7Bid%7D&limit=3")
        assert len(totals) == 3 and set(totals) == {7}
        ids = [x["id"] for x in samples]
        assert len(ids) == 7 and ids == sorted(ids, reverse=True)
        eps, totals = await follow(s, url + "api/endpoints?limit=2&fields_limit=0")
        assert len(totals) == 3 and set(totals) == {6}
        assert len({e["endpoint"] for e in eps}) == 6 and all(e["fields"] == [] for e in eps)
        async with s.get(url + "api/endpoints?endpoint=GET%20/wide&fields_limit=5") as r:
            (wide,) = await r.json()
        # 30 body fields and a status change: five shown, the status change first, 31 in all.
        assert [f["path"] for f in wide["fields"]][0] == "status" and len(wide["fields"]) == 5
        assert wide["fields_total"] == 31
        async with s.get(url + "api/samples?endpoint=GET%20/wide") as r:
            (sample,) = await r.json()
        assert sample["diffs"][0]["path"] == "status" and len(sample["diffs"]) == 10 and sample["diffs_total"] == 31
        async with s.get(url + f"api/divergences/{sample['id']}") as r:
            assert len((await r.json())["diffs"]) == 31  # one divergence carries them all


# -- private by default ---------------------------------------------------------------------


def pipeline_config(tmp_path: Path, **web: Any) -> Config:
    cfg = loopback_config(tmp_path / "bus.db")
    return dataclasses.replace(
        cfg, comparer=dataclasses.replace(cfg.comparer, web=dataclasses.replace(cfg.comparer.web, **web))
    )


async def status_of(s: aiohttp.ClientSession, url: str, **headers: str) -> int:
    async with s.get(url, headers=headers) as r:
        await r.read()
        return r.status


async def test_host_header_checked_on_the_page_while_metrics_stay_open(tmp_path: Path) -> None:
    cfg = pipeline_config(tmp_path, allowed_hosts=("diffs.example.com",))
    async with Pipeline(cfg, ("compare",)) as pipeline, aiohttp.ClientSession() as s:
        port = pipeline.metrics_server.port
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/api/totals", "/api/endpoints", "/static/page.js", "/api/feed"):
            assert await status_of(s, base + path, Host="evil.example") == 403, path  # DNS rebinding
            assert await status_of(s, base + path, Host=f"evil.example:{port}") == 403, path
        for host in (f"127.0.0.1:{port}", "localhost", f"localhost:{port}", "diffs.example.com:443"):
            assert await status_of(s, base + "/api/totals", Host=host) == 200, host
        for path in ("/metrics", "/healthz", "/readyz"):  # scrapers and probes come by any name
            assert await status_of(s, base + path, Host="prometheus.internal:9464") == 200, path


async def test_a_credential_is_required_when_configured(tmp_path: Path) -> None:
    basic = tmp_path / "page-auth"
    basic.write_text("ops:correct horse\n")
    env = {"PAGE_TOKEN": "t0k3n-" + "z" * 26}
    cfg = pipeline_config(tmp_path, basic_auth_file=str(basic), bearer_token_env="PAGE_TOKEN")
    good_basic = "Basic " + base64.b64encode(b"ops:correct horse").decode()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAGE_TOKEN", env["PAGE_TOKEN"])
        pipeline = Pipeline(cfg, ("compare",))
    async with pipeline, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{pipeline.metrics_server.port}"
        for path in ("/", "/api/totals", "/api/feed", "/api/divergences/1"):
            async with s.get(base + path) as r:
                assert r.status == 401, path
                assert r.headers.getall("WWW-Authenticate") == [
                    'Basic realm="shadowreplay", charset="UTF-8"', 'Bearer realm="shadowreplay"'
                ]
        for bad in ("Bearer wrong", "Basic " + base64.b64encode(b"ops:wrong").decode(), "Bearer"):
            assert await status_of(s, base + "/api/totals", Authorization=bad) == 401, bad
        assert await status_of(s, base + "/api/totals", Authorization="Bearer " + env["PAGE_TOKEN"]) == 200
        assert await status_of(s, base + "/api/totals", Authorization=good_basic) == 200
        assert await status_of(s, base + "/", Authorization=good_basic) == 200
        for path in ("/metrics", "/healthz", "/readyz"):
            assert await status_of(s, base + path) == 200, path
        assert pipeline.page is not None and pipeline.page.refused["credential"] >= 7


async def test_a_credential_that_cannot_be_read_stops_the_start(tmp_path: Path) -> None:
    from shadowreplay.contract.errors import ConfigError

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SHADOWREPLAY_TEST_UNSET_TOKEN", raising=False)
        with pytest.raises(ConfigError, match="comparer.web.bearer_token_env: environment variable"):
            Pipeline(pipeline_config(tmp_path, bearer_token_env="SHADOWREPLAY_TEST_UNSET_TOKEN"), ("compare",))


# -- 20,000 diverging endpoints beside a collector -------------------------------------------


def forward_message(tag: str, chunk: str) -> bytes:
    record = {"request_method": "GET", "request_uri": "/healthy/1", "remote_addr": "10.0.0.1", "status": "200",
              "request_id": "good-1", "host": "shop.example.com"}
    return msgpack.packb([tag, int(time.time()), record, {"chunk": chunk}], use_bin_type=True)


async def forward_ack(port: int, chunk: str) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(forward_message("nginx.access", chunk))
        await writer.drain()
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = await reader.read(4096)
            assert data, "collector closed the connection before acking"
            unpacker.feed(data)
            for obj in unpacker:
                return obj
    finally:
        writer.close()


ATTACK = 20_000


async def test_20k_diverging_endpoints_keep_the_api_small_and_the_collector_acking(tmp_path: Path) -> None:
    # The worst case: every one of 20,000 distinct paths is its own endpoint in the store
    # (max_endpoints raised that far; by default the comparer keeps 200, see below).
    cfg = pipeline_config(tmp_path)
    cfg = dataclasses.replace(cfg, comparer=dataclasses.replace(cfg.comparer, max_endpoints=ATTACK))
    async with Pipeline(cfg, ("collect", "compare")) as pipeline, aiohttp.ClientSession() as s:
        assert pipeline.bus is not None and pipeline.comparer is not None and pipeline.collector is not None
        producer = pipeline.bus.producer()
        letters = "abcdefghijklmnopqrstuvwxyz"
        for i in range(ATTACK):  # slugs without digits: no template collapses them
            slug = "".join(letters[(i // 26**k) % 26] for k in range(4))
            producer.publish(cfg.bus.results_topic, encode_result(diverging(i, f"/attack/{slug}", fields=3)), key=b"k")
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 180
        while pipeline.comparer.compared < ATTACK:
            assert time.monotonic() < deadline, pipeline.comparer.compared
            await asyncio.sleep(0.2)
        base = f"http://127.0.0.1:{pipeline.metrics_server.port}"
        while (await (await s.get(base + "/api/totals")).json())["stored"] < ATTACK:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)

        async def get(path: str) -> tuple[int, int, int, float]:
            started = time.monotonic()
            async with s.get(base + path) as r:
                body = await r.read()
                return r.status, len(body), int(r.headers.get("X-Total-Count", -1)), time.monotonic() - started

        started = time.monotonic()
        page_calls = [asyncio.create_task(get("/api/endpoints")) for _ in range(6)]
        page_calls.append(asyncio.create_task(get("/api/endpoints?limit=500&fields_limit=500")))
        good = await asyncio.wait_for(
            asyncio.gather(forward_ack(pipeline.collector.port, "chunk-1"), get("/healthz"), get("/readyz")), 60
        )
        good_done = time.monotonic() - started
        answers = await asyncio.wait_for(asyncio.gather(*page_calls), 120)
        print(f"page calls (s): {[round(a[3], 3) for a in answers]}; ack + healthz + readyz after {good_done:.3f} s")
        assert good[0] == {"ack": "chunk-1"} and good[1][0] == 200 and good[2][0] == 200
        for status, size, total, _ in answers[:6]:
            assert (status, total) == (200, ATTACK) and size < 64 * 1024, (status, size, total)
        status, size, total, _ = answers[6]
        assert (status, total) == (200, ATTACK) and size < 1024 * 1024, (status, size, total)


async def test_many_raw_paths_reach_the_store_as_a_bounded_set_of_names(tmp_path: Path) -> None:
    cfg = pipeline_config(tmp_path)
    cfg = dataclasses.replace(cfg, comparer=dataclasses.replace(cfg.comparer, max_endpoints=50))
    n = 2_000
    async with Pipeline(cfg, ("compare",)) as pipeline, aiohttp.ClientSession() as s:
        assert pipeline.bus is not None and pipeline.comparer is not None
        producer = pipeline.bus.producer()
        for i in range(n):  # ids in paths collapse; slugs count up to the bound, then "other"
            target = f"/users/{i}/orders/ord_{i:x}z" if i % 2 else f"/attack/{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}x"
            producer.publish(cfg.bus.results_topic, encode_result(diverging(i, target)), key=b"k")
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 120
        base = f"http://127.0.0.1:{pipeline.metrics_server.port}"
        while (await (await s.get(base + "/api/totals")).json())["stored"] < n:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        eps, _ = await follow(s, base + "/api/endpoints?limit=500&fields_limit=0")
        names = {e["endpoint"] for e in eps}
        assert len(names) == 51 and "other" in names and "GET /users/{id}/orders/{id}" in names
        assert sum(e["compared"] for e in eps) == n
        assert not any(ch.isdigit() for name in names for ch in name)
        async with s.get(base + "/metrics") as r:
            labels = {line.split('endpoint="', 1)[1].split('"', 1)[0]
                      for line in (await r.text()).splitlines() if line.startswith("shadow_compare_compared_total{")}
        assert labels == names

