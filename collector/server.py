"""The collector's asyncio server: forward-protocol connections → RequestRecords on the bus.

Per connection: read → ``ForwardDecoder.feed`` → each event through the log format →
publish. A frame that asks for an ack (``option.chunk``) is acknowledged only after
``publish_and_flush`` has returned, i.e. after its records (and everything published
before them on this connection) are durable on the bus. Frames without a chunk are
batched and flushed before any ack, every ``FLUSH_RECORDS`` records, at most
``FLUSH_SECONDS`` after the oldest one arrived, and when the connection closes.

A failed publish closes the connection without an ack (the client resends); a fatal
decode error closes only its own connection; skipped events and refused frames are
counted and logged once per connection and reason.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from types import TracebackType
from typing import Any

from collector.formats import LogFormat, make_format
from collector.forward import ForwardDecoder, Frame, encode_ack
from collector.metrics import CollectorMetrics
from shadowreplay.bus.aio import AsyncProducer
from shadowreplay.config import CollectorConfig, parse_hostport
from shadowreplay.errors import DecodeError
from shadowreplay.record import encode_request

log = logging.getLogger(__name__)

READ_BYTES = 256 * 1024
FLUSH_RECORDS = 1000
FLUSH_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0

Item = tuple[bytes | None, bytes, int | None]


class _BusFailed(Exception):
    """Publishing failed; the connection closes without acknowledging."""


class CollectorServer:
    """Listens on ``config.listen`` and publishes one RequestRecord per logged request."""

    def __init__(
        self,
        config: CollectorConfig,
        producer: AsyncProducer,
        topic: str,
        metrics: CollectorMetrics,
    ) -> None:
        self._config = config
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._format = make_format(config.format, config.fields)
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[Any], _Connection] = {}
        self._refused = 0

    @property
    def port(self) -> int:
        """The bound TCP port (useful when ``listen`` asked for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("collector server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        host, port = parse_hostport(self._config.listen, "collector.listen")
        self._server = await asyncio.start_server(self._on_connect, host, port, limit=READ_BYTES)
        log.info("collector listening on %s:%d", host, self.port)

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Stop accepting, let chunks being processed finish (flushed and acked), then
        close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._conns.values()):
            conn.stop()
        tasks = list(self._conns)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> CollectorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        metrics = self._metrics
        if len(self._conns) >= self._config.max_connections or self._server is None:
            metrics.connections_refused.inc()
            if self._refused % 1000 == 0:
                log.warning(
                    "refusing a connection: %d connections open (collector.max_connections=%d); %d refused so far",
                    len(self._conns),
                    self._config.max_connections,
                    self._refused + 1,
                )
            self._refused += 1
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(self, reader, writer, task)
        self._conns[task] = conn
        metrics.connections.inc()
        metrics.connections_active.inc()
        try:
            await conn.run()
        finally:
            metrics.connections_active.dec()
            del self._conns[task]


class _Connection:
    def __init__(
        self,
        server: CollectorServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[Any],
    ) -> None:
        self._server = server
        self._metrics = server._metrics
        self._format: LogFormat = server._format
        self._reader = reader
        self._writer = writer
        self._task = task
        peer = writer.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._decoder = ForwardDecoder(max_frame_bytes=server._config.max_chunk_bytes)
        self._pending: list[Item] = []
        self._pending_since = 0.0
        self._reading = False
        self._stopping = False
        self._logged: set[str] = set()
        self._rejected: dict[str, Any] = {}

    def stop(self) -> None:
        """Finish the data in hand, then close; a connection waiting for data closes now."""
        self._stopping = True
        if self._reading:
            self._task.cancel()

    async def run(self) -> None:
        bus_failed = False
        try:
            await self._serve()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            self._task.uncancel()
        except DecodeError as exc:
            self._metrics.decode_errors.labels(exc.reason).inc()
            log.warning("closing connection from %s: %s (%s)", self._peer, exc, exc.reason)
        except _BusFailed:
            bus_failed = True
        except ConnectionError as exc:
            log.debug("connection from %s lost: %r", self._peer, exc)
        finally:
            try:
                if self._pending and not bus_failed:
                    await self._flush()
            except _BusFailed:
                pass
            finally:
                await self._close()

    async def _serve(self) -> None:
        decoder = self._decoder
        metrics = self._metrics
        while not self._stopping:
            data = await self._read()
            if data is None:  # the flush deadline passed while waiting
                await self._flush()
                continue
            if not data:
                decoder.eof()
                return
            metrics.received_bytes.inc(len(data))
            for frame in decoder.feed(data):
                await self._on_frame(frame)
            if decoder.failed is not None:
                raise decoder.failed
            if self._pending and (
                len(self._pending) >= FLUSH_RECORDS
                or asyncio.get_running_loop().time() - self._pending_since >= FLUSH_SECONDS
            ):
                await self._flush()

    async def _read(self) -> bytes | None:
        self._reading = True
        try:
            if not self._pending:
                return await self._reader.read(READ_BYTES)
            left = self._pending_since + FLUSH_SECONDS - asyncio.get_running_loop().time()
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(left):
                    return await self._reader.read(READ_BYTES)
            except TimeoutError:
                return None
        finally:
            self._reading = False

    async def _on_frame(self, frame: Frame) -> None:
        metrics = self._metrics
        metrics.frames.labels(frame.mode).inc()
        if frame.error is not None:
            self._reject(frame.error.reason, 1, str(frame.error))
            return
        if frame.errors:
            for reason, n in collections.Counter(frame.errors).items():
                self._reject(reason, n, f"{frame.mode} frame with tag {frame.tag!r}")
        if frame.signal != 0:
            if frame.events:
                self._reject("not_logs", len(frame.events), f"fluent_signal {frame.signal}")
        elif frame.events:
            items = self._records(frame)
            if items:
                if not self._pending:
                    self._pending_since = asyncio.get_running_loop().time()
                self._pending.extend(items)
        if frame.chunk is not None:
            await self._flush()
            self._writer.write(encode_ack(frame.chunk))
            await self._writer.drain()
            metrics.chunks_acked.inc()
        elif len(self._pending) >= FLUSH_RECORDS:
            await self._flush()

    def _records(self, frame: Frame) -> list[Item]:
        to_request = self._format.to_request
        tag = frame.tag
        items: list[Item] = []
        append = items.append
        bad: dict[str, int] | None = None
        for time_ns, rec in frame.events:
            try:
                record = to_request(tag, time_ns, rec)
                append((record.partition_key(), encode_request(record), record.ts))
            except DecodeError as exc:
                bad = bad or {}
                bad[exc.reason] = bad.get(exc.reason, 0) + 1
            except (TypeError, UnicodeEncodeError):  # orjson: text that is not valid UTF-8
                bad = bad or {}
                bad["bad_encoding"] = bad.get("bad_encoding", 0) + 1
        if bad:
            for reason, n in bad.items():
                self._reject(reason, n, f"log records with tag {tag!r}")
        return items

    async def _flush(self) -> None:
        items, self._pending = self._pending, []
        if not items:
            return
        try:
            await self._server._producer.publish_and_flush(self._server._topic, items)
        except Exception as exc:  # any backend failure: count, log, close without ack
            self._metrics.bus_errors.inc()
            log.error(
                "publishing %d records from %s failed, closing the connection without ack: %r",
                len(items),
                self._peer,
                exc,
            )
            raise _BusFailed() from exc
        self._metrics.records.inc(len(items))

    def _reject(self, reason: str, n: int, what: str) -> None:
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self._metrics.rejected.labels(reason)
        child.inc(n)
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("skipped %d from %s: %s (%s); further ones are only counted", n, self._peer, what, reason)

    async def _close(self) -> None:
        writer = self._writer
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass

