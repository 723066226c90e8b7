"""One TOML file into frozen dataclasses. Unknown keys and bad values are errors naming the key.

CLI flags override the file (see ``cli.py``); secrets come from environment variables
(named in the file, never written in it).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowreplay.errors import ConfigError

DEFAULT_BUS_URL = "sqlite:///shadowreplay.db"


@dataclass(frozen=True)
class BusConfig:
    url: str = DEFAULT_BUS_URL
    requests_topic: str = "shadow.requests"
    results_topic: str = "shadow.results"
    partitions: int = 4


@dataclass(frozen=True)
class FieldMap:
    """Which log field holds what. Defaults are nginx's own variable names."""

    method: str = "request_method"
    target: str = "request_uri"
    protocol: str = "server_protocol"
    scheme: str = "scheme"
    host: str = "host"
    client: str = "remote_addr"
    status: str = "status"
    bytes: str = "body_bytes_sent"
    duration: str = "request_time"
    body: str = "request_body"
    request_id: str = "request_id"
    # Empty: the event time comes from the forward protocol. "msec" is nginx's
    # seconds.milliseconds; "time_iso8601" and other names are parsed as ISO 8601.
    time: str = ""
    header_prefix: str = "http_"


@dataclass(frozen=True)
class CollectorConfig:
    listen: str = "127.0.0.1:24224"
    format: str = "nginx_json"
    fields: FieldMap = field(default_factory=FieldMap)
    max_chunk_bytes: int = 8 * 1024 * 1024
    max_connections: int = 1024


@dataclass(frozen=True)
class ReplayerConfig:
    candidate: str = ""
    baseline: str = ""
    group: str = "shadow-replayer"
    speed: float = 1.0
    concurrency: int = 64
    timeout_seconds: float = 10.0
    max_body_bytes: int = 1024 * 1024
    methods: tuple[str, ...] = ("GET", "HEAD", "OPTIONS")
    keep_host: bool = False
    # A replay with no new records for this long is considered caught up by `demo`
    # and by one-shot replays (`--to`); `follow` waits forever.
    idle_exit_seconds: float = 0.0


@dataclass(frozen=True)
class ComparerConfig:
    group: str = "shadow-comparer"
    ignore_headers: tuple[str, ...] = (
        "date",
        "server",
        "set-cookie",
        "etag",
        "x-request-id",
        "age",
        "expires",
        "last-modified",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "x-shadow-replay",
    )
    compare_headers: bool = False
    max_endpoints: int = 200


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True)
class Config:
    bus: BusConfig = field(default_factory=BusConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    replayer: ReplayerConfig = field(default_factory=ReplayerConfig)
    comparer: ComparerConfig = field(default_factory=ComparerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def load(path: str | Path | None) -> Config:
    """Load ``path`` (or the defaults when None), rejecting unknown keys and bad types."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    cfg = from_dict(raw)
    validate(cfg)
    return cfg


def from_dict(raw: dict[str, Any]) -> Config:
    return _build(Config, raw, "")


def override(cfg: Config, section: str, **values: Any) -> Config:
    """A copy of ``cfg`` with ``section``'s fields replaced by the non-None ``values``."""
    changes = {k: v for k, v in values.items() if v is not None}
    if not changes:
        return cfg
    sub = getattr(cfg, section)
    return dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **changes)})


def validate(cfg: Config) -> None:
    """Check values that types alone do not constrain (one function per section)."""
    _validate_bus(cfg.bus)
    _validate_collector(cfg.collector)
    _validate_replayer(cfg.replayer)
    _validate_comparer(cfg.comparer)
    parse_hostport(cfg.metrics.listen, "metrics.listen")


def _validate_bus(bus: BusConfig) -> None:
    if not bus.url.startswith(("sqlite://", "kafka://")):
        raise ConfigError(f"bus.url: must start with sqlite:// or kafka://, got {bus.url!r}")
    if bus.partitions < 1:
        raise ConfigError("bus.partitions: must be >= 1")


def _validate_collector(c: CollectorConfig) -> None:
    parse_hostport(c.listen, "collector.listen")
    if c.format not in ("nginx_json",):
        raise ConfigError(f"collector.format: unknown format {c.format!r} (known: nginx_json)")
    if c.max_chunk_bytes < 1024:
        raise ConfigError("collector.max_chunk_bytes: must be >= 1024")


def _validate_replayer(r: ReplayerConfig) -> None:
    if not r.speed > 0:
        raise ConfigError("replayer.speed: must be > 0")
    if r.concurrency < 1:
        raise ConfigError("replayer.concurrency: must be >= 1")
    if r.timeout_seconds <= 0:
        raise ConfigError("replayer.timeout_seconds: must be > 0")
    for key, url in (("replayer.candidate", r.candidate), ("replayer.baseline", r.baseline)):
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}: must be an http:// or https:// URL, got {url!r}")


def _validate_comparer(c: ComparerConfig) -> None:
    if c.max_endpoints < 1:
        raise ConfigError("comparer.max_endpoints: must be >= 1")


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {where!r}")
    kwargs = {}
    for name, value in raw.items():
        where = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, where)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: unsupported type")  # not used by any field today
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint!r}")
