"""One TOML file into frozen dataclasses. Unknown keys and bad values are errors naming the key.

CLI flags override the file (see ``cli.py``); secrets come from environment variables
(named in the file, never written in it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shadowreplay.contract.errors import ConfigError

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
    # Empty: the event time comes from the forward protocol. Else the field holding the
    # request time, read as ``time_format``.
    time: str = ""
    # auto (by value: $msec digits, CLF "10/Oct/2000:13:55:36 -0700", ISO 8601), msec, clf, iso8601.
    time_format: str = "auto"
    header_prefix: str = "http_"
    # Explicit headers, "Header-Name=field" (e.g. "User-Agent=ua" for LTSV), besides the prefix.
    headers: tuple[str, ...] = ()
    # The request line ("GET /a?b HTTP/1.1", nginx $request), used when method/target are absent.
    request: str = "request"
    # Fields that may hold a raw, unparsed log line (Fluent Bit: "log", Fluentd: "message");
    # such a line is parsed with collector.format first.
    line_fields: tuple[str, ...] = ("log", "message")


# The credentials redacted by default (collector.redact; docs/ingest.md lists them).
# Names match case-insensitively; query parameters and form/JSON keys also after
# percent-decoding and as any segment of a nested key (``user[password]``, ``a.token``).
DEFAULT_SECRET_HEADERS = (
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "Set-Cookie",
    "X-Api-Key",
    "Api-Key",
    "X-Auth-Token",
    "X-Access-Token",
    "X-Csrf-Token",
    "X-Xsrf-Token",
    "X-Amz-Security-Token",
    "X-Goog-Api-Key",
)
DEFAULT_SECRET_QUERY_PARAMS = (
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "api_key",
    "apikey",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Goog-Signature",
    "X-Goog-Credential",
)
DEFAULT_SECRET_FIELDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "api_key",
    "apikey",
    "private_key",
)


@dataclass(frozen=True)
class RedactConfig:
    """Secrets replaced at ingest by ``redacted:hmac:<16 hex>`` (HMAC-SHA256) so they never
    reach the bus. The key comes from the environment variable ``key_env``; unset, a random
    per-process key is used (hashes then differ between collector processes).

    ``headers``, ``query_params`` and ``body_fields`` are the lists (defaults above);
    ``extra_*`` add to them and ``keep_*`` remove from them, so a config names only its
    differences and still gets the defaults that later releases add."""

    headers: tuple[str, ...] = DEFAULT_SECRET_HEADERS
    # Query parameters of the target (and of a Referer header's URL).
    query_params: tuple[str, ...] = DEFAULT_SECRET_QUERY_PARAMS
    # JSON object members (at any depth) and form fields of request bodies.
    body_fields: tuple[str, ...] = DEFAULT_SECRET_FIELDS
    extra_headers: tuple[str, ...] = ()
    keep_headers: tuple[str, ...] = ()
    extra_query_params: tuple[str, ...] = ()
    keep_query_params: tuple[str, ...] = ()
    extra_body_fields: tuple[str, ...] = ()
    keep_body_fields: tuple[str, ...] = ()
    key_env: str = "SHADOWREPLAY_REDACT_KEY"

    def effective(self, kind: str) -> frozenset[str]:
        """The lowercased names redacted for ``kind`` (headers, query_params, body_fields):
        the list plus ``extra_<kind>`` minus ``keep_<kind>``."""
        names = {n.lower() for n in getattr(self, kind)} | {n.lower() for n in getattr(self, f"extra_{kind}")}
        return frozenset(names - {n.lower() for n in getattr(self, f"keep_{kind}")})


@dataclass(frozen=True)
class ForwardUser:
    """One forward-protocol user; the password comes from the environment variable named."""

    username: str = ""
    password_env: str = ""


@dataclass(frozen=True)
class ForwardSecurity:
    """Shared-key handshake (on when ``shared_key_env`` is set) and the client allow-list."""

    shared_key_env: str = ""
    self_hostname: str = ""  # empty: this machine's hostname
    users: tuple[ForwardUser, ...] = ()
    allow_networks: tuple[str, ...] = ()  # CIDRs; empty: every address
    handshake_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class ForwardTls:
    """TLS on the forward port (on when ``cert_file`` is set)."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    require_client_cert: bool = False


