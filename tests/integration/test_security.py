"""Security checks the other test files do not already make.

Already covered elsewhere (and not repeated here):
* tests/integration/test_collector_protocol.py — wrong shared key, wrong user/password,
  same hostname (``test_refused_logins_get_a_clear_pong_and_are_closed``), a replayed PING
  (``test_replayed_ping_is_refused``), no record before authentication
  (``test_no_record_accepted_before_authentication``), handshake timeout, TLS with and
  without client certificates (a client certificate from another CA is refused), the
  allow-list;
* tests/integration/test_web.py — the page shows a ``<script>`` response body as text, in
  a real Chromium (``test_page_shows_divergences_escapes_bodies_and_streams_new_ones``).

Added here: an oversized PING; a TLS client that lacks the CA; redaction through the
whole pipeline (bus, divergence store, web API, logs); loopback-only defaults.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.parse
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import orjson
import pytest

from shadowreplay.collector.forward_client import ForwardClient
from fault_procs import Backends, Stage, free_port, http_get, nginx_line, read_topic, toml_config, wait_until
from forward_vectors import pong_refused
from shadowreplay.contract.config import Config
from shadowreplay.contract.record import decode_request, decode_result
from test_collector_protocol import (  # noqa: F401  (pki and start are fixtures)
    SECURE,
    Start,
    chunk_frame,
    client_ctx,
    closed,
    open_conn,
    pki,
    read_obj,
    server_tls,
    start,
)
from waiting import DEADLINE_SECONDS

pytestmark = pytest.mark.integration


async def test_oversized_ping_is_refused_with_the_documented_reason(start: Start) -> None:  # noqa: F811
    c = await start(security=SECURE)
    reader, writer = await open_conn(c.port)
    helo = await read_obj(reader)
    assert helo[0] == "HELO"
    huge = msgpack.packb(["PING", "h" * (200 * 1024), "salt", "digest", "", ""])
    writer.write(huge + chunk_frame("after", ["after-huge-ping"], "x"))
    async with asyncio.timeout(DEADLINE_SECONDS):
        data = b""
        while True:
            try:
                more = await reader.read(4096)
            except ConnectionError:
                break
            if not more:
                break
            data += more
    assert data == pong_refused("invalid ping message")  # and no ack
    writer.close()
    assert c.metric("shadow_collector_auth_failures_total", reason="invalid_ping") == 1
    assert c.metric("shadow_collector_records_total") == 0
    assert await c.records(0) == {}


async def test_tls_client_without_the_ca_is_refused_with_it_records_flow(start: Start, pki: Path) -> None:  # noqa: F811
    c = await start(tls=server_tls(pki))
    without_ca = ssl.create_default_context()  # the system's CAs, not ours
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_conn(c.port, without_ca)
    reader, writer = await open_conn(c.port, client_ctx(pki))
    writer.write(chunk_frame("tls", ["tls-ok-1", "tls-ok-2"], "t1"))
    assert await read_obj(reader) == {"ack": "t1"}
    writer.close()
    assert set(await c.records(2)) == {"tls-ok-1", "tls-ok-2"}
    assert c.metric("shadow_collector_tls_handshake_failures_total") == 1
    # And a client that skips the handshake entirely gets nothing stored either.
    reader, writer = await open_conn(c.port)
    writer.write(chunk_frame("plain", ["plain-1"], "p"))
    assert await closed(reader)
    writer.close()
    assert "plain-1" not in await c.records(2)


# -- redaction, end to end ----------------------------------------------------------------

SECRETS = {
    "authorization": "Bearer SECRET-AUTH-7f3a9c1e",
    "cookie": "session=SECRET-COOKIE-2b8d4e6f",
    "password": "SECRET-PASSWORD-5c1a7e9b",
}


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[tuple[Stage, Backends, str, Path, str, str]]:
    backends = Backends(["candidate:diverge", "baseline:diverge"])
    suffix = uuid.uuid4().hex[:8]
    store = tmp_path / "diffs.db"
    config = toml_config(tmp_path / "cfg.toml", {
        "bus": {"requests_topic": f"req-{suffix}", "results_topic": f"res-{suffix}", "partitions": 1},
        "comparer.store": {"path": str(store)},
    })
    bus = f"sqlite:///{tmp_path / 'bus.db'}"
    run = Stage(
        "run",
        ["--candidate", backends.url("candidate"), "--baseline", backends.url("baseline"), "--methods", "GET,POST"],
        tmp_path, config=config, bus=bus, listen_port=free_port(), log_level="DEBUG",
    )
    try:
        run.wait_ready()
        yield run, backends, bus, store, f"req-{suffix}", f"res-{suffix}"
    finally:
        run.stop()
        backends.stop()


def test_secrets_never_reach_bus_store_page_or_logs(
    pipeline: tuple[Stage, Backends, str, Path, str, str], tmp_path: Path
) -> None:
    run, backends, bus, store, req_topic, res_topic = pipeline
    assert run.listen_port is not None
    n = 5
    events = []
    for i in range(n):
        body = orjson.dumps({"user": f"u{i}", "password": SECRETS["password"], "nested": {"password": SECRETS["password"]}})
        line = nginx_line(
            f"sec-{i}", method="POST", path=f"/login/{i}", request_body=body.decode(),
            http_authorization=SECRETS["authorization"], http_cookie=SECRETS["cookie"],
            http_content_type="application/json",
        )
        events.append((time.time_ns(), line))
    with ForwardClient("127.0.0.1", run.listen_port, timeout_seconds=10) as client:
        client.send("nginx.access", events)
    wait_until(lambda: run.metric("shadow_compare_compared_total") >= n, 60, "the comparer to compare them")
    run.stop()

    def leaks(text: str) -> list[str]:
        return [name for name, secret in SECRETS.items() if secret in text or secret.split()[-1] in text]

    # The bus: the raw SQLite files, and every message decoded (bodies are base64 there).
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("bus.db*"))
    assert not leaks(raw.decode("latin-1")), "a secret is in the bus file"
    records = [decode_request(v) for v in read_topic(bus, req_topic, want=n)]
    results = [decode_result(v) for v in read_topic(bus, res_topic, want=n)]
    assert len(records) == len(results) == n
    decoded = []
    for r in records:
        decoded += [str(r.headers), (r.body or b"").decode("utf-8", "replace")]
    for res in results:
        decoded.append(str(res.request.headers))
        decoded += [(resp.body or b"").decode("utf-8", "replace") for resp in res.responses.values()]
    blob = "\n".join(decoded)
    assert not leaks(blob), f"a secret reached the bus: {leaks(blob)}"
    # Positive control: the redacted forms did travel (so the checks above looked at the right data).
    assert blob.count("redacted:hmac:") >= 4 * n
    echoed = orjson.loads(results[0].responses["candidate"].body or b"{}")
    sent = {k.lower(): v for k, v in echoed["headers"]}
    assert sent["authorization"].startswith("redacted:hmac:") and sent["cookie"].startswith("redacted:hmac:")
    assert SECRETS["password"] not in echoed["body"] and "redacted:hmac:" in echoed["body"]

    # The divergence store (every result diverged: the backends answer "who" differently).
    raw_store = b"".join(p.read_bytes() for p in tmp_path.glob("diffs.db*"))
    assert b"redacted:hmac:" in raw_store or b"cmVkYWN0ZWQ6aG1hYz" in raw_store
    assert not leaks(raw_store.decode("latin-1")), "a secret is in the divergence store"
    for b64 in (base64.b64encode(s.encode()).decode()[:16] for s in SECRETS.values()):
        assert b64 not in raw_store.decode("latin-1")

    # The web page's API, served from the stored divergences by a fresh compare process.
    page = Stage("compare", ["--group", f"page-{uuid.uuid4().hex[:6]}"], tmp_path,
                 config=tmp_path / "cfg.toml", bus=bus)
    try:
        page.wait_ready()
        base = f"http://127.0.0.1:{page.metrics_port}"
        texts = []
        for path in ("/", "/api/endpoints", "/api/totals"):
            status, body = http_get(base + path)
            assert status == 200, path
            texts.append(body.decode())
        endpoints = orjson.loads(texts[1])
        assert endpoints, "the page shows no divergence at all"
        for ep in endpoints:
            name = ep.get("endpoint") or ep.get("name")
            status, body = http_get(f"{base}/api/samples?endpoint={urllib.parse.quote(name)}")
            assert status == 200
            texts.append(body.decode())
            for sample in orjson.loads(body)[:3]:
                status, detail = http_get(f"{base}/api/divergences/{sample['id']}")
                assert status == 200
                texts.append(detail.decode())
        api = "\n".join(texts)
        assert "redacted:hmac:" in api, "positive control: the detail shows the redacted request"
        assert not leaks(api), f"a secret is on the page: {leaks(api)}"
    finally:
        page.stop()

    # Logs, at DEBUG, of both processes.
    logs = run.log() + page.log()
    assert "DEBUG" in logs
    assert not leaks(logs), f"a secret is in the logs: {leaks(logs)}"


# -- loopback by default --------------------------------------------------------------------


def test_listeners_bind_loopback_by_default() -> None:
    from shadowreplay.app import STAGES, metrics_listen

    cfg = Config()
    for stages in [STAGES, *((stage,) for stage in STAGES)]:  # /metrics, and the page unless web.listen is set
        assert metrics_listen(cfg, stages).startswith("127.0.0.1:")
    assert cfg.comparer.web.listen == ""
    assert cfg.collector.listen.startswith("127.0.0.1:")
    example = (Path(__file__).resolve().parents[2] / "shadowreplay" / "example.toml").read_text()
    assert "0.0.0.0" not in example.split("[metrics]")[-1].split("\n[")[0]

