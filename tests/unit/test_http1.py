"""The built-in HTTP/1.1 client: response framing fed byte by byte, request building, and the
connection pool against raw asyncio servers on loopback ports picked at run time."""

from __future__ import annotations

import asyncio
import collections
import gzip
import zlib
from collections.abc import Awaitable, Callable
from functools import partial

import brotli
import pytest

from shadowreplay.replayer.http1 import (
    MAX_HEAD_BYTES,
    MAX_INTERIM,
    MAX_TRAILER_BYTES,
    MAX_TRAILER_FIELDS,
    TIMELINE_POINTS,
    ConnectionPool,
    HTTPFailure,
    Timeline,
    _Connection,
    _Parser,
    _Writes,
    build_request,
)
from waiting import DEADLINE_SECONDS

# -- framing ------------------------------------------------------------------------------


def feed(raw: bytes, *, cap: int = 1 << 20, head: bool = False, step: int = 1, eof: bool = False) -> _Parser:
    """Feed ``raw`` ``step`` bytes at a time; the parser must finish (at EOF if ``eof``), and
    only at the last byte unless the body is truncated at the cap."""
    parser = _Parser(head, cap)
    done = False
    for i in range(0, len(raw), step):
        assert not done, "bytes fed after the response was complete"
        done = parser.feed(raw[i : i + step])
        if done and parser.truncated:
            break
    if eof:
        assert not done
        done = parser.feed_eof()
    assert done
    return parser


@pytest.mark.parametrize("step", [1, 7, 1 << 16])
def test_content_length_body(step: int) -> None:
    p = feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello", step=step)
    assert (p.status, bytes(p.body), p.truncated, p.keep_alive) == (200, b"hello", False, True)
    assert p.headers == (("Content-Length", "5"), ("X-A", "1"), ("x-a", "2"))


@pytest.mark.parametrize("step", [1, 3, 1 << 16])
def test_chunked_body_with_extensions_and_trailers(step: int) -> None:
    raw = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n")
    p = feed(raw, step=step)
    assert (p.status, bytes(p.body), p.keep_alive) == (201, b"hello" + b"x" * 26, True)


def test_transfer_encoding_overrides_content_length() -> None:
    p = feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert bytes(p.body) == b"ok"


def test_interim_responses_are_skipped() -> None:
    p = feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", step=5)
    assert (p.status, p.headers, bytes(p.body)) == (200, (("Content-Length", "2"),), b"ok")


@pytest.mark.parametrize(("status", "head"), [(200, True), (204, False), (304, False)])
def test_no_body_after_head_204_304(status: int, head: bool) -> None:
    p = feed(f"HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n".encode(), head=head)
    assert (p.status, bytes(p.body), p.keep_alive) == (status, b"", True)


def test_body_until_close() -> None:
    p = feed(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", eof=True)
    assert (bytes(p.body), p.keep_alive) == (b"until the end", False)


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"],
)
def test_connection_not_kept(head: bytes) -> None:
    assert not feed(head).keep_alive


def test_http10_keep_alive_is_kept() -> None:
    assert feed(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "raw-deflate", "br"])
@pytest.mark.parametrize("chunked", [False, True])
def test_encoded_body_is_decoded(encoding: str, chunked: bool) -> None:
    plain = b"".join(b"line %d of the body\n" % i for i in range(2000))
    if encoding in ("gzip", "x-gzip"):
        body = gzip.compress(plain)
    elif encoding == "deflate":
        body = zlib.compress(plain)
    elif encoding == "raw-deflate":
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body, encoding = c.compress(plain) + c.flush(), "deflate"
    else:
        body = brotli.compress(plain)
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100]) for i in range(0, len(body), 100))
        raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (
            encoding.encode(), framed)
    else:
        raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            encoding.encode(), len(body), body)
    p = feed(raw, step=333)
    assert bytes(p.body) == plain and not p.truncated
    capped = feed(raw, step=333, cap=1000)
    assert bytes(capped.body) == plain[:1000] and capped.truncated and not capped.keep_alive