@dataclass(frozen=True)
class CollectorConfig:
    listen: str = "127.0.0.1:24224"
    format: str = "nginx_json"
    fields: FieldMap = field(default_factory=FieldMap)
    # Raw ltsv/combined lines (collector.fields.line_fields): "decode" undoes the escapes
    # nginx (escape=default or json) and Apache write (\xHH, \", \\, \n, ...); "keep"
    # takes values as written (nginx escape=none).
    escapes: str = "decode"
    redact: RedactConfig = field(default_factory=RedactConfig)
    max_chunk_bytes: int = 8 * 1024 * 1024
    max_connections: int = 1024
    max_decompressed_bytes: int = 64 * 1024 * 1024
    # A record (one entry) bigger than this, as msgpack, is skipped and counted.
    max_record_bytes: int = 1024 * 1024
    # A chunk with more entries than this is refused (no ack).
    max_records_per_chunk: int = 100_000
    # Memory all connections may hold beyond a small part each (docs/collector.md).
    max_memory_bytes: int = 256 * 1024 * 1024
    # Beyond this, a new connection from the same address takes the slot of that
    # address's oldest unauthenticated or idle connection, or is refused.
    max_connections_per_address: int = 256
    idle_timeout_seconds: float = 300.0  # a connection with nothing in progress is closed after this
    frame_timeout_seconds: float = 60.0  # a frame must arrive whole within this of its first byte
    udp_heartbeat: bool = True
    security: ForwardSecurity = field(default_factory=ForwardSecurity)
    tls: ForwardTls = field(default_factory=ForwardTls)


@dataclass(frozen=True)
class ReplayRule:
    """One ``[[replayer.rules]]`` entry: a filter or a rewrite, applied in order (see
    replayer/rules.py for the kinds and which keys each uses)."""

    kind: str = ""
    pattern: str = ""  # regex: path (include_path, exclude_path, rewrite_path) or header value
    name: str = ""  # header or query parameter name
    value: str = ""  # value to set, or the replacement of rewrite_path
    percent: float = 100.0  # sample: share of keys kept
    key: str = "client"  # sample: client, header:NAME or query:NAME


@dataclass(frozen=True)
class TargetOptions:
    """Per-target overrides; 0 means "use the [replayer] value"."""

    timeout_seconds: float = 0.0
    concurrency: int = 0
    tls_verify: bool = True


# The replay targets, in the order results and pages list them.
TARGET_NAMES = ("candidate", "baseline", "secondary")
# Request headers the replayer sets or drops whatever the rules say (docs/http-client.md,
# "What goes on the wire"): a rule that sets one could never take effect.
REPLAY_MANAGED_HEADERS = frozenset({
    "host", "content-length", "x-forwarded-for", "x-shadow-replay",
    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
})
# Methods replayed by default (anything else must be allowed explicitly).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# replayer.late_policy: what to do with a record later than late_after_seconds.
LATE_POLICIES = ("send", "drop")
# replayer.anchor: auto (the group's anchor on the bus if set, else local), bus (wait for one), local.
ANCHOR_MODES = ("auto", "bus", "local")


@dataclass(frozen=True)
class ReplayTargets:
    candidate: TargetOptions = field(default_factory=TargetOptions)
    baseline: TargetOptions = field(default_factory=TargetOptions)
    secondary: TargetOptions = field(default_factory=TargetOptions)


# The replayer's HTTP clients: builtin is replayer/http1.py. aiohttp's client was removed:
# it read malformed responses differently from the built-in one (docs/http-client.md).
HTTP_CLIENTS = ("builtin",)


@dataclass(frozen=True)
class StreamEndpoint:
    """``[[replayer.streams.endpoints]]``: requests whose responses stream (read as a
    stream from their head on, within this window)."""

    path: str = ""  # regex searched in the request path (required)
    method: str = ""  # empty: any method
    window_seconds: float = 0.0  # 0: [replayer.streams] window_seconds
    window_bytes: int = 0  # 0: [replayer.streams] window_bytes


