"""Streams replayed as streams, against a real aiohttp backend on a loopback port picked at
run time: chunked lines every 100 ms for 2 s, a server-sent-events endpoint that never ends
(its window closes it: "stream window reached", not an error, not a timeout), a gzip
stream sent because the record logged ``Accept-Encoding: gzip`` (decoded, its timeline
counting the compressed bytes off the wire), and an endpoint marked as streaming in config."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from http_backends import serve
from shadowreplay.replayer.client import TargetClient
from shadowreplay.contract.config import StreamEndpoint, StreamsConfig
from shadowreplay.contract.record import RequestRecord, Response

LINES = [b"line %02d of the deploy log\n" % i for i in range(20)]


@dataclass
class Streamer:
    url: str = ""
    accept_encoding: list[str | None] = field(default_factory=list)
    gzip_wire_bytes: int = 0
    sse_closed: asyncio.Event = field(default_factory=asyncio.Event)


async def _handle(request: web.Request, state: Streamer) -> web.StreamResponse:
    path = request.path
    resp = web.StreamResponse()
    if path in ("/lines", "/export"):  # chunked lines, every 100 ms for 2 s
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for line in LINES:
            await resp.write(line)
            await asyncio.sleep(0.1)
        await resp.write_eof()
        return resp
    if path == "/sse":  # never ends on its own (bounded: ten minutes), one event every 100 ms
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        try:
            for i in range(6000):
                await resp.write(b'id: %d\nevent: tick\ndata: {"n": %d}\n\n' % (i, i))
                await asyncio.sleep(0.1)
        except (ConnectionResetError, ConnectionError):
            state.sse_closed.set()
            raise
        return resp
    if path == "/gzip-lines":
        state.accept_encoding.append(request.headers.get("Accept-Encoding"))
        resp.enable_chunked_encoding()
        resp.headers["Content-Encoding"] = "gzip"
        resp.content_type = "text/plain"
        await resp.prepare(request)
        z = zlib.compressobj(wbits=31)
        for line in LINES[:10]:
            piece = z.compress(line) + z.flush(zlib.Z_SYNC_FLUSH)
            state.gzip_wire_bytes += len(piece)
            await resp.write(piece)
            await asyncio.sleep(0.05)
        piece = z.flush()
        state.gzip_wire_bytes += len(piece)
        await resp.write(piece)
        await resp.write_eof()
        return resp
    if path == "/quick":  # chunked, but over at once: not a stream
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for line in LINES[:3]:
            await resp.write(line)
        await resp.write_eof()
        return resp
    return web.Response(text="ok")


@pytest.fixture
async def streamer() -> AsyncIterator[Streamer]:
    state = Streamer()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(request, state)

    state.url, runner = await serve(handle)
    yield state
    await runner.cleanup()


def _client(url: str, *, timeout: float = 30.0, **streams: object) -> TargetClient:
    return TargetClient("candidate", url, timeout_seconds=timeout, max_body_bytes=1 << 20, concurrency=4,
                        streams=StreamsConfig(**streams))  # type: ignore[arg-type]


def _rec(target: str, **kw: object) -> RequestRecord:
    return RequestRecord(id="s1", ts=1, method="GET", target=target, **kw)  # type: ignore[arg-type]


def _assert_timeline_shape(resp: Response) -> None:
    times = [t for t, _ in resp.timeline]
    totals = [n for _, n in resp.timeline]
    assert times == sorted(times) and totals == sorted(totals)
    assert resp.ttfb is not None and resp.latency is not None
    # Timeline times are rounded to the microsecond; ttfb and latency are not.
    assert resp.ttfb - 1e-6 <= times[0] <= times[-1] <= resp.latency + 1e-6


async def test_chunked_lines_are_read_as_a_stream_to_their_end(streamer: Streamer) -> None:
    async with _client(streamer.url, chunked_after_seconds=0.5, window_seconds=30.0) as client:
        resp = await client.send(_rec("/lines"))
    assert (resp.status, resp.error, resp.body) == (200, None, b"".join(LINES))
    assert resp.stream and not resp.stream_window_reached and not resp.truncated
    _assert_timeline_shape(resp)
    assert resp.timeline[-1][1] == len(b"".join(LINES))
    # The backend sleeps 100 ms between lines: they arrive progressively, not in one burst.
    assert len(resp.timeline) >= 10
    assert resp.timeline[-1][0] - resp.timeline[0][0] >= 1.5


async def test_an_endless_event_stream_is_closed_by_its_window(streamer: Streamer) -> None:
    async with _client(streamer.url, window_seconds=1.0) as client:
        resp = await client.send(_rec("/sse"))
        after = await client.send(_rec("/"))
        await asyncio.wait_for(streamer.sse_closed.wait(), 30)  # the client hung up: the stream is not left open
    assert (resp.status, resp.error) == (200, None)
    assert resp.stream and resp.stream_window_reached and not resp.truncated
    assert resp.body.startswith(b'id: 0\nevent: tick\ndata: {"n": 0}\n\n')
    assert resp.latency is not None and resp.latency >= 1.0
    _assert_timeline_shape(resp)
    assert resp.timeline[-1][1] == len(resp.body)
    assert (after.status, after.body) == (200, b"ok")


async def test_a_window_longer_than_the_timeout_is_not_a_timeout(streamer: Streamer) -> None:
    async with _client(streamer.url, timeout=0.3, window_seconds=1.0) as client:
        resp = await client.send(_rec("/sse"))
    assert (resp.status, resp.error, resp.stream_window_reached) == (200, None, True)
    assert resp.latency is not None and resp.latency >= 1.0


async def test_a_stream_is_cut_at_its_byte_window(streamer: Streamer) -> None:
    async with _client(streamer.url, window_seconds=60.0, window_bytes=100) as client:
        resp = await client.send(_rec("/sse"))
    assert (resp.status, resp.error, resp.stream_window_reached, resp.truncated) == (200, None, True, False)
    assert len(resp.body) == 100 and resp.body.startswith(b"id: 0\n")


async def test_the_logged_accept_encoding_is_sent_and_the_stream_decoded(streamer: Streamer) -> None:
    logged = "gzip;q=1.0, br;q=0"
    async with _client(streamer.url, chunked_after_seconds=0.2) as client:
        resp = await client.send(_rec("/gzip-lines", headers=(("Accept-Encoding", logged),)))
        bare = await client.send(_rec("/"))
    assert streamer.accept_encoding == [logged]
    assert (resp.status, resp.error, resp.body) == (200, None, b"".join(LINES[:10]))
    assert resp.header("Content-Encoding") == "gzip"
    assert resp.stream and not resp.stream_window_reached
    _assert_timeline_shape(resp)
    # The timeline counts what came off the wire: the compressed bytes, not the decoded ones.
    assert resp.timeline[-1][1] == streamer.gzip_wire_bytes != len(resp.body)
    assert bare.body == b"ok"


async def test_an_endpoint_marked_as_streaming_in_config(streamer: Streamer) -> None:
    marked = StreamEndpoint(path="^/export$", window_seconds=0.3)
    async with _client(streamer.url, chunked_after_seconds=0.0, window_seconds=60.0, endpoints=(marked,)) as client:
        export = await client.send(_rec("/export?format=csv"))
        lines = await client.send(_rec("/lines"))  # not marked, and chunked bodies are not watched: read whole
    assert (export.status, export.error, export.stream, export.stream_window_reached) == (200, None, True, True)
    assert 0 < len(export.body) < len(b"".join(LINES))
    assert (lines.stream, lines.stream_window_reached, lines.body) == (False, False, b"".join(LINES))


async def test_a_chunked_response_that_ends_at_once_is_not_a_stream(streamer: Streamer) -> None:
    async with _client(streamer.url, chunked_after_seconds=5.0) as client:
        resp = await client.send(_rec("/quick"))
    assert (resp.body, resp.stream, resp.stream_window_reached) == (b"".join(LINES[:3]), False, False)
    assert resp.timeline and resp.timeline[-1][1] == len(resp.body)