def test_corrupt_encoding_is_a_protocol_error() -> None:
    with pytest.raises(HTTPFailure) as err:
        feed(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 8\r\n\r\nnot gzip")
    assert err.value.kind == "protocol"


@pytest.mark.parametrize(("cap", "truncated"), [(0, True), (4, True), (5, False), (6, False)])
@pytest.mark.parametrize("chunked", [False, True])
def test_cap(cap: int, truncated: bool, chunked: bool) -> None:
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n" if chunked
           else b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    parser = _Parser(False, cap)
    done = False
    for i in range(len(raw)):
        done = parser.feed(raw[i : i + 1])
        if done:
            break
    assert done
    assert (bytes(parser.body), parser.truncated) == (b"hello"[:cap], truncated)
    assert parser.keep_alive is not truncated


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000,
    ],
)
def test_malformed_responses_are_protocol_errors(raw: bytes) -> None:
    parser = _Parser(False, 1 << 20)
    with pytest.raises(HTTPFailure) as err:
        for i in range(0, len(raw), 4096):
            parser.feed(raw[i : i + 4096])
    assert err.value.kind == "protocol"


def test_header_values_that_are_not_utf8_are_kept_as_latin1() -> None:
    p = feed(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 0\r\n\r\n")
    assert p.headers == (("X-Name", "café"), ("Content-Length", "0"))


# -- requests -----------------------------------------------------------------------------


def test_build_request() -> None:
    wire = build_request("POST", "/a?b=1", "h:81", [("X-A", "1"), ("x-a", "2")], b"body")
    assert wire == b"POST /a?b=1 HTTP/1.1\r\nHost: h:81\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 4\r\n\r\nbody"
    assert build_request("GET", "/", "h", [], None) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert b"Content-Length: 0" in build_request("PUT", "/", "h", [], b"")


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/", [("X-A", "1\r\nX-Injected: 1")]),
        ("GET", "/", [("X-A", "1\nX")]),
        ("GET", "/", [("X-A", "nul\x00")]),
        ("GET", "/", [("X-A", "lone surrogate \ud800")]),
        ("GET", "/", [("Bad Name", "1")]),
        ("GET", "/", [("X-A:", "1")]),
        ("GET", "/a b", []),
        ("GET", "/a\r\nX: 1", []),
        ("G T", "/", []),
    ],
)
def test_request_that_could_smuggle_is_refused(method: str, target: str, headers: list[tuple[str, str]]) -> None:
    with pytest.raises(HTTPFailure) as err:
        build_request(method, target, "h", headers, None)
    assert err.value.kind == "request"


