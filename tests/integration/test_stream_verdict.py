"""The cadence verdict with real parts: an aiohttp backend that streams (chunked lines
every 100 ms for 2 s; a server-sent-events endpoint that never ends, each event carrying
a timestamp), a baseline behind Debian's nginx that passes streams through
(``proxy_buffering off``), and a candidate behind nginx configured the way releases break
streams (``gzip on`` for the streamed types). Driven through the real pipeline:
fluent-logger → collector → bus → replayer → nginx → backend → comparer.

First, which nginx configuration holds a stream, measured through the replayer's own
client (docs/streaming.md records the answer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from http_backends import serve
from nginx_proxy import NginxProxy
from shadowreplay.replayer.client import TargetClient
from shadowreplay.app import Pipeline
from shadowreplay.contract.config import ComparerStreamsConfig, StreamsConfig
from shadowreplay.demo.run import feed
from shadowreplay.contract.record import RequestRecord, Response
from tests.conftest import loopback_config

pytestmark = pytest.mark.integration

LINES = [b"line %02d of the deploy log\n" % i for i in range(20)]
LINE_INTERVAL = 0.1
EVENT_INTERVAL = 0.2
#: The backend wrote its last line no earlier than this after the request came.
LAST_LINE_AT = (len(LINES) - 1) * LINE_INTERVAL
PASS = "proxy_buffering off;"
GZIP = "gzip on; gzip_types text/plain text/event-stream;"


@dataclass
class Streamer:
    url: str = ""
    open_streams: int = 0
    seen: list[str] = field(default_factory=list)


async def _handle(request: web.Request, state: Streamer) -> web.StreamResponse:
    state.seen.append(request.path_qs)
    resp = web.StreamResponse()
    if request.path.endswith("/lines"):  # chunked lines, every 100 ms for 2 s
        resp.content_type = "text/plain"
        if request.query.get("accel") == "no":
            resp.headers["X-Accel-Buffering"] = "no"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for line in _sized(LINES, int(request.query.get("size", "0"))):
            await resp.write(line)
            await asyncio.sleep(LINE_INTERVAL)
        await resp.write_eof()
        return resp
    if request.path == "/events":  # never ends on its own (bounded: ten minutes)
        resp.content_type = "text/event-stream"
        if request.query.get("accel") != "default":
            resp.headers["X-Accel-Buffering"] = "no"  # what SSE servers behind nginx are told to send
        await resp.prepare(request)
        state.open_streams += 1
        try:
            for i in range(3000):
                await resp.write(b'id: %d\nevent: tick\ndata: {"n": %d, "ts": %.6f}\n\n' % (i, i, time.time()))
                await asyncio.sleep(EVENT_INTERVAL)
        except ConnectionError:  # the window closed the stream: what it is for
            pass
        finally:
            state.open_streams -= 1
        return resp
    return web.Response(text="ok")


def _sized(lines: list[bytes], size: int) -> list[bytes]:
    """Each line padded with dots to ``size`` bytes (0: as it is)."""
    return [line[:-1].ljust(size - 1, b".") + b"\n" if size else line for line in lines]


@pytest.fixture
async def streamer() -> AsyncIterator[Streamer]:
    state = Streamer()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(request, state)

    state.url, runner = await serve(handle)
    yield state
    await runner.cleanup()


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[list[NginxProxy]]:
    """Every nginx a test starts, stopped at its end."""
    started: list[NginxProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


async def _nginx(proxies: list[NginxProxy], upstream: str, workdir: Path, locations: dict[str, str]) -> NginxProxy:
    proxy = await asyncio.to_thread(NginxProxy, upstream, workdir, locations)
    proxies.append(proxy)
    return proxy


def _held(resp: Response) -> bool:
    """Nothing of the body (not even the head) came before the backend's last line."""
    return (
        resp.status == 200
        and resp.ttfb is not None
        and resp.ttfb >= LAST_LINE_AT
        and bool(resp.timeline)
        and resp.timeline[0][0] >= LAST_LINE_AT
    )


def _passed(resp: Response) -> bool:
    """The head and the first line came at once, the rest over the following two seconds."""
    return (
        resp.status == 200
        and resp.ttfb is not None
        and resp.ttfb < 1.0
        and len(resp.timeline) >= 5
        and resp.timeline[0][0] < 1.0
        and resp.timeline[-1][0] >= LAST_LINE_AT
    )


# -- which configuration holds a stream --------------------------------------------------