@dataclass(frozen=True)
class StreamsConfig:
    """``[replayer.streams]``: how streaming responses are read (docs/streaming.md). A
    response is a stream when its endpoint is listed, its Content-Type is
    text/event-stream, or its chunked (or close-delimited) body is still arriving
    ``chunked_after_seconds`` after the send; it is read until ``window_seconds`` after the
    send or ``window_bytes`` of body, then closed ("stream window reached", not an error)."""

    window_seconds: float = 10.0
    window_bytes: int = 0  # 0: replayer.max_body_bytes
    chunked_after_seconds: float = 1.0  # 0: only listed endpoints and event streams are streams
    endpoints: tuple[StreamEndpoint, ...] = ()


@dataclass(frozen=True)
class ReplayerConfig:
    candidate: str = ""
    baseline: str = ""
    secondary: str = ""
    group: str = "shadow-replayer"
    speed: float = 1.0
    # > 0: paced to this many requests/s (open model, nothing dropped); speed is then a
    # ceiling, or none when speed = 0.
    rate: float = 0.0
    concurrency: int = 64
    timeout_seconds: float = 10.0
    max_body_bytes: int = 1024 * 1024
    methods: tuple[str, ...] = SAFE_METHODS
    keep_host: bool = False
    http_client: str = "builtin"  # one of HTTP_CLIENTS
    # A replay with no new records for this long is considered caught up by `demo`
    # and by one-shot replays (`--to`); `follow` waits forever.
    idle_exit_seconds: float = 0.0
    max_gap_seconds: float = 0.0  # > 0: idle gaps in the schedule are cut to this
    late_policy: str = "send"  # one of LATE_POLICIES
    late_after_seconds: float = 0.01
    lead_seconds: float = 0.2  # head start of a locally anchored schedule
    window_from: str = ""  # ISO time, epoch seconds or "-1h"; empty: where the group stands
    window_to: str = ""  # same forms; empty: no end
    # How far out of timestamp order the records of one partition may be: a window seeks
    # this far before window_from and reads this far past window_to (see docs/replayer.md).
    lateness_seconds: float = 300.0
    follow: bool = False  # after catching up at N×, follow real time
    follow_delay_seconds: float = 1.0
    anchor: str = "auto"  # one of ANCHOR_MODES
    control_topic: str = "shadow.control"
    workers: int = 1
    # Without a secondary: this share (percent) of requests, plus the first
    # noise_probe_min_per_endpoint of each endpoint, is also sent a second time to the
    # baseline, so the comparer learns noise from the pairs. Only noise_probe_methods are
    # asked twice. 0 = off. Without a baseline, the candidate is asked twice only when
    # noise_probe_candidate is set (it adds requests to the release under test, and only
    # helps with logged body digests or compare_origin_size).
    noise_probe_percent: float = 3.0
    noise_probe_min_per_endpoint: int = 50
    noise_probe_methods: tuple[str, ...] = SAFE_METHODS
    noise_probe_candidate: bool = False
    rules: tuple[ReplayRule, ...] = ()
    targets: ReplayTargets = field(default_factory=ReplayTargets)
    streams: StreamsConfig = field(default_factory=StreamsConfig)


@dataclass(frozen=True)
class StoreConfig:
    """``[comparer.store]``: where diverging results are kept for the page and ``diffs``."""

    # Empty: next to a sqlite:// bus file (bus.db -> bus.diffs.db), else ./shadowreplay-diffs.db.
    path: str = ""
    max_age_seconds: float = 7 * 24 * 3600.0
    max_count: int = 20000
    max_body_bytes: int = 65536
    prune_interval_seconds: float = 60.0