# -- the pool against raw servers ---------------------------------------------------------

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """Counts connections (open at once, and in all); each is handled by ``serve``."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RawServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            try:
                await self.serve(reader, writer, self.connections)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self.open -= 1
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int, *, delay: float = 0.0,
                     answer_first: int = 1 << 30) -> None:
    """Answer requests on one connection; after ``answer_first`` of them, close unanswered."""
    for _ in range(answer_first):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        if delay:
            await asyncio.sleep(delay)
        body = b"conn %d" % conn
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # the next request gets no answer: the connection just closes


async def test_connections_are_reused() -> None:
    async with RawServer(keep_alive) as srv:
        pool = ConnectionPool(srv.url, limit=4)
        for _ in range(5):
            resp = await pool.request("GET", "/", "", [], None, 1000)
            assert (resp.status, resp.body) == (200, b"conn 1")
        pool.close()
    assert srv.connections == 1


async def test_at_most_limit_connections_and_every_request_answered() -> None:
    async with RawServer(partial(keep_alive, delay=0.02)) as srv:
        pool = ConnectionPool(srv.url, limit=3)
        answers = await asyncio.gather(*(pool.request("GET", f"/{i}", "", [], None, 1000) for i in range(20)))
        pool.close()
    assert [a.status for a in answers] == [200] * 20
    assert srv.connections == 3 and srv.most_open == 3


async def test_a_keep_alive_connection_closed_by_the_peer_is_retried_once_if_idempotent() -> None:
    async with RawServer(partial(keep_alive, answer_first=1)) as srv:
        pool = ConnectionPool(srv.url, limit=1)
        first = await pool.request("GET", "/", "", [], None, 1000)
        again = await pool.request("GET", "/", "", [], None, 1000)  # conn 1 closes on it: retried on conn 2
        with pytest.raises(HTTPFailure) as err:
            await pool.request("POST", "/", "", [], b"x", 1000)  # not idempotent: not sent twice
        after = await pool.request("GET", "/", "", [], None, 1000)
        pool.close()
    assert (first.body, again.body, after.body) == (b"conn 1", b"conn 2", b"conn 3")
    assert err.value.kind == "reset"
    assert srv.connections == 3


async def test_cancelled_waiters_do_not_leak_connections() -> None:
    arrived: asyncio.Queue[int] = asyncio.Queue()  # the connection of each request the server read
    answer: collections.defaultdict[int, asyncio.Event] = collections.defaultdict(asyncio.Event)  # by connection

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        """Answers a request only once the test sets ``answer[conn]``."""
        while True:
            await reader.readuntil(b"\r\n\r\n")
            arrived.put_nowait(conn)
            await answer[conn].wait()
            answer[conn].clear()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nconn %d" % conn)
            await writer.drain()

    async with RawServer(held) as srv:
        pool = ConnectionPool(srv.url, limit=1)
        busy = asyncio.ensure_future(pool.request("GET", "/", "", [], None, 1000))
        assert await asyncio.wait_for(arrived.get(), DEADLINE_SECONDS) == 1  # the only slot is busy until answered
        for _ in range(3):  # wait for the busy connection, give up: the slot stays the busy one's
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.02):
                    await pool.request("GET", "/", "", [], None, 1000)
        answer[1].set()
        assert (await busy).body == b"conn 1"
        with pytest.raises(TimeoutError):  # a timeout mid-response drops that connection
            async with asyncio.timeout(None) as timeout:

                async def expire_once_sent() -> None:
                    assert await arrived.get() == 1
                    timeout.reschedule(asyncio.get_running_loop().time())

                expiry = asyncio.create_task(expire_once_sent())
                await pool.request("GET", "/", "", [], None, 1000)
        await expiry
        answer[2].set()
        resp = await asyncio.wait_for(pool.request("GET", "/", "", [], None, 1000), DEADLINE_SECONDS)
        pool.close()
    assert resp.body == b"conn 2"
    assert srv.connections == 2


class _Transport:
    def __init__(self, name: int, written: list[tuple[int, bytes]], fails: Exception | None = None) -> None:
        self.name, self.written, self.fails = name, written, fails

    def write(self, data: bytes) -> None:
        if self.fails is not None:
            raise self.fails
        self.written.append((self.name, data))


async def test_requests_of_one_turn_are_written_together_after_it() -> None:
    """Writes wait for the end of the event loop turn, then go out back to back; an exchange
    that is over by then is not written, and a connection that cannot take it fails it."""
    loop = asyncio.get_running_loop()
    writes, written = _Writes(), list[tuple[int, bytes]]()
    conns: list[_Connection] = []
    waiters: list[asyncio.Future[None]] = []
    fails = {3: RuntimeError("unable to perform operation on a closed transport"), 5: ValueError("odd")}
    for i in range(7):
        conn = _Connection(writes, set())
        conn.connection_made(_Transport(i, written, fails.get(i)))  # type: ignore[arg-type]
        waiter: asyncio.Future[None] = loop.create_future()
        conn._waiter = waiter
        writes.add(conn, b"request %d" % i, waiter)
        conns.append(conn)
        waiters.append(waiter)
    waiters[1].cancel()  # timed out before the write: its connection is dropped, not written to
    conns[2].closed = True  # the peer closed it meanwhile
    assert written == []
    await asyncio.sleep(0)
    assert written == [(0, b"request 0"), (4, b"request 4"), (6, b"request 6")]
    assert [w.done() for w in (waiters[0], waiters[4], waiters[6])] == [False, False, False]
    for i in (2, 3):
        exc = waiters[i].exception()
        assert isinstance(exc, HTTPFailure) and exc.kind == "reset"
    assert isinstance(waiters[5].exception(), ValueError)  # an unexpected failure reaches its request only
    writes.add(conns[0], b"again", waiters[0])  # a later turn gets a flush of its own
    await asyncio.sleep(0)
    assert written[-1] == (0, b"again")


async def test_connect_refused() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    pool = ConnectionPool(f"http://127.0.0.1:{port}", limit=2)
    for _ in range(3):  # a failed connect gives its slot back
        with pytest.raises(HTTPFailure) as err:
            await pool.request("GET", "/", "", [], None, 1000)
        assert err.value.kind == "connect"


def test_base_url() -> None:
    pool = ConnectionPool("https://staging.example:443/v2/", limit=1)
    assert (pool.tls, pool.host, pool.port, pool.authority, pool.prefix) == (True, "staging.example", 443,
                                                                             "staging.example", "/v2")
    assert ConnectionPool("http://[::1]:8080", limit=1).authority == "[::1]:8080"
    with pytest.raises(ValueError):
        ConnectionPool("ftp://x", limit=1)


# -- conformance (RFC 9112 as a user agent reads a response), every case also byte by byte --

CRLF_CASES: list[tuple[str, bytes, tuple[int, tuple[tuple[str, str], ...], bytes, bool] | None]] = [
    # (name, response, (status, headers, body, keep_alive) or None: refused as "protocol")
    ("obs-fold becomes one space",
     b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n  b\r\n\tc\r\nContent-Length: 2\r\n\r\nok",
     (200, (("X-Fold", "a b c"), ("Content-Length", "2")), b"ok", True)),
    ("TE then CL: TE wins, connection not reused",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     (200, (("Transfer-Encoding", "chunked"), ("Content-Length", "99")), b"ok", False)),
    ("CL then TE: TE wins, connection not reused",
     b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     (200, (("Content-Length", "99"), ("Transfer-Encoding", "Chunked")), b"ok", False)),
    ("HTTP/1.0 with chunked: read, then closed",
     b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     (200, (("Connection", "keep-alive"), ("Transfer-Encoding", "chunked")), b"ok", False)),
    ("a list of one Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok",
     (200, (("Content-Length", "2, 2"), ("Content-Length", "2")), b"ok", True)),
    ("bare LF line ends", b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\n\nok",
     (200, (("Content-Length", "2"), ("X-A", "1")), b"ok", True)),
    ("chunk extensions and trailers (folded too) are dropped",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=1;b=\"x;y\"\r\nok\r\n1 \t\r\n!\r\n0;last\r\n"
     b"X-Sum: 1\r\n  2\r\nX-T: 3\r\n\r\n",
     (200, (("Transfer-Encoding", "chunked"),), b"ok!", True)),
    ("interim responses, then the final one",
     b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
     (200, (("Content-Length", "0"),), b"", True)),
    ("no reason phrase", b"HTTP/1.1 204\r\n\r\n", (204, (), b"", True)),
    ("304 has no body whatever it says",
     b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
     (304, (("Transfer-Encoding", "chunked"),), b"", True)),
    ("Content-Length with non-ASCII digits", "HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\n".encode(), None),
    ("Content-Length with Arabic-Indic digits", "HTTP/1.1 200 OK\r\nContent-Length: ٣\r\n\r\nabc".encode(), None),
    ("Content-Length signed", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", None),
    ("Content-Length of 21 digits", b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 21 + b"\r\n\r\n", None),
    ("Content-Length of 5000 digits", b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\n", None),
    ("conflicting Content-Length list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", None),
    ("conflicting Content-Length fields", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", None),
    ("a transfer coding other than chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", None),
    ("chunked twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     None),
    ("gzip, chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", None),
    ("a fold before any field", b"HTTP/1.1 200 OK\r\n folded: x\r\nContent-Length: 0\r\n\r\n", None),
    ("space before the colon", b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n", None),
    ("NUL in a value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", None),
    ("bare CR in a value", b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", None),
    ("status below 100", b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", None),
    ("chunk size with leading space", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 2\r\nok\r\n0\r\n\r\n",
     None),
    ("chunk size of 21 hex digits",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 20 + b"2\r\nok\r\n0\r\n\r\n", None),
    ("a bad trailer line", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nnot a field\r\n\r\n", None),
]


@pytest.mark.parametrize("step", [1, 1 << 20])
@pytest.mark.parametrize(("name", "raw", "expected"), CRLF_CASES, ids=[c[0] for c in CRLF_CASES])
def test_conformance(name: str, raw: bytes, expected: tuple | None, step: int) -> None:
    if expected is None:
        parser = _Parser(False, 1 << 20)
        with pytest.raises(HTTPFailure) as err:
            for i in range(0, len(raw), step):
                parser.feed(raw[i : i + step])
            parser.feed_eof()
            raise AssertionError("accepted")
        assert err.value.kind == "protocol"
        return
    p = feed(raw, step=step)
    assert (p.status, p.headers, bytes(p.body), p.keep_alive) == expected


@pytest.mark.parametrize("step", [1, 1 << 20])
def test_close_delimited_body_byte_by_byte(step: int) -> None:
    p = feed(b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\n" + bytes(range(256)), step=step, eof=True)
    assert (bytes(p.body), p.keep_alive) == (bytes(range(256)), False)


@pytest.mark.parametrize("step", [1, 1 << 20])
def test_head_response_byte_by_byte(step: int) -> None:
    p = feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n", head=True, step=step)
    assert (p.status, bytes(p.body)) == (200, b"")


def _refused(raw: bytes, step: int) -> HTTPFailure:
    parser = _Parser(False, 1 << 20)
    with pytest.raises(HTTPFailure) as err:
        for i in range(0, len(raw), step):
            parser.feed(raw[i : i + step])
    assert err.value.kind == "protocol"
    return err.value


@pytest.mark.parametrize("step", [1, 1000, 1 << 20])
def test_head_limit_holds_however_the_head_arrives(step: int) -> None:
    big = b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES + b"\r\nContent-Length: 0\r\n\r\n"
    assert "longer than" in str(_refused(big, step))
    just = b"HTTP/1.1 200 OK\r\nX: " + b"y" * (MAX_HEAD_BYTES - 60) + b"\r\nContent-Length: 0\r\n\r\n"
    assert len(just) <= MAX_HEAD_BYTES and feed(just, step=step).status == 200


@pytest.mark.parametrize("step", [1, 1 << 20])
def test_interim_responses_are_bounded_in_count_and_bytes(step: int) -> None:
    many = b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM + 1) + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert "interim" in str(_refused(many, step))
    enough = b"HTTP/1.1 100 Continue\r\n\r\n" * MAX_INTERIM + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert feed(enough, step=step).status == 200
    fat = b"HTTP/1.1 103 Early Hints\r\nLink: " + b"l" * (MAX_HEAD_BYTES // 2) + b"\r\n\r\n"
    assert "longer than" in str(_refused(fat * 3 + b"HTTP/1.1 200 OK\r\n\r\n", step))  # one budget for all heads


@pytest.mark.parametrize("step", [1, 1 << 20])
def test_trailers_are_bounded_in_count_and_bytes(step: int) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
    many = head + b"X-T: 1\r\n" * (MAX_TRAILER_FIELDS + 1) + b"\r\n"
    assert "trailer fields" in str(_refused(many, step))
    long = head + b"X-T: " + b"t" * MAX_TRAILER_BYTES + b"\r\n\r\n"
    assert "trailers longer" in str(_refused(long, step))
    endless = head + b"X-T: 1\r\n" * (MAX_TRAILER_BYTES // 8 + 1)  # never ends: the bytes bound stops it
    assert "trailers longer" in str(_refused(endless, step))
    assert bytes(feed(head + b"X-T: 1\r\n" * MAX_TRAILER_FIELDS + b"\r\n", step=step).body) == b"ok"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "br"])
@pytest.mark.parametrize("chunked", [False, True])
def test_encoded_body_fed_one_byte_at_a_time(encoding: str, chunked: bool) -> None:
    plain = b"".join(b"event %d\n" % i for i in range(300))
    if encoding == "gzip":
        body = gzip.compress(plain)
    elif encoding == "deflate":
        body = zlib.compress(plain)
    elif encoding == "raw-deflate":
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body, encoding = c.compress(plain) + c.flush(), "deflate"
    else:
        body = brotli.compress(plain)
    if chunked:
        framed = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
        raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (
            encoding.encode(), framed)
    else:
        raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            encoding.encode(), len(body), body)
    p = feed(raw, step=1)
    assert bytes(p.body) == plain and p.received == len(body)


def test_timeline_is_bounded_and_keeps_first_and_last() -> None:
    t = Timeline()
    for i in range(10_000):
        t.add(i * 0.001, (i + 1) * 10)
        assert len(t.points) <= TIMELINE_POINTS
    points = t.freeze()
    assert points[0] == (0.0, 10) and points[-1] == (9.999, 100_000)
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    assert [p[1] for p in points] == sorted(p[1] for p in points)
    assert len(points) >= TIMELINE_POINTS // 2  # thinned, not collapsed: the cadence stays visible
    gaps = [b[0] - a[0] for a, b in zip(points, points[1:], strict=False)]
    assert max(gaps[:-1]) < 4 * min(gaps[:-1])  # evenly spread over the whole span


def test_timeline_of_a_few_arrivals_keeps_each() -> None:
    t = Timeline()
    for i, (sec, n) in enumerate([(0.1, 5), (0.2, 9), (0.35, 20)]):
        t.add(sec, n)
        assert len(t.points) == i + 1
    assert t.freeze() == ((0.1, 5), (0.2, 9), (0.35, 20))


def test_build_request_refuses_line_ends_and_nul_in_values_and_bad_hosts() -> None:
    for c in "\r\n\x00":
        with pytest.raises(HTTPFailure):
            build_request("GET", "/", "h", [("X-A", f"a{c}b")], None)
    # Other control bytes, and bytes that are not UTF-8, go out as logged.
    for c in [*range(1, 10), 11, 12, *range(14, 32), 127]:
        assert f"X-A: a{chr(c)}b\r\n".encode() in build_request("GET", "/", "h", [("X-A", f"a{chr(c)}b")], None)
    assert b"X-A: M\xe4rz\r\n" in build_request("GET", "/", "h", [("X-A", "M\udce4rz")], None)
    for host in ["shop.example\r\nContent-Length: 0\r\n\r\nPOST /admin HTTP/1.1", "a b", "user@evil", "evil/x",
                 "", "a:b:c", "[::1", "h\x00"]:
        with pytest.raises(HTTPFailure) as err:
            build_request("GET", "/", host, [], None)
        assert err.value.kind == "request", host
    for host in ["shop.example", "shop.example:8080", "[::1]:81", "127.0.0.1", "xn--bcher-kva.example"]:
        assert f"Host: {host}\r\n".encode() in build_request("GET", "/", host, [], None)
    for target in ["http://evil/x", "@evil/x", "evil", "/a#\x01"]:
        with pytest.raises(HTTPFailure):
            build_request("GET", target, "h", [], None)


# -- the connection: what arrives is refused cleanly, early and IPv6 answers ----------------


async def test_a_bad_content_length_fails_the_request_not_the_event_loop() -> None:
    """``Content-Length: ²`` used to raise ValueError inside data_received: it reached the
    loop's exception handler and the request waited for its timeout."""
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write("HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\nxx".encode())
        await writer.drain()
        await reader.read()  # until the client closes

    try:
        async with RawServer(answer) as srv:
            pool = ConnectionPool(srv.url, limit=1)
            with pytest.raises(HTTPFailure) as err:
                async with asyncio.timeout(30):
                    await pool.request("GET", "/", "", [], None, 1000)
            pool.close()
    finally:
        loop.set_exception_handler(None)
    assert err.value.kind == "protocol" and "Content-Length" in str(err.value)
    assert reported == []