@pytest.mark.parametrize(
    ("directives", "path", "accept_encoding", "held"),
    [
        pytest.param(PASS, "/lines", "gzip", False, id="proxy_buffering off"),
        pytest.param("", "/lines", "gzip", False, id="proxy_buffering on (the default), small chunks"),
        pytest.param("", "/lines?size=1024", "gzip", False, id="proxy_buffering on (the default), 1 KiB chunks"),
        pytest.param("proxy_buffers 2 64k; proxy_busy_buffers_size 64k;", "/lines", "gzip", False,
                     id="proxy_buffering on, large buffers"),
        pytest.param(GZIP, "/lines", "gzip", True, id="gzip on for the type, client accepts gzip"),
        pytest.param(GZIP, "/lines", None, False, id="gzip on for the type, client sends no Accept-Encoding"),
        pytest.param(GZIP + " " + PASS, "/lines", "gzip", False, id="gzip on with proxy_buffering off"),
        pytest.param(GZIP, "/lines?accel=no", "gzip", False, id="gzip on, upstream sends X-Accel-Buffering: no"),
    ],
)
async def test_which_nginx_configuration_holds_a_stream(
    streamer: Streamer,
    proxies: list[NginxProxy],
    tmp_path: Path,
    directives: str,
    path: str,
    accept_encoding: str | None,
    held: bool,
) -> None:
    proxy = await _nginx(proxies, streamer.url, tmp_path / "nginx", {"/": directives})
    headers = (("Accept-Encoding", accept_encoding),) if accept_encoding else ()
    streams = StreamsConfig(window_seconds=10.0, chunked_after_seconds=0.5)
    async with TargetClient("candidate", proxy.url, timeout_seconds=10.0, max_body_bytes=1 << 20, concurrency=2,
                            streams=streams) as client:
        resp = await client.send(RequestRecord(id="m1", ts=1, method="GET", target=path, headers=headers))
    size = int(path.partition("size=")[2] or 0)
    assert (resp.status, resp.error, resp.body) == (200, None, b"".join(_sized(LINES, size)))  # decoded when gzip
    gzipped = resp.header("Content-Encoding") == "gzip"
    assert gzipped == (accept_encoding == "gzip" and directives.startswith("gzip on"))
    if held:
        assert _held(resp), resp.timeline
        assert not resp.stream  # it came at once: the replayer did not even see a stream
    else:
        assert _passed(resp), resp.timeline
        assert resp.stream


async def test_gzip_on_for_event_streams_holds_even_the_head(
    streamer: Streamer, proxies: list[NginxProxy], tmp_path: Path
) -> None:
    """An endless event stream under gzip (no X-Accel-Buffering: no from upstream): no head
    at all, so the request times out; the same stream without Accept-Encoding passes."""
    proxy = await _nginx(proxies, streamer.url, tmp_path / "nginx", {"/": GZIP})
    streams = StreamsConfig(window_seconds=2.0)
    async with TargetClient("candidate", proxy.url, timeout_seconds=3.0, max_body_bytes=1 << 20, concurrency=2,
                            streams=streams) as client:
        gz = ((("Accept-Encoding", "gzip"),))
        held, passed = await asyncio.gather(
            client.send(RequestRecord(id="e1", ts=1, method="GET", target="/events?accel=default", headers=gz)),
            client.send(RequestRecord(id="e2", ts=1, method="GET", target="/events?accel=default")),
        )
    assert (held.status, held.error, held.timeline) == (None, "timeout", ())
    assert (passed.status, passed.error, passed.stream_window_reached) == (200, None, True)
    assert passed.body.startswith(b"id: 0\nevent: tick\n")


# -- the verdict through the pipeline --------------------------------------------------


def _log_line(i: int, uri: str, accept_encoding: str | None) -> dict[str, str]:
    line = {
        "msec": f"{1795600800 + i * 0.01:.3f}",
        "request_id": f"stream-{i:04d}",
        "remote_addr": "10.0.0.7",
        "request_method": "GET",
        "request_uri": uri,
        "server_protocol": "HTTP/1.1",
        "host": "deploys.example.com",
        "status": "200",
        "body_bytes_sent": "540",
        "request_time": "2.000",
    }
    if accept_encoding is not None:
        line["http_accept_encoding"] = accept_encoding
    return line


async def _run(tmp_path: Path, candidate: str, baseline: str, lines: list[dict[str, str]]) -> tuple[Pipeline, str]:
    """Run the pipeline until every line is compared; (the pipeline, its /metrics text).
    The caller's ``async with`` is this function's: the pipeline is stopped on return."""
    cfg = loopback_config(
        tmp_path / "bus.db",
        candidate=candidate,
        baseline=baseline,
        speed=1.0,
        timeout_seconds=10.0,
        streams=StreamsConfig(window_seconds=2.5, chunked_after_seconds=0.5),
    )
    cfg = dataclasses.replace(
        cfg,
        comparer=dataclasses.replace(
            cfg.comparer,
            store=dataclasses.replace(cfg.comparer.store, path=str(tmp_path / "diffs.db")),
            # Each event carries the time it was written: noise, named as any body field is.
            noise_paths=("$.events[*].data.ts",),
            # Two windows of the same endless stream hold a few more or fewer events: on a
            # loaded two-core machine the two sides' requests may start a second apart.
            streams=ComparerStreamsConfig(event_count_tolerance_absolute=5),
        ),
    )
    async with Pipeline(cfg) as pipeline:
        assert pipeline.collector is not None and pipeline.comparer is not None
        await asyncio.to_thread(feed, lines, "127.0.0.1", pipeline.collector.port)
        deadline = time.monotonic() + 90
        while pipeline.comparer.compared + pipeline.comparer.skipped < len(lines) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (pipeline.comparer.compared, pipeline.comparer.skipped) == (len(lines), 0)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{pipeline.metrics_server.port}/metrics") as resp:
                text = await resp.text()
    return pipeline, text


