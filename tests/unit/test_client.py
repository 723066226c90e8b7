"""TargetClient against a real aiohttp server on a loopback port picked at run time."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
import pytest
from aiohttp import web

from shadowreplay.replayer.client import TargetClient, origin_form, outgoing_headers, outgoing_request
from shadowreplay.contract.record import RequestRecord
from tls_certs import SERVER_EXT, issue, require_openssl

BIG = bytes(range(256)) * 40  # 10240 bytes


@dataclass
class Seen:
    raw_path: str
    method: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Backend:
    url: str
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # set at teardown: /slow answers then


async def _handler(request: web.Request, backend: Backend) -> web.StreamResponse:
    backend.seen.append(
        Seen(
            raw_path=request.raw_path,
            method=request.method,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=await request.read(),
        )
    )
    path = request.path
    if path == "/big":
        return web.Response(body=BIG, content_type="application/octet-stream")
    if path == "/slow":  # answers only when the test is over (the client has timed out by then)
        await backend.release.wait()
        return web.Response(text="late")
    if path == "/slowbody":
        resp = web.StreamResponse()
        await resp.prepare(request)
        await asyncio.sleep(0.15)
        await resp.write(b"x" * 10)
        await resp.write_eof()
        return resp
    if path in ("/gzip", "/deflate", "/br"):
        coded = {"/gzip": gzip.compress, "/deflate": zlib.compress, "/br": brotli.compress}[path](BIG)
        return web.Response(body=coded, headers={"Content-Encoding": path[1:], "Content-Type": "x/y"})
    if path == "/chunked":
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(BIG), 3000):
            await resp.write(BIG[i : i + 3000])
        await resp.write_eof()
        return resp
    if path == "/cookie":
        resp = web.Response(text="c", status=201)
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Path=/")
        return resp
    return web.Response(text="ok")


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    state = Backend(url="")
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handler(request, state)

    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}"
    yield state
    state.release.set()
    await runner.cleanup()


def _client(url: str, **kw: object) -> TargetClient:
    opts: dict = {"timeout_seconds": 5.0, "max_body_bytes": 1 << 20, "concurrency": 8}
    opts.update(kw)
    return TargetClient("candidate", url, **opts)


def _rec(target: str = "/", *, id: str = "req-1", method: str = "GET", **kw: Any) -> RequestRecord:
    return RequestRecord(id=id, ts=1, method=method, target=target, **kw)


HOSTILE_HEADERS = (
    ("Host", "prod.example.com"),
    ("Connection", "keep-alive, X-Hop-Listed"),
    ("X-Hop-Listed", "should go"),
    ("Keep-Alive", "timeout=5"),
    ("Transfer-Encoding", "chunked"),
    ("TE", "trailers"),
    ("Trailer", "X-T"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic eA=="),
    ("Proxy-Connection", "keep-alive"),
    ("X-Forwarded-For", "6.6.6.6, 7.7.7.7"),
    ("X-Shadow-Replay", "forged"),
    ("Content-Length", "999"),
    ("X-Multi", "1"),
    ("Accept", "application/json"),
    ("x-multi", "2"),
)


def test_outgoing_headers_rewrites() -> None:
    rec = _rec(id="abc", host="prod.example.com", headers=HOSTILE_HEADERS, client="10.1.2.3")
    out = outgoing_headers(rec)
    assert out == [
        ("X-Multi", "1"),
        ("Accept", "application/json"),
        ("X-Multi", "2"),  # one spelling per name (aiohttp folds differing spellings)
        ("X-Forwarded-For", "10.1.2.3"),
        ("X-Shadow-Replay", "abc"),
    ]
    assert outgoing_request(rec, keep_host=True).host == "prod.example.com"
    assert outgoing_request(rec, keep_host=False).host == ""  # the target's own


def test_outgoing_headers_without_client_drops_forwarded_for() -> None:
    rec = _rec(id="x", headers=(("X-Forwarded-For", "1.1.1.1"), ("Forwarded", "for=1.1.1.1"),
                                ("X-Real-Ip", "1.1.1.1"), ("Host", "h.example")))
    assert outgoing_headers(rec) == [("X-Shadow-Replay", "x")]
    assert outgoing_request(rec, keep_host=True).host == "h.example"  # Host falls back to the header


@pytest.mark.parametrize(
    ("client", "forwarded"), [("10.1.2.3", "for=10.1.2.3"), ("2001:db8::1", 'for="[2001:db8::1]"')]
)
def test_client_address_headers_carry_the_trusted_address(client: str, forwarded: str) -> None:
    rec = _rec(id="x", client=client, headers=(("Forwarded", "for=6.6.6.6;host=evil"), ("x-real-ip", "6.6.6.6"),
                                               ("X-Forwarded-For", "6.6.6.6")))
    assert outgoing_headers(rec) == [("X-Forwarded-For", client), ("Forwarded", forwarded), ("X-Real-Ip", client),
                                     ("X-Shadow-Replay", "x")]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a?b=1", "/a?b=1"),
        ("/a%2Fb?x=%20", "/a%2Fb?x=%20"),
        ("http://prod.example/p?q=1", "/p?q=1"),
        ("HTTPS://user@prod.example:8443", "/"),
        ("http://prod.example?q=1", "/?q=1"),
        ("*", "/*"),
        ("@127.0.0.1:9/x", "/@127.0.0.1:9/x"),
        ("//evil.example/x", "//evil.example/x"),
        ("evil.example:443", "/evil.example:443"),
    ],
)
def test_origin_form_never_names_a_host(target: str, expected: str) -> None:
    assert origin_form(target) == expected


async def test_headers_on_the_wire(backend: Backend) -> None:
    rec = _rec(id="rid-7", host="prod.example.com", headers=HOSTILE_HEADERS, client="10.1.2.3")
    async with _client(backend.url) as client:
        resp = await client.send(rec)
    assert resp.status == 200 and resp.error is None
    (seen,) = backend.seen
    names = [k.lower() for k, _ in seen.headers]
    for hop in ("connection", "x-hop-listed", "keep-alive", "transfer-encoding", "te", "trailer",
                "upgrade", "proxy-authorization", "proxy-connection", "user-agent"):
        assert hop not in names, hop
    got = {}
    for k, v in seen.headers:
        got.setdefault(k.lower(), []).append(v)
    assert got["host"] == [backend.url.removeprefix("http://")]
    assert got["x-forwarded-for"] == ["10.1.2.3"]
    assert got["x-shadow-replay"] == ["rid-7"]
    assert got["x-multi"] == ["1", "2"]
    assert got["accept"] == ["application/json"]
    assert "content-length" not in got or got["content-length"] == ["0"]


async def test_keep_host(backend: Backend) -> None:
    rec = _rec(host="prod.example.com", headers=(("Host", "other.example"),))
    async with _client(backend.url, keep_host=True) as client:
        await client.send(rec)
    hosts = [v for k, v in backend.seen[0].headers if k.lower() == "host"]
    assert hosts == ["prod.example.com"]


@pytest.mark.parametrize(
    "target",
    [
        "/search?q=a%20b&tag=x&tag=y&tag=x&b=2&a=1&empty=&flag",
        "/p/%7Euser/a%2Fb;param?z=%2F&z=%2f&plus=a+b",
        "/unicode/%E2%9C%93?k=%E2%9C%93&k=v",
    ],
)
async def test_raw_target_is_sent_exactly(backend: Backend, target: str) -> None:
    async with _client(backend.url) as client:
        resp = await client.send(_rec(target))
    assert resp.status == 200
    assert backend.seen[0].raw_path == target


async def test_base_url_path_prefix(backend: Backend) -> None:
    async with _client(backend.url + "/v2/") as client:
        await client.send(_rec("/items?b=1&a=2"))
    assert backend.seen[0].raw_path == "/v2/items?b=1&a=2"


async def test_body_sent_exactly_with_recomputed_length(backend: Backend) -> None:
    body = bytes(range(256)) * 3
    headers = (("Content-Length", "5"), ("Content-Type", "x/y"))
    rec = _rec("/upload", method="POST", body=body, headers=headers)
    async with _client(backend.url) as client:
        resp = await client.send(rec)
    assert resp.status == 200
    seen = backend.seen[0]
    assert seen.method == "POST" and seen.body == body
    assert [v for k, v in seen.headers if k.lower() == "content-length"] == [str(len(body))]
    assert [v for k, v in seen.headers if k.lower() == "content-type"] == ["x/y"]


@pytest.mark.parametrize(
    ("cap", "expected_len", "truncated"),
    [
        (1000, 1000, True),
        (len(BIG) - 1, len(BIG) - 1, True),
        (len(BIG), len(BIG), False),
        (1 << 20, len(BIG), False),
        (0, 0, True),
    ],
)
async def test_body_is_capped(
    backend: Backend, cap: int, expected_len: int, truncated: bool
) -> None:
    async with _client(backend.url, max_body_bytes=cap) as client:
        resp = await client.send(_rec("/big"))
        again = await client.send(_rec("/"))  # the client stays usable after a truncated read
    assert resp.status == 200
    assert resp.body == BIG[:expected_len]
    assert resp.truncated is truncated
    assert again.status == 200 and again.body == b"ok"[:cap]


async def test_ttfb_before_latency(backend: Backend) -> None:
    async with _client(backend.url) as client:
        resp = await client.send(_rec("/slowbody"))
    assert resp.status == 200 and resp.body == b"x" * 10
    assert resp.ttfb is not None and resp.latency is not None
    assert 0 < resp.ttfb <= resp.latency
    assert resp.latency - resp.ttfb >= 0.1


async def test_response_headers_repeat_and_cookies_do_not_stick(backend: Backend) -> None:
    async with _client(backend.url) as client:
        resp = await client.send(_rec("/cookie"))
        await client.send(_rec("/after"))
    assert resp.status == 201
    cookies = [v for k, v in resp.headers if k.lower() == "set-cookie"]
    assert cookies == ["a=1; Path=/", "b=2; Path=/"]
    assert not [v for k, v in backend.seen[1].headers if k.lower() == "cookie"]


async def test_timeout_is_an_error_response(backend: Backend) -> None:
    async with _client(backend.url, timeout_seconds=0.2) as client:
        resp = await client.send(_rec("/slow"))
    assert resp.status is None
    assert resp.error == "timeout"
    # In seconds, up to the timeout: never less (the /slow answer comes only at teardown).
    assert resp.latency is not None and 0.15 < resp.latency < 60


async def test_connect_refused_is_an_error_response() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with _client(f"http://127.0.0.1:{port}") as client:
        resp = await client.send(_rec("/"))
    assert resp.status is None and resp.error == "connect"


async def _raw_server(reply: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("reply", "kind"), [(b"", "reset"), (b"NOT HTTP AT ALL\r\n\r\n", "protocol")]
)
async def test_broken_peer_is_an_error_response(reply: bytes, kind: str) -> None:
    server, url = await _raw_server(reply)
    try:
        async with _client(url) as client:
            resp = await client.send(_rec("/"))
    finally:
        server.close()
        await server.wait_closed()
    assert resp.status is None
    assert resp.error == kind


@pytest.mark.parametrize("path", ["/gzip", "/deflate", "/br", "/chunked"])
async def test_encoded_and_chunked_bodies_are_decoded_and_capped(backend: Backend, path: str) -> None:
    async with _client(backend.url) as client:
        whole = await client.send(_rec(path))
    async with _client(backend.url, max_body_bytes=1000) as client:
        capped = await client.send(_rec(path))
        again = await client.send(_rec("/"))
    assert (whole.status, whole.body, whole.truncated) == (200, BIG, False)
    assert (capped.status, capped.body, capped.truncated) == (200, BIG[:1000], True)
    assert again.body == b"ok"
    if path != "/chunked":
        assert whole.header("Content-Encoding") == path[1:]  # headers are kept as received


async def test_head_and_empty_post(backend: Backend) -> None:
    async with _client(backend.url) as client:
        head = await client.send(_rec("/big", method="HEAD"))
        post = await client.send(_rec("/p", method="POST", body=b""))
        after = await client.send(_rec("/"))
    assert (head.status, head.body) == (200, b"")
    assert head.header("Content-Length") == str(len(BIG))
    assert post.status == 200 and backend.seen[1].method == "POST" and backend.seen[1].body == b""
    assert after.body == b"ok"


async def test_header_that_would_inject_is_a_request_error(backend: Backend) -> None:
    rec = _rec(headers=(("X-A", "1\r\nX-Injected: yes"),))
    async with _client(backend.url) as client:
        resp = await client.send(rec)
        after = await client.send(_rec("/"))
    assert resp.status is None and resp.error == "request"
    assert after.status == 200
    assert all(k.lower() != "x-injected" for s in backend.seen for k, _ in s.headers)


@pytest.fixture(scope="module")
def untrusted_server_cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certificate for 127.0.0.1 from a test CA that no trust store knows."""
    require_openssl()
    d = tmp_path_factory.mktemp("tls")
    issue(d, "ca", "shadowreplay test CA", None, "")
    issue(d, "server", "127.0.0.1", "ca", SERVER_EXT)
    return d


@pytest.mark.parametrize("verify", [True, False])
async def test_tls_target(untrusted_server_cert: Path, verify: bool) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(untrusted_server_cert / "server.pem"), str(untrusted_server_cert / "server.key"))
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="over tls")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with _client(f"https://127.0.0.1:{port}", tls_verify=verify) as client:
            resp = await client.send(_rec("/"))
            again = await client.send(_rec("/"))
    finally:
        await runner.cleanup()
    if verify:  # its CA is not trusted
        assert (resp.status, resp.error, again.error) == (None, "tls", "tls")
    else:
        assert (resp.status, resp.body, again.body) == (200, b"over tls", b"over tls")
