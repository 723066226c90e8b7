"""The collector's asyncio server: forward-protocol connections → RequestRecords on the bus.

Per connection: read → ``ForwardDecoder.feed`` → each event through the log format →
publish. A frame that asks for an ack (``option.chunk``) is acknowledged only after
its records (and everything published before them on this connection) are durable on
the bus: the connection waits for ``GroupCommit.commit`` (``collector/commit.py``),
which merges the flushes of connections that wait at the same time into one. Frames without a chunk are
batched and flushed before any ack, every ``FLUSH_RECORDS`` records, at most
``FLUSH_SECONDS`` after the oldest one arrived, and when the connection closes.

A failed publish closes the connection without an ack (the client resends); a fatal
decode error closes only its own connection; skipped events and refused frames are
counted and logged once per connection and reason.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, cast

import msgpack

from collector.commit import GroupCommit
from collector.formats import LogFormat, make_format
from collector.forward import ForwardDecoder, Frame, encode_ack
from collector.handshake import Handshake, Secrets
from collector.sequence import IngestClock, stamping
from collector.metrics import AUTH_REASONS, CollectorMetrics
from collector.tls import server_context
from shadowreplay.bus.aio import AsyncProducer
from shadowreplay.config import CollectorConfig, parse_hostport
from shadowreplay.errors import DecodeError

log = logging.getLogger(__name__)

READ_BYTES = 256 * 1024
FLUSH_RECORDS = 1000
FLUSH_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0
TLS_HANDSHAKE_SECONDS = 10.0
# A PING is a few hundred bytes; a client sending more before one is not speaking the protocol.
MAX_PING_BYTES = 64 * 1024
# Limits (config key → the decoder's reason when it is hit).
_LIMIT_REASONS = {"chunk_too_large": "max_chunk_bytes", "decompressed_too_large": "max_decompressed_bytes"}

Item = tuple[bytes | None, bytes, int | None]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _BusFailed(Exception):
    """Publishing failed; the connection closes without acknowledging."""


class CollectorServer:
    """Listens on ``config.listen`` and publishes one RequestRecord per logged request.

    Secrets named in ``config.security`` are read from ``environ`` (default: the process
    environment) here, so a missing one is a ConfigError before anything listens."""

    def __init__(
        self,
        config: CollectorConfig,
        producer: AsyncProducer,
        topic: str,
        metrics: CollectorMetrics,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._config = config
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._format = make_format(config.format, config.fields, config.redact)
        self._clock = IngestClock()  # stamps each record's seq (log order of equal times)
        self._commit = GroupCommit(producer, topic)
        security = config.security
        self._secrets: Secrets | None = None
        if security.shared_key_env:
            env = os.environ if environ is None else environ
            self._secrets = Secrets.from_config(security, env, socket.gethostname())
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(net, strict=False) for net in security.allow_networks
        )
        self._tls: ssl.SSLContext | None = server_context(config.tls)
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._conns: dict[asyncio.Task[Any], _Connection] = {}
        self._logged: set[str] = set()
        # A bus outage is logged when it starts and when it ends; the refusals in between
        # are counted (shadow_collector_bus_errors_total) and logged at DEBUG.
        self._bus_down_since: float | None = None
        self._bus_refusals = 0

    def bus_failed(self, records: int, peer: str, exc: BaseException) -> None:
        self._metrics.bus_errors.inc()
        self._bus_refusals += 1
        if self._bus_down_since is None:
            self._bus_down_since = time.monotonic()
            log.error(
                "publishing %d records from %s failed, closing the connection without ack (the client "
                "resends): %r; further failures are only counted in shadow_collector_bus_errors_total "
                "until the bus accepts records again",
                records, peer, exc,
            )
        else:
            log.debug("publishing %d records from %s failed, closing without ack: %r", records, peer, exc)

    def bus_ok(self) -> None:
        if self._bus_down_since is not None:
            log.warning(
                "the bus accepts records again after %.1fs; %d publishes were refused meanwhile "
                "(their clients resend them)",
                time.monotonic() - self._bus_down_since, self._bus_refusals,
            )
            self._bus_down_since = None
            self._bus_refusals = 0

    @property
    def port(self) -> int:
        """The bound TCP port (useful when ``listen`` asked for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("collector server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        host, port = parse_hostport(self._config.listen, "collector.listen")
        self._server = await asyncio.start_server(self._on_connect, host, port, limit=READ_BYTES)
        if self._config.udp_heartbeat:
            loop = asyncio.get_running_loop()
            try:
                self._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _Heartbeat(self), local_addr=(host, self.port)
                )
            except OSError as exc:
                log.warning("no UDP heartbeat on %s:%d: %s", host, self.port, exc)
        log.info(
            "collector listening on %s:%d (tls %s, shared key %s, udp heartbeat %s)",
            host,
            self.port,
            "on" if self._tls else "off",
            "on" if self._secrets else "off",
            "on" if self._udp else "off",
        )

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Stop accepting, let chunks being processed finish (flushed and acked), then
        close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
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

    def allowed(self, peer: Any) -> bool:
        """Whether a client at ``peer`` (a socket address) may connect."""
        if not self._networks:
            return True
        try:
            addr = ipaddress.ip_address(peer[0])
        except (TypeError, ValueError, IndexError):
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._networks)

    def limit_hit(self, limit: str, detail: str) -> None:
        """Count a hit of limit ``limit`` (its config key); log the first one per limit."""
        self._metrics.limit_hits.labels(limit).inc()
        self.warn_once(
            limit,
            f"limit collector.{limit} hit: {detail}; further hits are only counted "
            f"(shadow_collector_limit_hits_total{{limit={limit!r}}})",
        )

    def warn_once(self, what: str, message: str) -> None:
        """Log ``message`` as a warning the first time ``what`` happens, then at debug level."""
        if what in self._logged:
            log.debug("%s", message)
        else:
            self._logged.add(what)
            log.warning("%s", message)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Nothing may await before TLS starts (in _Connection.run): the client's first TLS
        # bytes would land in the plain-text reader.
        metrics = self._metrics
        peer = writer.get_extra_info("peername")
        if not self.allowed(peer):
            metrics.connections_refused.labels("not_allowed").inc()
            self.warn_once(
                "not_allowed",
                f"refused a connection from {_addr(peer)}: not in collector.security.allow_networks; "
                "further ones are only counted (shadow_collector_connections_refused_total)",
            )
            writer.transport.abort()
            return
        if len(self._conns) >= self._config.max_connections or self._server is None:
            metrics.connections_refused.labels("max_connections").inc()
            self.limit_hit("max_connections", f"{len(self._conns)} connections open")
            writer.transport.abort()
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