@dataclass(frozen=True)
class WebConfig:
    """``[comparer.web]``: the divergence page, its JSON API and live feed.

    Private by default: without a credential the page answers loopback clients only and
    ``listen`` must be a loopback address. A credential (a bearer token, or ``user:password``
    for basic auth, from a file or an environment variable) is then required on every page
    and API request. ``/metrics``, ``/healthz`` and ``/readyz`` stay open.
    """

    enabled: bool = True
    # Empty: served on the metrics listener (metrics.listen); else its own HOST:PORT.
    listen: str = ""
    heartbeat_seconds: float = 15.0
    bearer_token_file: str = ""
    bearer_token_env: str = ""
    basic_auth_file: str = ""  # the file holds "user:password"
    basic_auth_env: str = ""
    # Host names the page may be reached by, besides IP addresses and localhost (a Host
    # header naming anything else is refused: DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    # A store query of the page running longer than this is stopped (503).
    query_timeout_seconds: float = 10.0

    @property
    def has_credential(self) -> bool:
        return bool(self.bearer_token_file or self.bearer_token_env or self.basic_auth_file or self.basic_auth_env)


@dataclass(frozen=True)
class GateConfig:
    """``[comparer.gate]``: what ``shadowreplay gate`` fails a release on (flags override)."""

    # An endpoint whose share of requests with a real divergence is above this fails.
    max_divergence_rate: float = 0.0
    # An endpoint judged a latency regression fails.
    fail_on_latency_regression: bool = True
    # More results not compared (target unreachable) than this share: no verdict (exit 2).
    max_not_compared_rate: float = 0.01
    # Fewer compared results than this in total: no verdict (exit 2).
    min_compared: int = 1


@dataclass(frozen=True)
class EndpointRules:
    """``[[comparer.endpoints]]``: extra diff rules for endpoints whose name matches ``match``.

    Lists add to the ``[comparer]`` ones; a negative number means "the ``[comparer]`` value".
    """

    match: str = ""  # an endpoint name or a glob: "GET /api/users/*", "rpc:eth_*"
    ignore_headers: tuple[str, ...] = ()
    ignore_paths: tuple[str, ...] = ()
    noise_paths: tuple[str, ...] = ()
    unordered_paths: tuple[str, ...] = ()
    tolerance_absolute: float = -1.0
    tolerance_relative: float = -1.0
    latency_ratio_threshold: float = -1.0


