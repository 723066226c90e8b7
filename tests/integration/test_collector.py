"""The collector against real clients (fluent-logger, raw sockets) and the real SQLite bus."""

from __future__ import annotations

import asyncio
import gzip
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fluent import sender
from prometheus_client import CollectorRegistry

from shadowreplay.collector.metrics import CollectorMetrics
from shadowreplay.collector.server import CollectorServer
from collector_harness import TOPIC, RunningCollector, collectors, read_messages
from shadowreplay.contract.bus import Bus, open_bus
from shadowreplay.contract.bus.aio import AsyncProducer
from shadowreplay.contract.config import CollectorConfig
from shadowreplay.contract.errors import BusError
from shadowreplay.contract.record import RequestRecord
from waiting import DEADLINE_SECONDS, until

pytestmark = pytest.mark.integration

BASE_NS = 1464845619_123450040


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[RunningCollector]:
    async with collectors(tmp_path, partitions=3) as start:
        yield await start(max_chunk_bytes=4 * 1024 * 1024)


def nginx_record(i: int, **over: Any) -> dict[str, Any]:
    rec = {
        "request_id": f"req-{i:06d}",
        "remote_addr": f"10.0.{i % 7}.{i % 200}",
        "request_method": "GET",
        "request_uri": f"/items/{i}?q=a&q=b",
        "server_protocol": "HTTP/1.1",
        "scheme": "https",
        "host": "shop.example.com",
        "status": "200",
        "body_bytes_sent": str(100 + i),
        "request_time": "0.004",
        "request_body": "",
        "http_user_agent": "curl/8.0",
        "http_x_forwarded_for": "6.6.6.6",
    }
    rec.update(over)
    return rec


