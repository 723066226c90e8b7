"""The collector's asyncio server: forward-protocol connections → RequestRecords on the bus.

Per connection: read → ``ForwardDecoder.decode`` → each event through the log format
(records accumulate in the connection's *batch*) → the bus. A frame that asks for an
ack (``option.chunk``) is acknowledged only after its records, and everything before
them on this connection, are durable on the bus.

Acks keep up by committing together what arrives together (group commit). Each
connection has at most one commit *in flight* (``_flight``): it hands its batch to
``GroupCommit.commit`` (``collector/commit.py``, which merges the commits of every
connection waiting at that moment into one bus flush), then writes the acks of that
batch. While it runs the connection goes on reading and decoding, and what arrives
gathers in the next batch, which the flight takes as soon as it is done. So a client
that pipelines frames (fluent-logger for Node, Fluent Bit, Fluentd) gets one bus flush
for all the frames that arrived during the previous one, whatever the mode. Records
without a chunk are batched too and flushed every ``FLUSH_RECORDS`` records, at most
``FLUSH_SECONDS`` after the oldest arrived, and when the connection closes.

Bounds (docs/collector.md has the worst case): each connection's memory (incomplete
frame, frame being decoded, batch, flight) is measured at checkpoints and covered by a
share of the global memory budget (``collector/budget.py``); heavy decoding yields to
the event loop between slices. Slots: a connection must finish its handshake within
``security.handshake_timeout_seconds``, each frame within ``frame_timeout_seconds`` of
its first byte, and is closed when idle for ``idle_timeout_seconds``; when every slot
(or every slot of one address) is taken, a new connection takes the slot of the oldest
unauthenticated one, else of the longest idle one, else it is refused.

A failed publish closes the connection without an ack (the client resends); a fatal
decode error closes only its own connection, after acknowledging the chunks before
the damage; skipped events and refused frames are counted and logged once per
connection and reason. Client-sent values in log lines are clipped (``forward.clip``).
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

from shadowreplay.collector.budget import MemoryBudget, Share
from shadowreplay.collector.commit import MAX_RECORDS as COMMIT_MAX_RECORDS
from shadowreplay.collector.commit import GroupCommit
from shadowreplay.collector.formats import make_format
from shadowreplay.collector.forward import ForwardDecoder, Frame, clip, encode_ack
from shadowreplay.collector.handshake import Handshake, Secrets
from shadowreplay.collector.sequence import IngestClock
from shadowreplay.collector.metrics import AUTH_REASONS, CollectorMetrics
from shadowreplay.collector.tls import looks_like_client_hello, server_context
from shadowreplay.contract.bus.aio import AsyncProducer
from shadowreplay.contract.config import CollectorConfig, parse_hostport
from shadowreplay.contract.errors import DecodeError

log = logging.getLogger(__name__)

READ_BYTES = 64 * 1024
# asyncio's StreamReader stops reading a socket past twice this: what a connection holds
# outside the budget before we read it.
STREAM_LIMIT = 16 * 1024
# What each connection may hold outside the memory budget (so small chunks never wait).
CONNECTION_FREE_BYTES = 128 * 1024
FLUSH_RECORDS = 1000
FLUSH_SECONDS = 0.2
# A batch that gathers while a commit is in flight waits for it past these.
MAX_BATCH_RECORDS = COMMIT_MAX_RECORDS
MAX_BATCH_BYTES = 16 * 1024 * 1024
# Memory of one bus item beyond its key and value (tuple, object headers, the int).
ITEM_OVERHEAD_BYTES = 200
STOP_GRACE_SECONDS = 10.0
# How long a closing connection may take to commit and acknowledge what it holds.
FINISH_SECONDS = 30.0
# A connection must have been idle this long before a new one may take its slot.
SHED_IDLE_SECONDS = 1.0
# A connection whose frames are all refused this many times in a row is sending
# garbage: it is closed (each refused frame still costs a few microseconds of decoding).
MAX_REFUSED_IN_A_ROW = 100
# A PING is a few hundred bytes; a client sending more before one is not speaking the protocol.
MAX_PING_BYTES = 64 * 1024
# Decoder reasons that are hits of a configured limit → the limit's config key.
_LIMIT_REASONS = {
    "chunk_too_large": "max_chunk_bytes",
    "decompressed_too_large": "max_decompressed_bytes",
    "too_many_records": "max_records_per_chunk",
    "record_too_large": "max_record_bytes",
}

Item = tuple[bytes | None, bytes, int | None]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ack_for(frame: Frame) -> bytes:
    """The ack that answers ``frame`` (a chunk whose records are durable on the bus):
    the one place acks are built."""
    assert frame.chunk is not None
    return encode_ack(frame.chunk, _rejects(frame) if frame.report else None)


Normalise = Callable[[str, int, dict[Any, Any], bytes, int], Item]


def _compact(to_bus: Normalise) -> Normalise:
    """``to_bus`` whose encoded record is copied into a bytes object of its own size:
    orjson's output keeps a 4 KiB allocation however short it is, which would make a
    batch of small records take many times the memory the budget counts."""

    def normalise(tag: str, time_ns: int, rec: dict[Any, Any], frame: bytes, index: int) -> Item:
        key, value, ts = to_bus(tag, time_ns, rec, frame, index)
        return key, bytes(memoryview(value)), ts

    return normalise


class _BusFailed(Exception):
    """Publishing failed; the connection closes without acknowledging."""


class _Closing(Exception):
    """The connection is closed by policy (``reason``: a timeout, the memory budget)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
        self._format = make_format(
            config.format,
            config.fields,
            config.redact,
            escapes=config.escapes,
            on_body_dropped=lambda reason: metrics.bodies_dropped.labels(reason).inc(),
            seq=IngestClock().next,  # each record's seq: the log order of equal times
        )
        self._normalise = _compact(self._format.to_bus)
        self._commit = GroupCommit(producer, topic)
        self._budget = MemoryBudget(config.max_memory_bytes)
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
        # Connections holding a slot, oldest first, and how many per address.
        self._slots: dict[_Connection, None] = {}
        self._per_address: collections.Counter[str] = collections.Counter()
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
        self._server = await asyncio.start_server(self._on_connect, host, port, limit=STREAM_LIMIT)
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

    # -- slots ------------------------------------------------------------------------------

    def _take_slot(self, address: str) -> str | None:
        """Make room for a new connection from ``address``: None when it may have a slot
        (after shedding another connection if needed), else the refusal's reason."""
        config = self._config
        if self._per_address[address] >= config.max_connections_per_address:
            victim = self._shed_candidate(address)
            if victim is None:
                return "per_address"
            victim.shed(f"{self._per_address[address]} connections from its address")
        elif len(self._slots) >= config.max_connections:
            victim = self._shed_candidate(None)
            if victim is None:
                return "max_connections"
            victim.shed(f"{len(self._slots)} connections open")
        return None

    def _shed_candidate(self, address: str | None) -> _Connection | None:
        """The connection whose slot a new one may take (from ``address`` if given): the
        oldest that has not authenticated (or, without a shared key, has not yet sent
        a valid frame), else the one idle the longest (nothing in progress, for at
        least SHED_IDLE_SECONDS)."""
        idlest: _Connection | None = None
        since = time.monotonic() - SHED_IDLE_SECONDS
        for conn in self._slots:
            if address is not None and conn.address != address:
                continue
            if not conn.proven:
                return conn
            quiet = conn.quiet_since
            if quiet is not None and quiet <= since:
                idlest, since = conn, quiet
        return idlest

    def _release_slot(self, conn: _Connection) -> None:
        if conn in self._slots:
            del self._slots[conn]
            self._per_address[conn.address] -= 1
            if not self._per_address[conn.address]:
                del self._per_address[conn.address]

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
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        refusal = "max_connections" if self._server is None else self._take_slot(address)
        if refusal is not None:
            metrics.connections_refused.labels(refusal).inc()
            if refusal == "per_address":
                self.limit_hit(
                    "max_connections_per_address",
                    f"refused a connection from {_addr(peer)}: {self._per_address[address]} connections "
                    "from that address are all authenticated and busy",
                )
            else:
                self.limit_hit(
                    "max_connections",
                    f"refused a connection from {_addr(peer)}: {len(self._slots)} connections open, "
                    "all authenticated and busy",
                )
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(self, reader, writer, task, address)
        self._conns[task] = conn
        self._slots[conn] = None
        self._per_address[address] += 1
        metrics.connections.inc()
        metrics.connections_active.inc()
        try:
            await conn.run()
        finally:
            metrics.connections_active.dec()
            self._release_slot(conn)
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