@dataclass(frozen=True)
class ComparerStreamsConfig:
    """``[comparer.streams]``: the cadence verdict and event-stream comparison (docs/streaming.md)."""

    # Cadence (needs a baseline): judged where the baseline's body arrived over at least
    # min_spread_seconds (10 % to 90 % of its bytes), or was read as a stream.
    cadence: bool = True
    min_spread_seconds: float = 0.5
    # buffering: the candidate's largest burst (bytes within burst_window_relative x the
    # baseline's spread) holds burst_share_threshold more of its body than the baseline's,
    # and its average byte came buffering_min_delay_seconds later.
    burst_window_relative: float = 0.1
    burst_share_threshold: float = 0.5
    buffering_min_delay_seconds: float = 0.25
    # first_byte_delay: first body byte this much later, and this many times as late.
    first_byte_delay_seconds: float = 0.5
    first_byte_delay_ratio: float = 2.0
    # text/event-stream bodies event by event; two cut streams may differ by this many events.
    sse_events: bool = True
    event_count_tolerance_absolute: int = 2
    event_count_tolerance_relative: float = 0.05


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
        "x-runtime",
        "x-response-time",
        "traceparent",
        "x-amzn-trace-id",
        "cf-ray",
    )
    compare_headers: bool = False
    max_endpoints: int = 200
    # -- verdicts (comparer/diff.py, noise.py, endpoints.py) --
    routes: tuple[str, ...] = ()
    ignore_paths: tuple[str, ...] = ()
    noise_paths: tuple[str, ...] = ()
    unordered_paths: tuple[str, ...] = ()
    tolerance_absolute: float = 0.0
    tolerance_relative: float = 0.0
    latency_ratio_threshold: float = 0.0
    latency_min_delta_seconds: float = 0.05
    noise_relative_threshold: float = 0.20
    noise_absolute_threshold: float = 0.0003
    noise_confidence: float = 0.99
    # Latency per endpoint: a regression when the candidate is slower than the baseline
    # by more than this share and this many ms at the median or p95, with confidence.
    latency_regression_share: float = 0.20
    latency_regression_min_ms: float = 10.0
    latency_confidence: float = 0.99
    compare_origin_size: bool = False
    origin_size_tolerance_relative: float = 0.05
    endpoints: tuple[EndpointRules, ...] = ()
    store: StoreConfig = field(default_factory=StoreConfig)
    web: WebConfig = field(default_factory=WebConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    streams: ComparerStreamsConfig = field(default_factory=ComparerStreamsConfig)


#: The stages, in pipeline order (also the commands that run one each).
STAGES = ("collect", "replay", "compare")
#: Default /metrics port of each stage on 127.0.0.1 (when ``metrics.listen`` is empty), so
#: the three run side by side on one machine; ``run`` (all three) uses the collector's.
METRICS_PORTS = dict(zip(STAGES, (9464, 9465, 9466), strict=True))


@dataclass(frozen=True)
class MetricsConfig:
    # Empty: 127.0.0.1 on the stage's own port (METRICS_PORTS).
    listen: str = ""


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
    """Check values that types alone do not constrain (one function per section). What a
    stage checks when it is built from its section (regexes, path patterns, log formats,
    rules, TLS files, secrets) is checked there: ``shadowreplay.app.check`` builds them all."""
    _validate_bus(cfg.bus)
    _validate_collector(cfg.collector)
    _validate_replayer(cfg.replayer)
    _validate_comparer(cfg.comparer)
    if cfg.metrics.listen:
        parse_hostport(cfg.metrics.listen, "metrics.listen")


def _validate_bus(bus: BusConfig) -> None:
    if not bus.url.startswith(("sqlite://", "kafka://")):
        raise ConfigError(f"bus.url: must start with sqlite:// or kafka://, got {bus.url!r}")
    if bus.partitions < 1:
        raise ConfigError("bus.partitions: must be >= 1")


def _validate_collector(c: CollectorConfig) -> None:
    parse_hostport(c.listen, "collector.listen")
    # format, escapes and fields.time_format name the collector's parsers: it checks them
    # (shadowreplay.collector.formats.make_format), as `config check` does.
    _validate_fields(c.fields, c.redact)
    if c.max_chunk_bytes < 1024:
        raise ConfigError("collector.max_chunk_bytes: must be >= 1024")
    _validate_forward_limits(c)
    _validate_forward_security(c.security)
    _validate_forward_tls(c.tls)


def _validate_fields(f: FieldMap, r: RedactConfig) -> None:
    for i, entry in enumerate(f.headers):
        name, sep, src = entry.partition("=")
        if not sep or not name.strip() or not src.strip():
            raise ConfigError(f"collector.fields.headers[{i}]: expected 'Header-Name=field', got {entry!r}")
    if r.key_env and not r.key_env.replace("_", "a").isalnum():
        raise ConfigError(f"collector.redact.key_env: not an environment variable name: {r.key_env!r}")
    for kind in ("headers", "query_params", "body_fields"):
        listed = {n.lower() for n in getattr(r, kind)} | {n.lower() for n in getattr(r, f"extra_{kind}")}
        for key in (kind, f"extra_{kind}", f"keep_{kind}"):
            for i, name in enumerate(getattr(r, key)):
                if not name.strip() or name != name.strip():
                    raise ConfigError(f"collector.redact.{key}[{i}]: expected a name, got {name!r}")
                if key.startswith("keep_") and name.lower() not in listed:
                    raise ConfigError(
                        f"collector.redact.{key}[{i}]: {name!r} is not in collector.redact.{kind} "
                        f"or extra_{kind}, so there is nothing to keep"
                    )


def _validate_forward_limits(c: CollectorConfig) -> None:
    if c.max_connections < 1:
        raise ConfigError("collector.max_connections: must be >= 1")
    if c.max_decompressed_bytes < c.max_chunk_bytes:
        raise ConfigError("collector.max_decompressed_bytes: must be >= collector.max_chunk_bytes")
    if c.max_record_bytes < 1024:
        raise ConfigError("collector.max_record_bytes: must be >= 1024")
    if c.max_records_per_chunk < 1:
        raise ConfigError("collector.max_records_per_chunk: must be >= 1")
    if c.max_memory_bytes < 2 * c.max_chunk_bytes:
        # A frame in the making takes up to twice its size (docs/collector.md).
        raise ConfigError("collector.max_memory_bytes: must be >= 2 x collector.max_chunk_bytes")
    if c.max_connections_per_address < 1:
        raise ConfigError("collector.max_connections_per_address: must be >= 1")
    for key in ("idle_timeout_seconds", "frame_timeout_seconds"):
        if not getattr(c, key) > 0:
            raise ConfigError(f"collector.{key}: must be > 0")


def _validate_forward_security(s: ForwardSecurity) -> None:
    key = "collector.security"
    for name, value in (("shared_key_env", s.shared_key_env),) + tuple(
        (f"users[{i}].password_env", u.password_env) for i, u in enumerate(s.users)
    ):
        if value and not value.replace("_", "a").isalnum():
            raise ConfigError(f"{key}.{name}: not an environment variable name: {value!r}")
    if s.users and not s.shared_key_env:
        raise ConfigError(f"{key}.users: user authentication needs {key}.shared_key_env")
    seen: set[str] = set()
    for i, u in enumerate(s.users):
        if not u.username or not u.password_env:
            raise ConfigError(f"{key}.users[{i}]: needs username and password_env")
        if u.username in seen:
            raise ConfigError(f"{key}.users[{i}].username: duplicate user {u.username!r}")
        seen.add(u.username)
    for i, net in enumerate(s.allow_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{key}.allow_networks[{i}]: not a CIDR network: {net!r}") from exc
    if not s.handshake_timeout_seconds > 0:
        raise ConfigError(f"{key}.handshake_timeout_seconds: must be > 0")


def _validate_forward_tls(t: ForwardTls) -> None:
    key = "collector.tls"
    if bool(t.cert_file) != bool(t.key_file):
        raise ConfigError(f"{key}.{'key_file' if t.cert_file else 'cert_file'}: cert_file and key_file go together")
    if (t.ca_file or t.require_client_cert) and not t.cert_file:
        raise ConfigError(f"{key}.cert_file: needed for {key}.ca_file / require_client_cert")
    if t.require_client_cert and not t.ca_file:
        raise ConfigError(f"{key}.ca_file: require_client_cert needs the CA that signs client certificates")
    for name in ("cert_file", "key_file", "ca_file"):
        path = getattr(t, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{key}.{name}: no such file: {path!r}")


def _has_host(url: str) -> bool:
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:  # e.g. an unclosed [IPv6 literal
        return False


def _validate_replayer(r: ReplayerConfig) -> None:
    if not r.speed > 0 and not (r.speed == 0 and r.rate > 0):
        raise ConfigError("replayer.speed: must be > 0 (0, no ceiling, only with a rate)")
    if r.rate < 0:
        raise ConfigError("replayer.rate: must be >= 0")
    if r.concurrency < 1:
        raise ConfigError("replayer.concurrency: must be >= 1")
    if r.timeout_seconds <= 0:
        raise ConfigError("replayer.timeout_seconds: must be > 0")
    for key, url in (("replayer.candidate", r.candidate), ("replayer.baseline", r.baseline),
                     ("replayer.secondary", r.secondary)):
        if url and not (url.startswith(("http://", "https://")) and _has_host(url)):
            raise ConfigError(f"{key}: must be an http:// or https:// URL with a host, got {url!r}")
    for name in TARGET_NAMES:
        opts: TargetOptions = getattr(r.targets, name)
        if opts.timeout_seconds < 0 or opts.concurrency < 0:
            raise ConfigError(f"replayer.targets.{name}: timeout_seconds and concurrency must be >= 0")
    if r.late_policy not in LATE_POLICIES:
        raise ConfigError(f"replayer.late_policy: {' or '.join(LATE_POLICIES)}, got {r.late_policy!r}")
    if r.http_client == "aiohttp":
        raise ConfigError("replayer.http_client: the aiohttp client was removed (it read malformed responses "
                          "differently from the built-in one); use builtin, or remove the key")
    if r.http_client not in HTTP_CLIENTS:
        raise ConfigError(f"replayer.http_client: {' or '.join(HTTP_CLIENTS)}, got {r.http_client!r}")
    _validate_streams(r.streams, r.max_body_bytes)
    if r.anchor not in ANCHOR_MODES:
        raise ConfigError(f"replayer.anchor: one of {', '.join(ANCHOR_MODES)}, got {r.anchor!r}")
    for key in ("max_gap_seconds", "late_after_seconds", "lead_seconds", "follow_delay_seconds", "lateness_seconds"):
        if getattr(r, key) < 0:
            raise ConfigError(f"replayer.{key}: must be >= 0")
    if r.workers < 1:
        raise ConfigError("replayer.workers: must be >= 1")
    if not 0 <= r.noise_probe_percent <= 100:
        raise ConfigError("replayer.noise_probe_percent: must be between 0 and 100")
    if r.noise_probe_min_per_endpoint < 0:
        raise ConfigError("replayer.noise_probe_min_per_endpoint: must be >= 0")
    for i, rule in enumerate(r.rules):
        # A rule on a header the replayer sets or drops itself could never take effect
        # (the rule kinds themselves, and their patterns, are checked by replayer.rules).
        managed = rule.name.strip().lower()
        if rule.kind == "set_header" and (managed in REPLAY_MANAGED_HEADERS or managed.startswith("proxy-")):
            hint = " (keep_host = true sends the logged Host; or point the target URL at the host)" \
                if managed == "host" else ""
            raise ConfigError(f"replayer.rules[{i}]: set_header {rule.name!r} cannot take effect: the replayer "
                              f"sets or drops that header itself{hint}")
        if rule.kind == "remove_header" and managed in ("host", "content-length", "x-forwarded-for", "x-shadow-replay"):
            raise ConfigError(f"replayer.rules[{i}]: remove_header {rule.name!r} cannot take effect: the replayer "
                              "sets that header itself")


def _validate_streams(s: StreamsConfig, max_body_bytes: int) -> None:
    key = "replayer.streams"
    if not s.window_seconds > 0:
        raise ConfigError(f"{key}.window_seconds: must be > 0")
    if s.chunked_after_seconds < 0:
        raise ConfigError(f"{key}.chunked_after_seconds: must be >= 0")
    for i, e in enumerate(s.endpoints):
        where = f"{key}.endpoints[{i}]"
        if not e.path:
            raise ConfigError(f"{where}.path: a regex of the paths that stream is required")
        try:
            re.compile(e.path)
        except re.error as exc:
            raise ConfigError(f"{where}.path: not a valid regex: {exc}") from exc
        if e.window_seconds < 0:
            raise ConfigError(f"{where}.window_seconds: must be >= 0")
    for where, size in ((key, s.window_bytes),) + tuple(
        (f"{key}.endpoints[{i}]", e.window_bytes) for i, e in enumerate(s.endpoints)
    ):
        if not 0 <= size <= max_body_bytes:
            raise ConfigError(f"{where}.window_bytes: must be within 0..replayer.max_body_bytes ({max_body_bytes})")


def _validate_comparer(c: ComparerConfig) -> None:
    if c.max_endpoints < 1:
        raise ConfigError("comparer.max_endpoints: must be >= 1")
    _validate_verdict_rules(c)
    _validate_comparer_streams(c.streams)
    if c.store.max_age_seconds <= 0:
        raise ConfigError("comparer.store.max_age_seconds: must be > 0")
    if c.store.max_count < 1:
        raise ConfigError("comparer.store.max_count: must be >= 1")
    if c.store.max_body_bytes < 0:
        raise ConfigError("comparer.store.max_body_bytes: must be >= 0")
    if c.store.prune_interval_seconds <= 0:
        raise ConfigError("comparer.store.prune_interval_seconds: must be > 0")
    _validate_web(c.web)


def _validate_web(w: WebConfig) -> None:
    key = "comparer.web"
    if w.heartbeat_seconds <= 0:
        raise ConfigError(f"{key}.heartbeat_seconds: must be > 0")
    if not w.query_timeout_seconds > 0:
        raise ConfigError(f"{key}.query_timeout_seconds: must be > 0")
    for kind in ("bearer_token", "basic_auth"):
        file, env = getattr(w, f"{kind}_file"), getattr(w, f"{kind}_env")
        if file and env:
            raise ConfigError(f"{key}.{kind}_file: set {kind}_file or {kind}_env, not both")
        if env and not env.replace("_", "a").isalnum():
            raise ConfigError(f"{key}.{kind}_env: not an environment variable name: {env!r}")
        if file and not Path(file).is_file():
            raise ConfigError(f"{key}.{kind}_file: no such file: {file!r}")
    for i, host in enumerate(w.allowed_hosts):
        if not host or any(c in host for c in "/@ \t") or host.startswith("["):
            raise ConfigError(f"{key}.allowed_hosts[{i}]: expected a host name such as diffs.example.com, got {host!r}")
    if w.listen:
        host, _ = parse_hostport(w.listen, f"{key}.listen")
        if not w.has_credential and not is_loopback_host(host):
            raise ConfigError(
                f"{key}.listen: {w.listen} is not a loopback address and no credential is configured, so anyone "
                f"who can reach it would read every stored request and response; set {key}.bearer_token_file "
                f"(or _env) or {key}.basic_auth_file (or _env), or listen on 127.0.0.1"
            )


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``); ``0.0.0.0`` is not."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _validate_verdict_rules(c: ComparerConfig) -> None:
    # Path patterns and routes are compiled (and rejected with the key's name) by
    # shadowreplay.comparer.diff.Differ when the comparer starts.
    for key in (
        "tolerance_absolute",
        "tolerance_relative",
        "latency_ratio_threshold",
        "latency_min_delta_seconds",
        "noise_relative_threshold",
        "noise_absolute_threshold",
        "origin_size_tolerance_relative",
        "latency_regression_share",
        "latency_regression_min_ms",
    ):
        if getattr(c, key) < 0:
            raise ConfigError(f"comparer.{key}: must be >= 0")
    for key in ("noise_confidence", "latency_confidence"):
        if not 0.5 <= getattr(c, key) < 1:
            raise ConfigError(f"comparer.{key}: must be at least 0.5 and below 1 (e.g. 0.99)")
    g = c.gate
    for key in ("max_divergence_rate", "max_not_compared_rate"):
        if not 0 <= getattr(g, key) <= 1:
            raise ConfigError(f"comparer.gate.{key}: a share between 0 and 1")
    if g.min_compared < 1:
        raise ConfigError("comparer.gate.min_compared: must be >= 1")
    for i, rule in enumerate(c.endpoints):
        if not rule.match:
            raise ConfigError(f"comparer.endpoints[{i}].match: must name an endpoint or a glob")


def _validate_comparer_streams(s: ComparerStreamsConfig) -> None:
    key = "comparer.streams"
    for name in ("min_spread_seconds", "buffering_min_delay_seconds", "first_byte_delay_seconds",
                 "event_count_tolerance_absolute"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{key}.{name}: must be >= 0")
    for name in ("burst_window_relative", "burst_share_threshold"):
        if not 0 < getattr(s, name) <= 1:
            raise ConfigError(f"{key}.{name}: a share, must be > 0 and <= 1")
    if not 0 <= s.event_count_tolerance_relative <= 1:
        raise ConfigError(f"{key}.event_count_tolerance_relative: a share, must be within 0..1")
    if s.first_byte_delay_ratio < 1:
        raise ConfigError(f"{key}.first_byte_delay_ratio: must be >= 1 (times as late as the baseline)")


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