async def _early_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int, *,
                        close: bool) -> None:
    """Answer 413 as soon as the head is in, before reading the body; then read it all."""
    head = await reader.readuntil(b"\r\n\r\n")
    if b"content-length" not in head.lower():
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nconn %d" % (len(b"conn %d" % conn), conn))
        await writer.drain()
        await reader.read()
        return
    writer.write(b"HTTP/1.1 413 Too Large\r\n%sContent-Length: 4\r\n\r\nbig!" % (b"Connection: close\r\n" if close else b""))
    await writer.drain()
    if close:
        writer.write_eof()
    await reader.read()  # the client's body (and its close)


@pytest.mark.parametrize("close", [True, False])
async def test_an_early_response_is_read_and_its_connection_not_reused(close: bool) -> None:
    async with RawServer(partial(_early_answer, close=close)) as srv:
        pool = ConnectionPool(srv.url, limit=1)
        early = await pool.request("POST", "/upload", "", [], b"x" * (16 << 20), 1000)
        async with asyncio.timeout(30):  # reused, it would wait behind a body the server reads to the end
            after = await pool.request("GET", "/", "", [], None, 1000)
        pool.close()
    assert (early.status, early.body) == (413, b"big!")
    assert (after.status, after.body) == (200, b"conn 2")  # not sent behind an unfinished body


