"""The replayer's HTTP client against hostile records and hostile targets, on raw-socket
backends (loopback ports picked at run time): no smuggling, no other host, client
addresses from the trusted field only, and a target that never finishes its interim
responses or trailers fails the request at once instead of holding it to its timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from shadowreplay.replayer.client import TargetClient
from shadowreplay.replayer.rules import Rules
from shadowreplay.contract.record import RequestRecord

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Raw:
    """A raw TCP backend: notes every connection and request head, answers with ``answer``."""

    answer: Answer | None = None
    url: str = ""
    authority: str = ""
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.answer is not None:
                await self.answer(reader, writer)
                return
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                writer.write(OK)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Awaitable[Raw]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer | None = None) -> Raw:
        backend = Raw(answer)
        backend.server = await asyncio.start_server(backend._handle, "127.0.0.1", 0)
        servers.append(backend.server)
        port = backend.server.sockets[0].getsockname()[1]
        backend.authority = f"127.0.0.1:{port}"
        backend.url = f"http://{backend.authority}"
        return backend

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _client(url: str, **kw: object) -> TargetClient:
    opts: dict = {"timeout_seconds": 30.0, "max_body_bytes": 1 << 20, "concurrency": 4}
    opts.update(kw)
    return TargetClient("candidate", url, **opts)


def _rec(target: str = "/", **kw: object) -> RequestRecord:
    return RequestRecord(id="r1", ts=1, method=str(kw.pop("method", "GET")), target=target, **kw)  # type: ignore[arg-type]


SMUGGLING_HOST = "shop.example\r\nContent-Length: 0\r\n\r\nPOST /admin/delete-all HTTP/1.1\r\nHost: shop.example"


@pytest.mark.parametrize(
    "record",
    [
        _rec(host=SMUGGLING_HOST),
        _rec(headers=(("Host", SMUGGLING_HOST),)),
        _rec(host="shop.example\nX: 1"),
        _rec(host="shop.example\x00"),
        _rec(host="user@evil.example"),
        _rec("/a\r\nX-Injected: 1"),
        _rec("/a HTTP/1.1\r\nX: 1"),
        _rec(headers=(("X-A", "1\r\n\r\nPOST /admin HTTP/1.1"),)),
        _rec(headers=(("X-A", "nul\x00"),)),
        _rec(headers=(("X-A\r\nX-B", "1"),)),
        _rec(method="GET /admin HTTP/1.1\r\nX:"),
    ],
    ids=["host", "host-header", "host-lf", "host-nul", "host-userinfo", "target-crlf", "target-space",
         "value-crlf", "value-nul", "name-crlf", "method"],
)
async def test_nothing_is_smuggled_with_keep_host(raw: Callable[..., Awaitable[Raw]], record: RequestRecord) -> None:
    backend = await raw()
    async with _client(backend.url, keep_host=True) as client:
        refused = await client.send(record)
        after = await client.send(_rec("/next", host="shop.example"))
    assert (refused.status, refused.error) == (None, "request")
    assert (after.status, after.body) == (200, b"ok")
    assert backend.heads == [b"GET /next HTTP/1.1\r\nHost: shop.example\r\nX-Shadow-Replay: r1\r\n\r\n"]


@pytest.mark.parametrize("form", ["@{evil}/x", "//{evil}/x", "http://{evil}/x", "HTTPS://user:pw@{evil}/x"])
async def test_a_target_never_changes_the_host(raw: Callable[..., Awaitable[Raw]], form: str) -> None:
    good, evil = await raw(), await raw()
    target = form.format(evil=evil.authority)
    async with _client(good.url + "/base") as client:
        resp = await client.send(_rec(target))
    assert (resp.status, resp.error) == (200, None)
    assert evil.connections == 0
    (head,) = good.heads
    request_line, host_line = head.split(b"\r\n")[:2]
    assert host_line == f"Host: {good.authority}".encode()
    expected = "/x" if form.startswith(("http", "HTTP")) else "/" + target.lstrip("/") if form[0] == "@" else target
    assert request_line == f"GET /base{expected} HTTP/1.1".encode()


async def test_client_address_headers_come_from_the_trusted_address(raw: Callable[..., Awaitable[Raw]]) -> None:
    backend = await raw()
    logged = (("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6;by=evil"), ("X-Real-IP", "6.6.6.6"),
              ("forwarded", "for=7.7.7.7"))
    async with _client(backend.url) as client:
        await client.send(_rec(headers=logged, client="10.0.0.7"))
        await client.send(_rec(headers=logged))  # no trusted address: none of them goes
    with_client, without = backend.heads
    assert b"6.6.6.6" not in with_client and b"7.7.7.7" not in with_client
    assert b"X-Forwarded-For: 10.0.0.7\r\n" in with_client
    assert b"\r\nForwarded: for=10.0.0.7\r\n" in with_client and with_client.lower().count(b"\nforwarded:") == 1
    assert b"X-Real-Ip: 10.0.0.7\r\n" in with_client
    assert b"orwarded" not in without and b"Real" not in without


def test_a_lowercase_method_is_not_sent() -> None:
    """The allow-list matches whatever the case it is written in; a record goes out only
    spelled as an allowed method, so ``get`` (not GET on the wire) is dropped, counted."""
    rules = Rules(("get", "HEAD"), ())
    assert rules.apply(_rec(method="GET")).record is not None
    for method in ("get", "Get", "delete", "DELETE"):
        assert rules.apply(_rec(method=method)).dropped_by == "methods"


async def _endless(unit: bytes, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``head``, then ``unit`` over and over (bounded: 200,000 times) until the client goes."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(head)
    for _ in range(200_000):
        writer.write(unit)
        await writer.drain()


@pytest.mark.parametrize(
    ("head", "unit", "reason"),
    [
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n", "interim"),
        (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", "interim"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n", b"X-Trailer: t\r\n", "trailer"),
        (b"HTTP/1.1 200 OK\r\nX-Endless: ", b"y" * 1000, "head longer"),
    ],
    ids=["100-continue", "103-early-hints", "trailers", "head"],
)
async def test_an_endless_head_fails_at_once_not_at_the_timeout(
    raw: Callable[..., Awaitable[Raw]], head: bytes, unit: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = await raw(lambda r, w: _endless(unit, head, r, w))
    good = await raw()
    caplog.set_level("DEBUG", logger="shadowreplay.replayer.client")
    async with _client(hostile.url, timeout_seconds=60.0) as bad_client, _client(good.url) as good_client:
        bad, fine = await asyncio.gather(bad_client.send(_rec()), good_client.send(_rec()))
    assert (bad.status, bad.error) == (None, "protocol")  # not "timeout": refused as soon as the bound is passed
    assert (fine.status, fine.body) == (200, b"ok")
    assert reason in caplog.text