def _rejects(frame: Frame) -> dict[str, int]:
    """Reason → count of the events of ``frame`` that were skipped (for its ack)."""
    return dict(collections.Counter(frame.errors))


def _addr(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class _Connection:
    def __init__(
        self,
        server: CollectorServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[Any],
        address: str,
    ) -> None:
        config = server._config
        self._server = server
        self._config = config
        self._metrics = server._metrics
        self._reader = reader
        self._writer = writer
        self._task = task
        self.address = address
        self._peer = _addr(writer.get_extra_info("peername"))
        self._loop = asyncio.get_running_loop()
        # The decoder maps each record to its bus item as it unpacks it (cache-friendly);
        # records the format refuses come back as skipped events with their reason.
        self._decoder = ForwardDecoder(
            max_frame_bytes=config.max_chunk_bytes,
            max_decompressed_bytes=config.max_decompressed_bytes,
            max_records=config.max_records_per_chunk,
            max_record_bytes=config.max_record_bytes,
            normalise=server._normalise,
        )
        self._share = Share(server._budget, CONNECTION_FREE_BYTES)
        # Records decoded and not yet handed to the bus, and the frames they answer.
        self._batch: list[Item] = []
        self._batch_acks: list[Frame] = []
        self._batch_bytes = 0
        self._batch_since = 0.0
        # The commit in flight (then its acks), and the bytes of its records.
        self._flight: asyncio.Task[None] | None = None
        self._flight_bytes = 0
        self._failed: BaseException | None = None  # the bus error that ended a flight
        self._lost = False  # writing to the client failed
        self._frame_started = 0.0
        self._last_active = self._loop.time()
        # Whether the client authenticated (or, without a shared key, sent a valid frame);
        # since when nothing is in progress (None while something is).
        self.proven = False
        self.quiet_since: float | None = time.monotonic()
        self._reading = False
        self._stopping = False
        self._shed = False
        self._logged: set[str] = set()
        self._rejected: dict[str, Any] = {}
        self._refused_in_a_row = 0

    def stop(self) -> None:
        """Finish the data in hand, then close; a connection waiting for data closes now."""
        self._stopping = True
        if self._reading:
            self._task.cancel()

    def shed(self, why: str) -> None:
        """Give this connection's slot to a newer one: close it now (it holds nothing)."""
        self._shed = True
        self._server._release_slot(self)
        self._metrics.connections_closed.labels("shed").inc()
        state = "not authenticated yet" if not self.proven else f"idle for {time.monotonic() - (self.quiet_since or 0):.0f}s"
        self._server.warn_once(
            "shed",
            f"closed the connection from {self._peer} ({state}) to make room for a new one ({why}); "
            "further ones are only counted (shadow_collector_connections_closed_total{reason=\"shed\"})",
        )
        self._writer.transport.abort()
        self._task.cancel()

    async def run(self) -> None:
        clean = True  # whether what is held may still be committed and acknowledged
        try:
            first = await self._open()
            if first is not None:
                await self._serve(first)
        except asyncio.CancelledError:
            if not (self._stopping or self._shed):
                raise
            self._task.uncancel()
            clean = not self._shed
        except DecodeError as exc:
            self._metrics.decode_errors.labels(exc.reason).inc()
            limit = _LIMIT_REASONS.get(exc.reason)
            if limit is not None:
                self._server.limit_hit(limit, f"closed the connection from {self._peer}: {exc}")
            else:
                log.warning("closing connection from %s: %s (%s)", self._peer, clip(str(exc)), exc.reason)
        except _Closing as exc:
            self._metrics.connections_closed.labels(exc.reason).inc()
            self._server.warn_once(
                exc.reason,
                f"closed the connection from {self._peer}: {exc}; further ones are only counted "
                f"(shadow_collector_connections_closed_total{{reason={exc.reason!r}}})",
            )
        except _BusFailed:
            clean = False
        except (ConnectionError, ssl.SSLError) as exc:
            log.debug("connection from %s lost: %r", self._peer, exc)
        finally:
            try:
                if clean and self._failed is None:
                    await self._finish()
            finally:
                await self._close()

    # -- opening: TLS, then the shared-key handshake ----------------------------------

    async def _open(self) -> bytes | None:
        """Start TLS and authenticate as configured; the bytes that followed the PING
        (b"" if none), or None when the connection must close."""
        server = self._server
        timeout = self._config.security.handshake_timeout_seconds
        if server._tls is not None:
            self._reading = True
            try:
                await self._writer.start_tls(server._tls, ssl_handshake_timeout=timeout)
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

    def _plain_port_tls(self, data: bytes) -> bool:
        """Whether ``data``, the first bytes of a plain-text connection, are a TLS
        ClientHello (then counted and logged, and the connection must close)."""
        if self._server._tls is not None or not looks_like_client_hello(data):
            return False
        self._metrics.decode_errors.labels("tls_on_plain_port").inc()
        self._server.warn_once(
            "tls_on_plain_port",
            f"closed the connection from {self._peer}: it began a TLS handshake, but this port speaks "
            "plain text (set collector.tls.cert_file to accept TLS, or turn TLS off in the client); "
            "further ones are only counted (shadow_collector_decode_errors_total{reason=\"tls_on_plain_port\"})",
        )
        return True

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
            async with asyncio.timeout(self._config.security.handshake_timeout_seconds):
                while ping is None:
                    data = await self._reader.read(READ_BYTES)
                    if not data:
                        # A heartbeat connection, or a client that gave up: nothing to say.
                        log.debug("connection from %s closed before its PING", self._peer)
                        return None
                    if not received and self._plain_port_tls(data):
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
            detail = f"host {clip(repr(result.client_hostname), 100)}, user {clip(repr(result.username), 100)}"
            await self._refuse_ping(result.reason, detail)
            return None
        self._writer.write(result.pong)
        await self._writer.drain()
        self._metrics.auth_ok.inc()
        self.proven = True
        log.debug("authenticated %s as host %r user %r", self._peer, clip(result.client_hostname, 100), clip(result.username, 100))
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
        # With a shared key the connection's first bytes were the PING's (checked there).
        check_tls = self._server._secrets is None
        if first:
            await self._process(first)
        while not self._stopping:
            data = await self._read()
            if data is None:  # the flush deadline passed while waiting
                await self._submit()
            elif not data:
                self._decoder.eof()
                return
            else:
                if check_tls:
                    check_tls = False
                    if self._plain_port_tls(data):
                        return
                await self._process(data)

    async def _read(self) -> bytes | None:
        """The next bytes from the client (b"" at its end); None when the batch is due
        for a flush. Raises _Closing when the frame or the idle timeout passes."""
        loop = self._loop
        config = self._config
        while True:
            flight = self._flight
            busy = flight is not None and not flight.done()
            if self._decoder.buffered:
                deadline = self._frame_started + config.frame_timeout_seconds
                expired = "frame_timeout"
            elif self._batch and not busy:
                deadline = self._batch_since + FLUSH_SECONDS
                expired = "flush"
            else:
                # While acks are on their way the client waits, it is not idle: the idle
                # clock restarts when they are written (_last_active).
                deadline = (loop.time() if busy else self._last_active) + config.idle_timeout_seconds
                expired = "idle_timeout"
            self._reading = True
            try:
                if deadline > loop.time():
                    try:
                        async with asyncio.timeout_at(deadline):
                            data = await self._reader.read(READ_BYTES)
                        if self._failed is not None:
                            raise _BusFailed()
                        return data
                    except TimeoutError:
                        pass
            finally:
                self._reading = False
            if expired == "flush":
                return None
            if expired == "idle_timeout":
                flight = self._flight
                if (flight is not None and not flight.done()) or self._last_active + config.idle_timeout_seconds > loop.time():
                    continue  # acks were on their way: the client was waiting, not idle
                raise _Closing(expired, "nothing received for collector.idle_timeout_seconds")
            raise _Closing(
                expired,
                f"a frame begun {loop.time() - self._frame_started:.0f}s ago is still incomplete "
                f"({self._decoder.buffered} bytes; collector.frame_timeout_seconds)",
            )

    async def _process(self, data: bytes) -> None:
        decoder = self._decoder
        loop = self._loop
        self._metrics.received_bytes.inc(len(data))
        self._last_active = now = loop.time()
        self.quiet_since = None
        if not decoder.buffered:
            self._frame_started = now
        completed = False
        for frame in decoder.decode(data):
            if frame is None:  # a slice of work done: let other connections run
                await self._cover()
                await asyncio.sleep(0)
                continue
            completed = True
            self._on_frame(frame)
            if len(self._batch) >= MAX_BATCH_RECORDS or self._batch_bytes >= MAX_BATCH_BYTES:
                await self._submit()
        if completed and decoder.buffered:
            self._frame_started = loop.time()
        await self._cover()
        if self._batch_acks or len(self._batch) >= FLUSH_RECORDS or (
            self._batch and loop.time() - self._batch_since >= FLUSH_SECONDS
        ):
            await self._submit()
        self._quiet()

    def _on_frame(self, frame: Frame) -> None:
        self._metrics.frames.labels(frame.mode).inc()
        if frame.error is not None:
            self._reject(frame.error.reason, 1, clip(str(frame.error)))
            self._refused_in_a_row += 1
            if self._refused_in_a_row >= MAX_REFUSED_IN_A_ROW:
                raise DecodeError(f"{self._refused_in_a_row} frames in a row were refused", reason="bad_stream", fatal=True)
            return
        self._refused_in_a_row = 0
        self.proven = True
        if frame.errors:
            for reason, n in collections.Counter(frame.errors).items():
                self._reject(reason, n, f"{frame.mode} frame with tag {clip(repr(frame.tag), 100)}")
        items = frame.items
        if items:
            if not self._batch:
                self._batch_since = self._loop.time()
            self._batch.extend(items)
            self._batch_bytes += sum(len(value) for _, value, _ in items) + len(items) * ITEM_OVERHEAD_BYTES
        if frame.chunk is not None:
            # The frame without its records: what its ack needs.
            self._batch_acks.append(frame._replace(items=(), events=[]))

    async def _cover(self) -> None:
        """Make this connection's share of the memory budget cover what it holds now,
        waiting (up to frame_timeout_seconds) while the budget is spent."""
        need = self._decoder.held_bytes + self._batch_bytes + self._flight_bytes
        share = self._share
        if not share.try_cover(need):
            if not share.would_fit(need):
                raise _Closing(
                    "memory_budget",
                    f"it needs {need} bytes of memory, more than collector.max_memory_bytes allows one connection",
                )
            self._server.limit_hit(
                "max_memory_bytes", f"the connection from {self._peer} waits for memory ({need} bytes held)"
            )
            if not await share.cover(need, self._config.frame_timeout_seconds):
                raise _Closing(
                    "memory_budget",
                    f"no memory for {need} bytes within collector.frame_timeout_seconds "
                    "(collector.max_memory_bytes is spent)",
                )
        self._metrics.memory_reserved.set(self._server._budget.used)

    def _quiet(self) -> None:
        """Note whether nothing is in progress (for the slot policy)."""
        flight = self._flight
        if self._decoder.buffered or self._batch or self._batch_acks or (flight is not None and not flight.done()):
            self.quiet_since = None
        elif self.quiet_since is None:
            self.quiet_since = time.monotonic()

    # -- the bus and acks -----------------------------------------------------------------

    async def _submit(self) -> None:
        """Send the batch on its way: start a flight, or leave it to the one in flight
        (which takes it when done), waiting for that one when the batch is full."""
        if self._failed is not None:
            raise _BusFailed()
        flight = self._flight
        if flight is not None and not flight.done():
            if len(self._batch) < MAX_BATCH_RECORDS and self._batch_bytes < MAX_BATCH_BYTES:
                return
            await asyncio.wait([flight])
            if self._failed is not None:
                raise _BusFailed()
            if self._lost:
                raise ConnectionResetError("the client went away")
        if self._batch or self._batch_acks:
            self._flight = asyncio.create_task(self._fly(), name=f"collector-flight-{self._peer}")

    async def _fly(self) -> None:
        """Commit batches and write their acks, one after another, until none is left.
        A bus error ends the connection without acks; so does a client that went away."""
        server = self._server
        while self._batch or self._batch_acks:
            items, self._batch = self._batch, []
            acks, self._batch_acks = self._batch_acks, []
            self._flight_bytes, self._batch_bytes = self._batch_bytes, 0
            try:
                if items:
                    try:
                        await server._commit.commit(items)
                    except Exception as exc:  # any backend failure: count, log, close without ack
                        server.bus_failed(len(items), self._peer, exc)
                        self._failed = exc
                        self._writer.transport.abort()
                        return
                    server.bus_ok()
                    self._metrics.records.inc(len(items))
                if acks:
                    self._writer.write(b"".join([ack_for(frame) for frame in acks]))
                    await self._writer.drain()
                    self._metrics.chunks_acked.inc(len(acks))
            except (ConnectionError, OSError) as exc:
                log.debug("connection from %s lost while acknowledging: %r", self._peer, exc)
                self._lost = True
                self._writer.transport.abort()
                return
            except Exception as exc:  # a bug: no ack may follow; the reader sees the close
                log.exception("committing records from %s failed unexpectedly; closing without ack", self._peer)
                self._failed = exc
                self._writer.transport.abort()
                return
            finally:
                self._flight_bytes = 0
                self._share.shrink(self._decoder.held_bytes + self._batch_bytes)
                self._metrics.memory_reserved.set(server._budget.used)
            self._last_active = self._loop.time()
        self._quiet()

    async def _finish(self) -> None:
        """At the end: commit and acknowledge what is left, as far as the client is
        still there to take the acks."""
        try:
            async with asyncio.timeout(FINISH_SECONDS):
                flight = self._flight
                if flight is not None and not flight.done():
                    await asyncio.wait([flight])
                if self._failed is None and not self._lost and (self._batch or self._batch_acks):
                    self._flight = asyncio.create_task(self._fly(), name=f"collector-flight-{self._peer}")
                    await asyncio.wait([self._flight])
        except TimeoutError:
            log.warning("the connection from %s took over %.0fs to finish; closing", self._peer, FINISH_SECONDS)
        finally:
            if self._flight is not None and not self._flight.done():
                self._flight.cancel()
                await asyncio.gather(self._flight, return_exceptions=True)

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
        self._share.release()
        self._metrics.memory_reserved.set(self._server._budget.used)
        writer = self._writer
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