def event_time(ns: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", *divmod(ns, 1_000_000_000)))


def packb(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def packed_frame(tag: str, ids: Sequence[int], chunk: str, *, gzip_members: int = 0) -> bytes:
    blob = b"".join(packb([event_time(BASE_NS + i), nginx_record(i)]) for i in ids)
    option: dict[str, Any] = {"chunk": chunk, "size": len(ids)}
    if gzip_members:
        step = -(-len(blob) // gzip_members)
        blob = b"".join(gzip.compress(blob[k : k + step]) for k in range(0, len(blob), step))
        option["compressed"] = "gzip"
    # Fluentd's out_forward: the blob as str32 although it holds binary.
    return b"\x93" + packb(tag) + b"\xdb" + struct.pack(">I", len(blob)) + blob + packb(option)


async def read_ack(reader: asyncio.StreamReader) -> Any:
    unpacker = msgpack.Unpacker(raw=True)
    async with asyncio.timeout(DEADLINE_SECONDS):
        while True:
            data = await reader.read(4096)
            assert data, "connection closed before the ack"
            unpacker.feed(data)
            for obj in unpacker:
                return obj


async def consume(bus: Bus, want: int, group: str = "test") -> list[tuple[RequestRecord, int]]:
    return await read_messages(bus, want, group)


async def test_fluent_logger_message_mode(collector: RunningCollector) -> None:
    n = 1200

    def send_all() -> None:
        s = sender.FluentSender("nginx", host="127.0.0.1", port=collector.port, nanosecond_precision=True)
        try:
            for i in range(n):
                ok = s.emit_with_time("access", sender.EventTime.from_unix_nano(BASE_NS + i), nginx_record(i))
                assert ok, s.last_error
        finally:
            s.close()

    await asyncio.to_thread(send_all)
    got = await consume(collector.bus, n)
    assert len(got) == n
    by_id = {r.id: (r, ts) for r, ts in got}
    assert len(by_id) == n
    for i in (0, 1, 599, n - 1):
        r, ts = by_id[f"req-{i:06d}"]
        assert r.ts == ts == BASE_NS + i  # exact nanoseconds, on the record and the bus
        assert r.tag == "nginx.access"
        assert (r.method, r.target, r.host, r.scheme) == ("GET", f"/items/{i}?q=a&q=b", "shop.example.com", "https")
        assert r.client == f"10.0.{i % 7}.{i % 200}"
        assert ("X-Forwarded-For", "6.6.6.6") in r.headers and r.header("user-agent") == "curl/8.0"
        assert r.origin is not None and (r.origin.status, r.origin.bytes) == (200, 100 + i)
    assert collector.metric("shadow_collector_records_total") == n
    assert collector.metric("shadow_collector_frames_total", mode="message") == n
    assert collector.metric("shadow_collector_chunks_acked_total") == 0


async def test_chunks_are_acked_after_records_are_on_the_bus(collector: RunningCollector) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", collector.port)
    chunk = "p8n9gmxTQVC8/nh2wlKKeQ==\n"
    writer.write(packed_frame("web", range(0, 500), chunk))
    await writer.drain()
    assert await read_ack(reader) == {b"ack": chunk.encode()}
    # The ack promised durability: the records are readable right now (want=0: read to
    # the end of the log as it is at this moment, without waiting for any).
    got = await consume(collector.bus, 0, group="g1")
    assert sorted(r.ts for r, _ in got) == [BASE_NS + i for i in range(500)]
    assert all(r.ts == ts for r, ts in got)

    # Compressed (several gzip members), then Forward mode with a bin chunk id.
    writer.write(packed_frame("web", range(500, 900), "c2", gzip_members=3))
    await writer.drain()
    assert await read_ack(reader) == {b"ack": b"c2"}
    entries = [[event_time(BASE_NS + i), nginx_record(i)] for i in range(900, 1000)]
    writer.write(packb(["web", entries, {"chunk": b"\x00bin-id"}]))
    await writer.drain()
    raw_ack = await read_ack(reader)
    assert raw_ack == {b"ack": b"\x00bin-id"}
    writer.close()
    await writer.wait_closed()

    got = await consume(collector.bus, 1000, group="g2")
    assert sorted(r.ts for r, _ in got) == [BASE_NS + i for i in range(1000)]
    assert collector.metric("shadow_collector_chunks_acked_total") == 3
    assert collector.metric("shadow_collector_frames_total", mode="compressed") == 1


async def test_bad_events_skipped_and_counted_neighbours_acked(collector: RunningCollector) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", collector.port)
    entries = [
        [event_time(BASE_NS + 1), nginx_record(1)],
        ["not a time", nginx_record(2)],
        [event_time(BASE_NS + 3), "not a map"],
        [event_time(BASE_NS + 4), nginx_record(4, request_method="-")],
        [event_time(BASE_NS + 5), nginx_record(5)],
    ]
    # A header value that is not UTF-8 (str type holding raw bytes) is no reason to
    # refuse a request: it goes on the bus with its exact bytes (record v2, "raw").
    not_utf8 = msgpack.packb([event_time(BASE_NS + 6), nginx_record(6, http_user_agent=b"\xff\xfe")], use_bin_type=False)
    frame = (
        b"\x93"
        + packb("web")
        + b"\x96"  # array of the 5 entries above and not_utf8
        + b"".join(packb(e) for e in entries)
        + not_utf8
        + packb({"chunk": "bad-ones"})
    )
    writer.write(b"\xc0" + frame)
    await writer.drain()
    assert await read_ack(reader) == {b"ack": b"bad-ones"}
    writer.close()
    await writer.wait_closed()
    got = await consume(collector.bus, 3)
    assert sorted(r.id for r, _ in got) == ["req-000001", "req-000005", "req-000006"]
    six = next(r for r, _ in got if r.id == "req-000006")
    assert (six.header("User-Agent") or "").encode("utf-8", "surrogateescape") == b"\xff\xfe"
    for reason in ("bad_time", "bad_record", "missing_method"):
        assert collector.metric("shadow_collector_rejected_total", reason=reason) == 1
    assert collector.metric("shadow_collector_rejected_total", reason="bad_encoding") == 0


async def test_malformed_connection_loses_no_good_records(collector: RunningCollector) -> None:
    good1 = await asyncio.open_connection("127.0.0.1", collector.port)
    good2 = await asyncio.open_connection("127.0.0.1", collector.port)
    bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", collector.port)
    heartbeat = await asyncio.open_connection("127.0.0.1", collector.port)
    heartbeat[1].close()

    good1[1].write(packed_frame("a", range(0, 300), "a1"))
    # A valid frame, then bytes that are no msgpack at all.
    bad_writer.write(packed_frame("b", range(10_000, 10_010), "b1") + b"\xc1\xc1\xc1garbage")
    good2[1].write(packed_frame("c", range(300, 600), "c1"))
    good1[1].write(packed_frame("a", range(600, 900), "a2"))
    for w in (good1[1], bad_writer, good2[1]):
        await w.drain()

    assert await read_ack(good1[0]) == {b"ack": b"a1"}
    assert await read_ack(good2[0]) == {b"ack": b"c1"}
    # The damaged connection gets the ack of its valid frame, then is closed.
    assert await read_ack(bad_reader) == {b"ack": b"b1"}
    async with asyncio.timeout(DEADLINE_SECONDS):
        assert await bad_reader.read() == b""
    # The others go on.
    assert await read_ack(good1[0]) == {b"ack": b"a2"}
    good2[1].write(packed_frame("c", range(900, 1000), "c2"))
    assert await read_ack(good2[0]) == {b"ack": b"c2"}
    for w in (good1[1], good2[1], bad_writer):
        w.close()

    got = await consume(collector.bus, 1010)
    ids = sorted(int(r.id[4:]) for r, _ in got)
    assert ids == list(range(1000)) + list(range(10_000, 10_010))
    assert collector.metric("shadow_collector_decode_errors_total", reason="msgpack") == 1
    assert collector.metric("shadow_collector_decode_errors_total", reason="truncated") == 0
    assert collector.metric("shadow_collector_chunks_acked_total") == 5
    assert collector.metric("shadow_collector_connections_total") == 4


async def test_oversized_chunk_refused_without_ack(collector: RunningCollector) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", collector.port)
    huge = packb(["web", b"\x00" * (8 * 1024 * 1024), {"chunk": "too-big"}])
    writer.write(huge)
    with pytest.raises((ConnectionError, AssertionError)):
        # The server closes the connection; the client may see a reset mid-write.
        await writer.drain()
        await read_ack(reader)
    writer.close()
    assert collector.metric("shadow_collector_decode_errors_total", reason="chunk_too_large") == 1
    assert collector.metric("shadow_collector_chunks_acked_total") == 0


async def test_unacked_frames_are_flushed_without_closing(collector: RunningCollector) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", collector.port)
    writer.write(b"".join(packb(["app", event_time(BASE_NS + i), nginx_record(i)]) for i in range(10)))
    await writer.drain()
    # The connection stays open; the records still reach the bus within the flush interval.
    got = await consume(collector.bus, 10)
    assert sorted(r.id for r, _ in got) == [f"req-{i:06d}" for i in range(10)]
    writer.close()


class FailingProducer:
    """Test double: a bus whose first ``failures`` publishes fail (by default every one)."""

    def __init__(self, failures: int | None = None) -> None:
        self.calls = 0
        self.failures = failures

    async def publish_and_flush(self, topic: str, items: Sequence[Any], timeout_seconds: float = 30.0) -> None:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise BusError("disk full", retriable=True)


async def test_bus_failure_closes_connection_without_ack() -> None:
    registry = CollectorRegistry()
    producer = FailingProducer()
    config = CollectorConfig(listen="127.0.0.1:0")
    async with CollectorServer(config, producer, TOPIC, CollectorMetrics(registry)) as server:  # type: ignore[arg-type]
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(packed_frame("web", range(5), "never-acked"))
        await writer.drain()
        async with asyncio.timeout(DEADLINE_SECONDS):
            assert await reader.read() == b""  # closed, no ack
        writer.close()
    assert producer.calls == 1
    assert registry.get_sample_value("shadow_collector_bus_errors_total") == 1
    assert registry.get_sample_value("shadow_collector_chunks_acked_total") == 0


async def test_bus_outage_is_logged_once_and_its_end_too(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    producer = FailingProducer(failures=3)
    config = CollectorConfig(listen="127.0.0.1:0")
    caplog.set_level(logging.INFO, logger="shadowreplay.collector.server")
    async with CollectorServer(config, producer, TOPIC, CollectorMetrics(registry)) as server:  # type: ignore[arg-type]
        for attempt in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(packed_frame("web", range(5), f"chunk-{attempt}"))
            await writer.drain()
            async with asyncio.timeout(DEADLINE_SECONDS):
                if attempt < 3:
                    assert await reader.read() == b""  # refused: closed without ack
                else:
                    assert await read_ack(reader) == {b"ack": b"chunk-3"}
            writer.close()
    assert registry.get_sample_value("shadow_collector_bus_errors_total") == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "without ack" in errors[0].getMessage(), [r.getMessage() for r in errors]
    recovered = [r.getMessage() for r in caplog.records if "the bus accepts records again after" in r.getMessage()]
    assert len(recovered) == 1 and "3 publishes were refused" in recovered[0]


async def test_stop_flushes_pending_records(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    producer = AsyncProducer(bus)
    registry = CollectorRegistry()
    server = CollectorServer(CollectorConfig(listen="127.0.0.1:0"), producer, TOPIC, CollectorMetrics(registry))
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(packb(["app", event_time(BASE_NS), nginx_record(0)]))
    await writer.drain()
    await until(lambda: registry.get_sample_value("shadow_collector_frames_total", {"mode": "message"}) == 1,
                "the collector to read the frame")
    await server.stop()
    async with asyncio.timeout(DEADLINE_SECONDS):
        assert await reader.read() == b""
    writer.close()
    got = await consume(bus, 1)
    assert [r.id for r, _ in got] == ["req-000000"]
    await producer.close()
    bus.close()


async def test_max_connections_refuses_extra_connections(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    producer = AsyncProducer(bus)
    config = CollectorConfig(listen="127.0.0.1:0", max_connections=1)
    async with CollectorServer(config, producer, TOPIC, CollectorMetrics(registry)) as server:
        first = await asyncio.open_connection("127.0.0.1", server.port)
        first[1].write(packb(["app", 1, nginx_record(1), {"chunk": "one"}]))
        assert await read_ack(first[0]) == {b"ack": b"one"}
        # Authenticated (a valid frame) and inside the next frame: its slot is not given away.
        two = packb(["app", 2, nginx_record(2), {"chunk": "two"}])
        first[1].write(two[:5])
        second = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(DEADLINE_SECONDS):
            assert await second[0].read() == b""
        second[1].close()
        first[1].write(two[5:])
        assert await read_ack(first[0]) == {b"ack": b"two"}
        first[1].close()
    assert registry.get_sample_value("shadow_collector_connections_refused_total", {"reason": "max_connections"}) == 1
    assert registry.get_sample_value("shadow_collector_connections_total") == 1
    await producer.close()
    bus.close()


class SlowProducer(AsyncProducer):
    """The real producer, made slow, noting when each flush has returned."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus)
        self.flushed = 0

    async def publish_and_flush(
        self, topic: str, items: Sequence[tuple[bytes | None, bytes, int | None]], timeout_seconds: float = 30.0
    ) -> None:
        await super().publish_and_flush(topic, items, timeout_seconds)
        await asyncio.sleep(0.3)
        self.flushed += len(items)


async def test_ack_waits_for_the_flush(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    producer = SlowProducer(bus)
    config = CollectorConfig(listen="127.0.0.1:0")
    async with CollectorServer(config, producer, TOPIC, CollectorMetrics(CollectorRegistry())) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # Unacked records first, then a chunk: the ack covers both.
        writer.write(packb(["app", event_time(BASE_NS), nginx_record(0)]))
        writer.write(packed_frame("web", range(1, 50), "slow"))
        assert await read_ack(reader) == {b"ack": b"slow"}
        assert producer.flushed == 50
        writer.close()
    await producer.close()
    bus.close()
