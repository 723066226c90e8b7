"""The ASGI middleware driven by hand (receive/send), and the shipper's bounded queue."""

from __future__ import annotations

import threading
import time
from typing import Any

from shadowreplay.collector.middleware import ASGIMiddleware, RequestShipper, WSGIMiddleware


class RecordingSender:
    """Stands in for fluent-logger's FluentSender: keeps what it is given."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.events: list[tuple[Any, dict[str, Any]]] = []
        self.gate = gate

    def emit_with_time(self, label: str | None, timestamp: Any, data: dict[str, Any]) -> bool:
        if self.gate is not None:
            self.gate.wait(5)
        self.events.append((timestamp, data))
        return True

    def close(self) -> None:
        pass


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"ok:" + body})


async def test_asgi_request_recorded_in_nginx_shape() -> None:
    sender = RecordingSender()
    shipper = RequestShipper(sender=sender)
    mw = ASGIMiddleware(echo_app, shipper, max_body_bytes=16)
    chunks = [{"type": "http.request", "body": b"\xffbin", "more_body": True}, {"type": "http.request", "body": b"ary"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "scheme": "https", "http_version": "1.1",
        "path": "/a b", "raw_path": b"/a%20b", "query_string": b"x=1&x=2",
        "headers": [(b"host", b"api.example"), (b"x-forwarded-for", b"6.6.6.6"), (b"accept", b"a"), (b"accept", b"b")],
        "client": ("192.0.2.5", 5555),
    }
    t0 = time.time_ns()
    await mw(scope, receive, send)
    assert sent[1]["body"] == b"ok:\xffbinary"
    shipper.close()
    ((timestamp, rec),) = sender.events
    sec, nsec = int.from_bytes(timestamp.data[:4], "big"), int.from_bytes(timestamp.data[4:], "big")
    assert timestamp.code == 0 and sec * 10**9 + nsec >= t0
    assert rec["request_method"] == "POST" and rec["request_uri"] == "/a%20b?x=1&x=2"
    assert rec["remote_addr"] == "192.0.2.5" and rec["http_x_forwarded_for"] == "6.6.6.6"
    assert rec["host"] == "api.example" and rec["scheme"] == "https" and rec["http_accept"] == "a, b"
    assert rec["request_body"] == b"\xffbinary" and rec["status"] == 202 and rec["body_bytes_sent"] == 10


async def test_asgi_app_errors_propagate_and_are_still_recorded() -> None:
    sender = RecordingSender()
    shipper = RequestShipper(sender=sender)

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    mw = ASGIMiddleware(broken, shipper)
    try:
        await mw({"type": "http", "method": "GET", "path": "/", "headers": []}, None, None)  # type: ignore[arg-type]
    except RuntimeError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("the app's error must reach the server")
    shipper.close()
    assert sender.events[0][1]["status"] is None


def test_full_queue_drops_and_counts_without_blocking() -> None:
    gate = threading.Event()
    sender = RecordingSender(gate)
    shipper = RequestShipper(sender=sender, max_queue=3)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"x"]

    mw = WSGIMiddleware(app, shipper)
    import io

    t = time.perf_counter()
    for i in range(50):
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/{i}", "wsgi.input": io.BytesIO(), "REMOTE_ADDR": "10.0.0.1"}
        result = mw(env, lambda *a: None)
        assert list(result) == [b"x"]
        result.close()  # type: ignore[attr-defined]
    assert time.perf_counter() - t < 2.0
    assert shipper.dropped >= 46 and shipper.submitted + shipper.dropped == 50
    gate.set()
    shipper.close()
    assert len(sender.events) == shipper.submitted


async def test_asgi_target_and_headers_keep_their_bytes() -> None:
    # ASGI gives bytes; UTF-8 ones become text, others travel as bytes (msgpack bin), and
    # the collector carries them to the replay unchanged.
    from shadowreplay.collector.formats import make_format
    from shadowreplay.contract.config import FieldMap
    from shadowreplay.contract.record import decode_request

    sender = RecordingSender()
    shipper = RequestShipper(sender=sender)
    mw = ASGIMiddleware(echo_app, shipper)
    scope = {
        "type": "http", "method": "GET", "scheme": "http", "http_version": "1.1",
        "path": "/café", "raw_path": b"/caf\xc3\xa9", "query_string": b"q=\xff",
        "headers": [(b"host", b"h"), (b"user-agent", b"M\xe4rz"), (b"referer", b"http://r/\xc3\xa9")],
        "client": ("192.0.2.5", 5555),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        pass

    await mw(scope, receive, send)
    shipper.close()
    ((_, rec),) = sender.events
    assert rec["request_uri"] == b"/caf\xc3\xa9?q=\xff" and rec["http_user_agent"] == b"M\xe4rz"
    assert rec["http_referer"] == "http://r/é"
    r = decode_request(make_format("nginx_json", FieldMap()).to_bus("app", 1, rec)[1])
    assert r.target.encode("utf-8", "surrogateescape") == b"/caf\xc3\xa9?q=\xff"
    assert (r.header("User-Agent") or "").encode("utf-8", "surrogateescape") == b"M\xe4rz"
