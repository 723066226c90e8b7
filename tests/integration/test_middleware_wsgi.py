"""The WSGI middleware on a real WSGI server (wsgiref) shipping with the real fluent-logger
into a real collector over the SQLite bus."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from shadowreplay.collector.middleware import RequestShipper, WSGIMiddleware
from tests.conftest import free_port
from tests.integration.test_tail import Harness, harness  # noqa: F401  (harness is a fixture)
from waiting import DEADLINE_SECONDS, until

pytestmark = pytest.mark.integration


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    status = "201 Created" if environ["REQUEST_METHOD"] == "POST" else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"echo:", body]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Served:
    def __init__(self, wsgi_app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, wsgi_app, handler_class=_Quiet)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def request(self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{target}", data=body, method=method, headers=headers or {})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), time.perf_counter() - t

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def served() -> Iterator[list[Served]]:
    servers: list[Served] = []
    yield servers
    for s in servers:
        s.close()


async def test_wsgi_requests_reach_the_bus(harness: Harness, served: list[Served]) -> None:  # noqa: F811
    shipper = RequestShipper("app.requests", "127.0.0.1", harness.port)
    srv = Served(WSGIMiddleware(app, shipper, max_body_bytes=64))
    served.append(srv)
    before = time.time_ns()
    status, body, _ = await asyncio.to_thread(srv.request, "GET", "/items/7?q=a&q=b&z=%20", None, {"X-Forwarded-For": "6.6.6.6"})
    assert (status, body) == (200, b"echo:")
    payload = b'{"user": "al", "password": "hunter2"}'
    status, body, _ = await asyncio.to_thread(
        srv.request, "POST", "/login", payload,
        {"Content-Type": "application/json", "Authorization": "Bearer s3cret", "X-Trace": "t1"},
    )
    assert status == 201 and body == b"echo:" + payload
    big = b"x" * 100  # over the cap: not sent at all
    await asyncio.to_thread(srv.request, "PUT", "/blob", big)
    after = time.time_ns()
    await harness.wait_for(["/items/7?q=a&q=b&z=%20", "/login", "/blob"])
    shipper.close()
    by_target = {r.target: r for r in harness.records}  # type: ignore[attr-defined]
    get = by_target["/items/7?q=a&q=b&z=%20"]
    assert get.method == "GET" and get.client == "127.0.0.1"  # never the X-Forwarded-For
    assert get.header("X-Forwarded-For") == "6.6.6.6"
    assert get.host == f"127.0.0.1:{srv.port}" and before <= get.ts <= after
    assert get.origin.status == 200 and get.origin.bytes == 5 and get.origin.duration >= 0
    login = by_target["/login"]
    assert login.method == "POST" and login.origin.status == 201
    assert login.header("Content-Type") == "application/json" and login.header("X-Trace") == "t1"
    assert login.header("Authorization", ).startswith("redacted:hmac:")  # redacted at ingest
    assert login.body is not None and b"hunter2" not in login.body and b'"user": "al"' in login.body  # bytes kept
    assert by_target["/blob"].body is None
    assert shipper.sent == 3 and shipper.dropped == 0 and shipper.errors == 0


class HungSender:
    """fluent-logger's sender to a collector that is down, stuck (as on a collector that
    accepted the connection and never answers) until ``release`` is set."""

    def __init__(self, port: int) -> None:
        from fluent import sender

        self.real = sender.FluentSender("app.requests", host="127.0.0.1", port=port, timeout=0.5,
                                        nanosecond_precision=True)
        self.stuck = threading.Event()
        self.release = threading.Event()

    def emit_with_time(self, label: str | None, timestamp: Any, data: dict[str, Any]) -> bool:
        self.stuck.set()
        self.release.wait(DEADLINE_SECONDS)
        return bool(self.real.emit_with_time(label, timestamp, data))

    def close(self) -> None:
        self.real.close()


async def test_collector_down_never_slows_or_fails_requests(served: list[Served]) -> None:
    hung = HungSender(free_port())
    shipper = RequestShipper(max_queue=4, sender=hung)
    srv = Served(WSGIMiddleware(app, shipper))
    served.append(srv)
    try:
        status, _, _ = await asyncio.to_thread(srv.request, "POST", "/x/0", b"abc")
        assert status == 201
        await until(hung.stuck.is_set, "the shipper to take the first record")
        # Every request is answered while the shipper is stuck on its first record: none
        # waits for it; what the full queue cannot hold is dropped and counted.
        for i in range(1, 20):
            status, _, _ = await asyncio.to_thread(srv.request, "POST", f"/x/{i}", b"abc")
            assert status == 201
        assert (shipper.sent, shipper.failed, shipper.submitted, shipper.dropped) == (0, 0, 1 + 4, 20 - 1 - 4)
        hung.release.set()
        await until(lambda: shipper.failed + shipper.dropped == 20, "the queued records to fail")
        assert shipper.sent == 0 and shipper.failed == 5
    finally:
        hung.release.set()
        shipper.close(timeout_seconds=1)