def _scrape(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


#: What is logged (uri, Accept-Encoding as logged) and how many times. Enough held
#: requests that a per-endpoint noise model with 99 % confidence calls buffering real.
SCENARIO = [
    ("/lines", "gzip, deflate, br", 8),  # gzip on the candidate: held to the end
    ("/lines", None, 4),  # no Accept-Encoding: gzip does nothing, the stream passes
    ("/plain/lines", "gzip, deflate, br", 2),  # the candidate's plain proxy_buffering on: passes
    ("/events", "gzip, deflate, br", 2),  # endless SSE, gzipped per event (X-Accel-Buffering: no)
    ("/events", None, 1),
]


def _lines() -> list[dict[str, str]]:
    out = []
    for uri, ae, n in SCENARIO:
        for _ in range(n):
            out.append(_log_line(len(out), uri, ae))
    return out


async def test_the_held_stream_is_reported_and_the_passed_ones_are_not(
    streamer: Streamer, proxies: list[NginxProxy], tmp_path: Path
) -> None:
    baseline = await _nginx(proxies, streamer.url, tmp_path / "baseline", {"/": PASS})
    candidate = await _nginx(proxies, streamer.url, tmp_path / "candidate", {"/": GZIP, "/plain/": ""})
    lines = _lines()
    pipeline, text = await _run(tmp_path, candidate.url, baseline.url, lines)
    assert pipeline.comparer is not None

    by_endpoint = {s.endpoint: s for s in pipeline.comparer.summary()}
    held = by_endpoint["GET /lines"]
    assert (held.compared, held.diverged, held.kinds) == (12, 8, {"buffering": 8})  # only the gzip ones
    assert held.fields == {"cadence:buffering": 8}
    plain = by_endpoint["GET /plain/lines"]
    assert (plain.compared, plain.diverged) == (2, 0)
    # The endless stream was compared within its window on both sides, event by event: the
    # timestamp in every event differed (noise by rule), and nothing else did.
    events = by_endpoint["GET /events"]
    assert (events.compared, events.diverged, events.noisy) == (3, 0, 3)
    assert pipeline.comparer.diverged == 8

    # The counters count a result when its difference counts as a divergence as it arrives
    # (every one here; under a noise model that still learns, those judged real by then).
    buffering = _scrape(text, "shadow_compare_stream_divergences_total", kind="buffering")
    assert 1 <= buffering <= 8
    assert _scrape(text, "shadow_compare_diverged_total", endpoint="GET /lines", kind="buffering") == buffering
    assert _scrape(text, "shadow_compare_stream_divergences_total", kind="first_byte_delay") == 0
    for target in ("baseline", "candidate"):
        assert _scrape(text, "shadow_compare_first_body_byte_seconds_count", target=target) == len(lines)
    # Held bodies came after the backend's last line: above the 1 s bucket on the candidate only.
    assert _scrape(text, "shadow_compare_first_body_byte_seconds_bucket", target="candidate", le="1.0") == len(lines) - 8
    assert _scrape(text, "shadow_compare_first_body_byte_seconds_bucket", target="baseline", le="1.0") == len(lines)
    assert streamer.open_streams == 0  # every window closed its connection (through nginx too)


async def test_both_sides_streaming_identically_never_diverge(
    streamer: Streamer, proxies: list[NginxProxy], tmp_path: Path
) -> None:
    baseline = await _nginx(proxies, streamer.url, tmp_path / "baseline", {"/": PASS})
    candidate = await _nginx(proxies, streamer.url, tmp_path / "candidate", {"/": PASS})
    lines = _lines()
    pipeline, text = await _run(tmp_path, candidate.url, baseline.url, lines)
    assert pipeline.comparer is not None
    assert pipeline.comparer.diverged == 0
    assert {s.endpoint: (s.compared, s.diverged) for s in pipeline.comparer.summary()} == {
        "GET /lines": (12, 0),
        "GET /plain/lines": (2, 0),
        "GET /events": (3, 0),
    }
    assert _scrape(text, "shadow_compare_stream_divergences_total") == 0
