"""Real access logs, end to end: real nginx (docs/ingest.md's LTSV log_format with its default
escaping, and ``combined``) and real Apache write the logs, ``shadowreplay tail`` ships
them to a real collector, the replayer sends the records to a raw-socket backend — and
the bytes that arrive are the bytes the client sent to the web server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from collector_harness import collectors, read_messages
from ingest_peers import RawBackend, TailThread, send_raw, start_apache, start_nginx, tail_options, wait_for_lines
from shadowreplay.replayer.loop import Replayer
from shadowreplay.replayer.metrics import ReplayerMetrics
from shadowreplay.replayer.schedule import Anchor
from shadowreplay.contract.bus.aio import AsyncConsumer, AsyncProducer
from shadowreplay.contract.bus.base import Bus
from shadowreplay.contract.config import ReplayerConfig
from shadowreplay.contract.record import RequestRecord, to_bytes
from timing import production_gc

pytestmark = pytest.mark.integration

REQUESTS_TOPIC = "shadow.requests"
RESULTS_TOPIC = "shadow.results"


@dataclass(frozen=True)
class Sent:
    method: str
    target: bytes
    agent: bytes
    body: bytes = b""

    def raw(self) -> bytes:
        head = b"%s %s HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: %s\r\nConnection: close\r\n" % (
            self.method.encode(), self.target, self.agent
        )
        if self.method == "POST":
            head += b"Content-Length: %d\r\n" % len(self.body)
        return head + b"\r\n" + self.body


# What clients really send: bytes that are not UTF-8 in the target and User-Agent, quotes
# and backslashes, a control byte, a 9-byte JSON body and a 256-byte binary body, and the
# same request twice.
NGINX_REQUESTS = [
    Sent("GET", b'/caf\xe9?x=\xff&q="a"&q=b', b'M\xe4rz "quoted" \\ \x01 end'),
    Sent("GET", b"/search?q=caf\xc3\xa9&q=%C3%A9", b"Mozilla/5.0 (X11; Linux x86_64) \xe2\x80\x93 r\xc3\xa9sum\xc3\xa9"),
    Sent("POST", b"/api/items", b"curl/8.0", b'{"a":"b"}'),
    Sent("POST", b"/api/upload?kind=bin", b"uploader \xff\xfe", bytes(range(256))),
    Sent("GET", b"/same?again=1", b"twice"),
    Sent("GET", b"/same?again=1", b"twice"),
]


async def _replay(bus: Bus, first_ts: int, url: str) -> Replayer:
    bus.ensure_topic(RESULTS_TOPIC, 2)
    cfg = ReplayerConfig(candidate=url, methods=("GET", "POST"), speed=1000.0, concurrency=4, idle_exit_seconds=0.5)
    consumer = AsyncConsumer(bus, [REQUESTS_TOPIC], "replay-test")
    producer = AsyncProducer(bus)
    replayer = Replayer(
        cfg, consumer, producer, RESULTS_TOPIC, ReplayerMetrics(CollectorRegistry()),
        anchor=Anchor(log_t0_ns=first_ts, wall_t0_ns=time.time_ns(), speed=1000.0),
    )
    try:
        with production_gc():
            await asyncio.wait_for(replayer.run(asyncio.Event()), timeout=30)
    finally:
        await consumer.close()
        await producer.close()
    return replayer


@pytest.mark.parametrize("fmt", ["ltsv", "combined"])
async def test_nginx_logs_keep_every_byte_from_client_to_replay(tmp_path: Path, fmt: str) -> None:
    nginx, ltsv_log, combined_log = start_nginx(tmp_path)
    try:
        for req in NGINX_REQUESTS:
            assert send_raw(nginx.port, req.raw()).startswith(b"HTTP/1.1 200")
        lines = wait_for_lines(ltsv_log if fmt == "ltsv" else combined_log, len(NGINX_REQUESTS))
    finally:
        nginx.stop()
    # nginx's default escaping is really in the log: a quote is \x22, a byte 0xE9 is \xE9.
    assert b"\\x22" in lines[0] and b"\\xE9" in lines[0]

    backend = await RawBackend().start()
    async with collectors(tmp_path) as start:
        collector = await start(format=fmt)
        tail = TailThread(tail_options([ltsv_log if fmt == "ltsv" else combined_log], collector.port, fmt,
                                       tmp_path / "tail.state"))
        try:
            await tail.until(lambda t: t.stats.lines == len(NGINX_REQUESTS), "every line shipped")
        finally:
            await tail.stop()
        assert tail.tail.stats.rejected == {}
        got = await read_messages(collector.bus, len(NGINX_REQUESTS), "check")
        records = sorted((r for r, _ in got), key=lambda r: r.ts)
        assert len(records) == len(NGINX_REQUESTS)
        # Each line its own id, the two identical requests included.
        assert len({r.id for r in records}) == len(NGINX_REQUESTS)
        for sent, rec in zip(NGINX_REQUESTS, records, strict=True):
            assert rec.method == sent.method
            assert to_bytes(rec.target) == sent.target
            assert to_bytes(rec.header("User-Agent") or "") == sent.agent
            if fmt == "ltsv" and sent.body:  # docs/ingest.md's LTSV format logs $request_body
                assert rec.body == sent.body and len(rec.body) in (9, 256)

        await _replay(collector.bus, records[0].ts, backend.url)
    await backend.close()

    by_id = {r.header(b"X-Shadow-Replay"): r for r in backend.received}
    assert len(backend.received) == len(NGINX_REQUESTS) and len(by_id) == len(NGINX_REQUESTS)
    for sent, rec in zip(NGINX_REQUESTS, records, strict=True):
        arrived = by_id[rec.id.encode()]
        assert arrived.request_line == b"%s %s HTTP/1.1" % (sent.method.encode(), sent.target)
        assert arrived.header(b"User-Agent") == sent.agent
        if fmt == "ltsv":
            assert arrived.body == sent.body


APACHE_REQUESTS = [
    (b'/caf\xe9?x=\xff&q="a"', b"http://ref.example/\xc3\xa9t\xc3\xa9?s=\xe4", b'M\xe4rz "quoted" \\ \t end'),
    (b"/index.html", b"-", b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36"),
    (b"/r\xc3\xa9sum\xc3\xa9%20x?a=1&a=2", b"https://www.example.com/search?q=\"x\"", b"agent \\\\ two backslashes"),
]


async def test_apache_combined_log_keeps_every_byte(tmp_path: Path) -> None:
    apache, log = start_apache(tmp_path)
    try:
        for target, referer, agent in APACHE_REQUESTS:
            raw = b"GET %s HTTP/1.1\r\nHost: h\r\nUser-Agent: %s\r\n" % (target, agent)
            if referer != b"-":
                raw += b"Referer: %s\r\n" % referer
            send_raw(apache.port, raw + b"Connection: close\r\n\r\n")
        lines = wait_for_lines(log, len(APACHE_REQUESTS))
    finally:
        apache.stop()
    # Apache's own escaping is in the log: \xe9 (lowercase), \" and \\ and \t.
    assert b"\\xe9" in lines[0] and b'\\"quoted\\"' in lines[0] and b"\\\\ \\t end" in lines[0]

    async with collectors(tmp_path) as start:
        collector = await start(format="combined")
        tail = TailThread(tail_options([log], collector.port, "combined", tmp_path / "tail.state"))
        try:
            await tail.until(lambda t: t.stats.lines == len(APACHE_REQUESTS), "every line shipped")
        finally:
            await tail.stop()
        got = await read_messages(collector.bus, len(APACHE_REQUESTS), "check")
    records: dict[bytes, RequestRecord] = {to_bytes(r.target): r for r, _ in got}
    assert len(records) == len(APACHE_REQUESTS)
    for target, referer, agent in APACHE_REQUESTS:
        rec = records[target]
        assert to_bytes(rec.header("User-Agent") or "") == agent
        assert rec.header("Referer") is None if referer == b"-" else to_bytes(rec.header("Referer") or "") == referer


# -- a real-looking combined log, shuffled: every line accounted for -------------------------

FIXTURE = Path(__file__).parent.parent / "data" / "access_combined.log"


async def test_shuffled_combined_log_every_line_accounted(tmp_path: Path) -> None:
    import random

    lines = [line for line in FIXTURE.read_bytes().splitlines() if line and not line.startswith(b"#")]
    random.Random(17).shuffle(lines)  # log order is not time order
    log = tmp_path / "access.log"
    log.write_bytes(b"\n".join(lines) + b"\n")
    expected_rejects = {
        "bad_request_line": sum(b'"\\x16\\x03' in ln or b'"MGLNDD_' in ln for ln in lines),
        "missing_method": sum(b'] "-" 400' in ln for ln in lines),
        "bad_time": sum(b"[31/Feb/" in ln for ln in lines),
        "bad_combined": sum(ln.startswith(b"garbage") for ln in lines),
    }
    shipped = len(lines) - sum(expected_rejects.values())
    metrics_file = tmp_path / "tail.prom"

    async with collectors(tmp_path) as start:
        collector = await start(format="combined")
        tail = TailThread(tail_options([log], collector.port, "combined", tmp_path / "tail.state", batch_lines=13,
                                       metrics_file=str(metrics_file)))
        try:
            await tail.until(lambda t: t.stats.lines + t.stats.rejected_total == len(lines), "every line counted")
        finally:
            await tail.stop()
        stats = tail.tail.stats
        assert stats.rejected == {k: v for k, v in expected_rejects.items() if v}
        assert stats.lines == shipped and stats.unreported_chunks == 0
        # The collector counted the same rejects it reported back.
        for reason in ("bad_request_line", "missing_method"):
            assert collector.metric("shadow_collector_rejected_total", reason=reason) == expected_rejects[reason]
        got = await read_messages(collector.bus, shipped, "check")
    records = [r for r, _ in got]
    assert len(records) == shipped
    assert len({r.id for r in records}) == shipped  # identical lines included: one id each
    # Escapes came back as the bytes they stand for (lines written by hand below).
    agents = Counter(to_bytes(r.header("User-Agent") or "") for r in records)
    assert agents[b"Mozilla/5.0 (compatible; Konqueror/3.5; Linux) KHTML/3.5.10 (like Gecko) (Debian) \xe4\xf6\xfc"] == 1
    assert agents[b'curl/7.68.0 "quoted" \\ x'] == 1
    assert agents[b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) \xe2\x80\x94 Safari"] == 2
    targets = {to_bytes(r.target) for r in records}
    assert b"/wiki/K\xf6ln?redirect=no" in targets and b"/search?q=\"caf\xc3\xa9\"" in targets
    text = metrics_file.read_text()
    assert f"shadow_tail_lines_shipped_total {shipped}" in text
    assert f'shadow_tail_lines_rejected_total{{reason="bad_request_line"}} {expected_rejects["bad_request_line"]}' in text


# -- nginx JSON through the tail: the collector's rejects come back to the tail ---------------


async def test_collector_rejects_are_reported_to_tail_never_shipped(tmp_path: Path) -> None:
    import json

    good = {"msec": "1700000000.100", "remote_addr": "10.0.0.1", "request_method": "GET", "request_uri": "/a"}
    lines = [
        json.dumps(good),
        json.dumps({**good, "request_method": "G\u00c9T"}),  # not a method: bad_method at the collector
        json.dumps({"msec": "1700000000.2", "remote_addr": "10.0.0.1", "request": "\u0016\u0003\u0001"}),
        json.dumps({"msec": "1700000000.3", "remote_addr": "10.0.0.1"}),  # nothing to replay: missing_method
        json.dumps({**good, "msec": "yesterday"}),  # unreadable time: the tail's bad_time, never "now"
        json.dumps({k: v for k, v in good.items() if k != "msec"}),  # no time: missing_time
        json.dumps(good),  # the same line again: shipped, its own id
        "{not json",
    ]
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n")
    async with collectors(tmp_path) as start:
        collector = await start()
        tail = TailThread(tail_options([log], collector.port, "nginx_json", tmp_path / "tail.state"))
        try:
            await tail.until(lambda t: t.stats.lines + t.stats.rejected_total == len(lines), "every line counted")
        finally:
            await tail.stop()
        got = await read_messages(collector.bus, 2, "check")
    stats = tail.tail.stats
    assert stats.lines == 2 and len({r.id for r, _ in got}) == 2
    assert stats.rejected == {
        "bad_method": 1, "bad_request_line": 1, "missing_method": 1, "bad_time": 1, "missing_time": 1, "bad_json": 1,
    }
    assert stats.summary() == (
        "2 lines shipped in 1 chunks, 6 rejected (bad_json: 1, bad_method: 1, bad_request_line: 1, "
        "bad_time: 1, missing_method: 1, missing_time: 1)"
    )


# -- ids survive a re-ship; both HTTP clients are honest about bytes --------------------------


async def test_reshipping_a_log_gives_the_same_ids(tmp_path: Path) -> None:
    # At-least-once: a tail that lost its state ships the file again, chunked differently
    # (another batch size). Every line must come back with the id it had, identical lines
    # included, so the duplicates are detectable as such.
    lines = [line for line in FIXTURE.read_bytes().splitlines() if line and not line.startswith(b"#")]
    log = tmp_path / "access.log"
    log.write_bytes(b"\n".join(lines) + b"\n")
    ids: list[list[str]] = []
    async with collectors(tmp_path) as start:
        for run, batch in enumerate((7, 10)):
            collector = await start(format="combined")
            tail = TailThread(tail_options([log], collector.port, "combined", tmp_path / f"state{run}", batch_lines=batch))
            try:
                await tail.until(lambda t: t.stats.lines + t.stats.rejected_total == len(lines), "every line counted")
            finally:
                await tail.stop()
            got = await read_messages(collector.bus, tail.tail.stats.lines, "check")
            ids.append(sorted(r.id for r, _ in got))
    assert ids[0] == ids[1] and len(set(ids[0])) == len(ids[0])


async def test_the_client_sends_bytes_that_are_not_utf8_as_logged() -> None:
    from shadowreplay.replayer.client import TargetClient

    backend = await RawBackend().start()
    record = RequestRecord(
        id="r1", ts=1, method="GET", target="/caf\udce9?q=\udcff", headers=(("User-Agent", "M\udce4rz"),)
    )
    plain = RequestRecord(id="r2", ts=1, method="GET", target="/café", headers=(("User-Agent", "März"),))
    try:
        client = TargetClient("candidate", backend.url, timeout_seconds=5, max_body_bytes=1024, concurrency=1)
        await client.start()
        try:
            answer = await client.send(record)
            other = await client.send(plain)
        finally:
            await client.close()
        assert answer.status == 200 and other.status == 200, (answer.error, other.error)
    finally:
        await backend.close()
    lines = [(r.request_line, r.header(b"User-Agent")) for r in backend.received]
    assert lines == [
        (b"GET /caf\xe9?q=\xff HTTP/1.1", b"M\xe4rz"),
        (b"GET /caf\xc3\xa9 HTTP/1.1", b"M\xc3\xa4rz"),
    ]