async def test_ipv6_loopback_target() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv6")
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(handle, "::1", 0)
    except OSError as exc:
        pytest.fail(f"this test needs IPv6 on loopback (::1): {exc}")
    port = server.sockets[0].getsockname()[1]
    try:
        pool = ConnectionPool(f"http://[::1]:{port}", limit=1)
        resp = await pool.request("GET", "/six?x=1", "", [], None, 1000)
        pool.close()
    finally:
        server.close()
        await server.wait_closed()
    assert (resp.status, resp.body) == (200, b"v6")
    assert seen[0].startswith(b"GET /six?x=1 HTTP/1.1\r\nHost: [::1]:%d\r\n" % port)


def test_pools_check_names_each_in_their_own_set() -> None:
    """No state shared between pools (the old module-wide ``_good_names``)."""
    import shadowreplay.replayer.http1 as http1

    a, b = ConnectionPool("http://127.0.0.1:1", limit=1), ConnectionPool("http://127.0.0.1:2", limit=1)
    names: set[str] = set()
    build_request("GET", "/", "h", [("X-A", "1")], None, names)
    assert names == {"X-A"} and not a._checked_names and not b._checked_names
    assert not any(isinstance(v, (set, dict, list)) for k, v in vars(http1).items() if not k.startswith("__"))
