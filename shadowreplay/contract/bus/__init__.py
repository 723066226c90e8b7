"""Pick a bus backend from a URL.

``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` opens the embedded
bus; ``kafka://host:port[,host:port]`` connects to Kafka. Either may carry integer
options in its query string, e.g.
``kafka://10.0.0.5:9092?max_poll_interval_ms=60000&session_timeout_ms=10000`` or
``sqlite:///bus.db?session_timeout_ms=5000``; an option the backend does not know is a
ConfigError. Backends are imported lazily: kafka-python is loaded only for kafka URLs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import parse_qsl

from shadowreplay.contract.bus.base import Bus, Consumer, Message, PartitionLag, Producer, Reader, next_positions, read_to_end
from shadowreplay.contract.errors import ConfigError

__all__ = [
    "Bus", "Consumer", "Message", "PartitionLag", "Producer", "Reader", "check_bus", "next_positions", "open_bus",
    "parse_options", "quiet_client_logs", "read_to_end",
]


def parse_options(url: str, query: str, allowed: tuple[str, ...]) -> dict[str, int]:
    """Integer options from a URL query string; unknown names and non-integers are errors."""
    options: dict[str, int] = {}
    for name, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if name not in allowed:
            raise ConfigError(f"bus.url: {url!r}: unknown bus option {name!r} (known: {', '.join(allowed)})")
        try:
            options[name] = int(raw)
        except ValueError:
            raise ConfigError(f"bus.url: {url!r}: bus option {name!r} must be an integer, got {raw!r}") from None
    return options


def open_bus(url: str, partitions: int = 4) -> Bus:
    """Open the bus named by ``url``; new topics get ``partitions`` partitions."""
    return _backend(url, partitions)()


def check_bus(url: str, partitions: int = 4) -> None:
    """What ``open_bus`` checks before it opens a file or connects: the URL, its options
    and, for SQLite, that the file's directory exists. ConfigError names the fault."""
    _backend(url, partitions)


def _backend(url: str, partitions: int) -> Callable[[], Bus]:
    """The checked opener of the bus named by ``url``."""
    if partitions < 1:
        raise ConfigError(f"bus.partitions: must be >= 1, got {partitions}")
    base, _, query = url.partition("?")
    if base.startswith("sqlite:///"):
        from shadowreplay.contract.bus import sqlite

        path = base[len("sqlite:///"):]
        if not path or path == ":memory:":
            raise ConfigError(f"bus.url: {url!r} needs a file path (sqlite:///path/to/bus.db)")
        options = parse_options(url, query, sqlite.OPTIONS)
        sqlite.check_options(url, path, **options)
        return lambda: sqlite.SqliteBus(url, path, partitions, **options)
    if base.startswith("kafka://"):
        from shadowreplay.contract.bus import kafka

        servers = [s.strip() for s in base[len("kafka://"):].rstrip("/").split(",")]
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"bus.url: {url!r}: expected kafka://host:port[,host:port]")
        options = parse_options(url, query, kafka.OPTIONS)
        return lambda: kafka.KafkaBus(url, servers, partitions, **options)
    raise ConfigError(f"bus.url: {url!r} is neither sqlite:///path nor kafka://host:port")


def quiet_client_logs(level: int) -> None:
    """Keep kafka-python's own log lines out of the way below DEBUG.

    It logs every connection step and rebalance at INFO, and each retry of a broker it
    cannot reach at WARNING and ERROR (dozens of lines before giving up). What matters
    reaches the user as our own messages: a BusError naming the failure, the consumer's
    lines about commits and rebalances. So kafka-python logs at WARNING and its network
    layer not at all, unless ``level`` is DEBUG: then everything.
    """
    debug = level <= logging.DEBUG
    logging.getLogger("kafka").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("kafka.net").setLevel(logging.DEBUG if debug else logging.CRITICAL)
