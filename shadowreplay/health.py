"""Readiness probes for ``/readyz``: is the bus reachable, are the replay targets?

Each probe returns ``None`` when fine, else a short reason. They are cheap (a TCP
connect, or one SQLite statement) and bounded by a timeout, so a load balancer or
systemd watchdog can call ``/readyz`` every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from urllib.parse import urlsplit

from shadowreplay.contract.bus.base import Bus

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 2.0


async def probe_tcp(host: str, port: int, timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """Whether a TCP connection to ``host:port`` opens within the timeout."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_seconds)
    except (OSError, TimeoutError) as exc:
        return f"{host}:{port} unreachable: {exc.__class__.__name__} {exc}".rstrip()
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


async def probe_url(url: str, timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """Whether the host and port of an http(s) URL accept a TCP connection."""
    parts = urlsplit(url)
    if not parts.hostname:
        return f"{url!r}: no host"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return await probe_tcp(parts.hostname, port, timeout_seconds)


async def probe_bus(bus: Bus, timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """Kafka: one of the bootstrap servers accepts a connection. SQLite: the file answers a query."""
    servers: Sequence[str] | None = getattr(bus, "servers", None)
    if servers:
        reasons = []
        for server in servers:
            host, _, port = server.rpartition(":")
            reason = await probe_tcp(host.strip("[]") or "127.0.0.1", int(port or 9092), timeout_seconds)
            if reason is None:
                return None
            reasons.append(reason)
        return "kafka: " + "; ".join(reasons)
    path: str | None = getattr(bus, "path", None)
    if path is not None:
        try:
            await asyncio.wait_for(asyncio.to_thread(_sqlite_ping, path, timeout_seconds), timeout_seconds + 1)
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            return f"sqlite {path}: {exc.__class__.__name__}: {exc}"
    return None


def _sqlite_ping(path: str, timeout_seconds: float) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout_seconds)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    finally:
        conn.close()