class _Heartbeat(asyncio.DatagramProtocol):
    """Fluentd ``heartbeat_type udp``: answer every datagram with one 0x00 byte."""

    def __init__(self, server: CollectorServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._transport is None or not self._server.allowed(addr):
            return
        self._server._metrics.udp_heartbeats.inc()
        self._transport.sendto(b"\x00", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp heartbeat: %r", exc)


def _addr(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class _Connection:
    def __init__(
        self,
        server: CollectorServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[Any],
    ) -> None:
        config = server._config
        self._server = server
        self._metrics = server._metrics
        self._format: LogFormat = server._format
        self._to_bus: Callable[[str, int, dict[Any, Any]], Item] = stamping(server._format.to_bus, server._clock)
        self._reader = reader
        self._writer = writer
        self._task = task
        self._peer = _addr(writer.get_extra_info("peername"))
        # The decoder maps each record to its bus item as it unpacks it (cache-friendly);
        # records the format refuses come back as skipped events with their reason.
        self._decoder = ForwardDecoder(
            max_frame_bytes=config.max_chunk_bytes,
            max_decompressed_bytes=config.max_decompressed_bytes,
            normalise=self._to_bus,
        )
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
            first = await self._open()
            if first is not None:
                await self._serve(first)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            self._task.uncancel()
        except DecodeError as exc:
            self._metrics.decode_errors.labels(exc.reason).inc()
            limit = _LIMIT_REASONS.get(exc.reason)
            if limit is not None:
                self._server.limit_hit(limit, f"closed the connection from {self._peer}: {exc}")
            else:
                log.warning("closing connection from %s: %s (%s)", self._peer, exc, exc.reason)
        except _BusFailed:
            bus_failed = True
        except (ConnectionError, ssl.SSLError) as exc:
            log.debug("connection from %s lost: %r", self._peer, exc)
        finally:
            try:
                if self._pending and not bus_failed:
                    await self._flush()
            except _BusFailed:
                pass
            finally:
                await self._close()

    # -- opening: TLS, then the shared-key handshake ----------------------------------

    async def _open(self) -> bytes | None:
        """Start TLS and authenticate as configured; the bytes that followed the PING
        (b"" if none), or None when the connection must close."""
        server = self._server
        if server._tls is not None:
            self._reading = True
            try:
                await self._writer.start_tls(server._tls, ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS)
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                self._metrics.tls_failures.inc()
                server.warn_once(
                    "tls",
                    f"TLS handshake with {self._peer} failed: {exc!r}; further failures are only counted "
                    "(shadow_collector_tls_handshake_failures_total)",
                )
                return None
            finally:
                self._reading = False
        if server._secrets is None:
            return b""
        return await self._authenticate(server._secrets)

    async def _authenticate(self, secrets: Secrets) -> bytes | None:
        handshake = Handshake(secrets)
        self._writer.write(handshake.helo())
        await self._writer.drain()
        unpacker = msgpack.Unpacker(
            raw=False, unicode_errors="surrogateescape", strict_map_key=False, max_buffer_size=MAX_PING_BYTES
        )
        received = bytearray()
        ping: Any = None
        self._reading = True
        try:
            async with asyncio.timeout(self._server._config.security.handshake_timeout_seconds):
                while ping is None:
                    data = await self._reader.read(READ_BYTES)
                    if not data:
                        # A heartbeat connection, or a client that gave up: nothing to say.
                        log.debug("connection from %s closed before its PING", self._peer)
                        return None
                    if len(received) + len(data) > MAX_PING_BYTES:
                        await self._refuse_ping("invalid ping message", "too large")
                        return None
                    received += data
                    unpacker.feed(data)
                    try:
                        for obj in unpacker:
                            if obj is not None:  # skip keep-alives
                                ping = obj
                                break
                    except (ValueError, TypeError, msgpack.UnpackException):
                        await self._refuse_ping("invalid ping message", "not msgpack")
                        return None
        except TimeoutError:
            self._metrics.auth_failures.labels("timeout").inc()
            server_key = "collector.security.handshake_timeout_seconds"
            self._server.warn_once("auth:timeout", f"no PING from {self._peer} within {server_key}; closing")
            return None
        finally:
            self._reading = False
        result = handshake.check(ping)
        if not result.ok:
            await self._refuse_ping(result.reason, f"host {result.client_hostname!r}, user {result.username!r}")
            return None
        self._writer.write(result.pong)
        await self._writer.drain()
        self._metrics.auth_ok.inc()
        log.debug("authenticated %s as host %r user %r", self._peer, result.client_hostname, result.username)
        return bytes(received[unpacker.tell() :])

    async def _refuse_ping(self, reason: str, detail: str) -> None:
        self._metrics.auth_failures.labels(AUTH_REASONS.get(reason, "invalid_ping")).inc()
        self._server.warn_once(
            f"auth:{reason}",
            f"authentication of {self._peer} failed: {reason} ({detail}); further failures are only counted "
            "(shadow_collector_auth_failures_total)",
        )
        try:
            self._writer.write(Handshake.refusal(reason))
            await self._writer.drain()
        except ConnectionError:
            pass
        return None

    # -- records ------------------------------------------------------------------------

    async def _serve(self, first: bytes) -> None:
        if first:
            await self._process(first)
        while not self._stopping:
            data = await self._read()
            if data is None:  # the flush deadline passed while waiting
                await self._flush()
            elif not data:
                self._decoder.eof()
                return
            else:
                await self._process(data)

    async def _process(self, data: bytes) -> None:
        decoder = self._decoder
        self._metrics.received_bytes.inc(len(data))
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
        elif frame.items:
            if not self._pending:
                self._pending_since = asyncio.get_running_loop().time()
            self._pending.extend(frame.items)
        if frame.chunk is not None:
            await self._flush()
            self._writer.write(encode_ack(frame.chunk))
            await self._writer.drain()
            metrics.chunks_acked.inc()
        elif len(self._pending) >= FLUSH_RECORDS:
            await self._flush()

    async def _flush(self) -> None:
        items, self._pending = self._pending, []
        if not items:
            return
        try:
            await self._server._commit.commit(items)
        except Exception as exc:  # any backend failure: count, log, close without ack
            self._server.bus_failed(len(items), self._peer, exc)
            raise _BusFailed() from exc
        self._server.bus_ok()
        self._metrics.records.inc(len(items))

    def _reject(self, reason: str, n: int, what: str) -> None:
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self._metrics.rejected.labels(reason)
        child.inc(n)
        limit = _LIMIT_REASONS.get(reason)
        if limit is not None:
            self._server.limit_hit(limit, f"{what} from {self._peer}")
        elif reason not in self._logged:
            self._logged.add(reason)
            log.warning("skipped %d from %s: %s (%s); further ones are only counted", n, self._peer, what, reason)

    async def _close(self) -> None:
        writer = self._writer
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
