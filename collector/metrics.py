"""The collector's Prometheus metrics, registered on a registry handed in.

Reasons are a small fixed vocabulary, listed below.

* ``rejected_total{reason}`` counts what was skipped while the connection went on:
  one per event, or one per refused frame (``REJECT_REASONS``).
* ``decode_errors_total{reason}`` counts fatal stream errors (``DECODE_ERROR_REASONS``):
  each closed one connection.
* ``limit_hits_total{limit}`` counts hits of ``max_chunk_bytes``,
  ``max_decompressed_bytes``, ``max_record_bytes``, ``max_records_per_chunk``,
  ``max_memory_bytes`` (a connection had to wait for memory), ``max_connections`` and
  ``max_connections_per_address`` (each also logged once).
* ``connections_refused_total{reason}``: ``max_connections``, ``per_address`` or
  ``not_allowed``.
* ``connections_closed_total{reason}``: connections the collector closed by policy:
  ``shed`` (its slot went to a new connection), ``idle_timeout``, ``frame_timeout``,
  ``memory_budget``.
* ``auth_failures_total{reason}``: see ``AUTH_REASONS`` (plus ``timeout``).
* ``bodies_dropped_total{reason}``: request bodies left off their (published) record,
  ``unparseable_secret``: neither JSON nor a form, yet it may hold a secret field.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

#: Every reason an event or frame is rejected with, exported at 0 from the start so the
#: dashboard's rejected panel reads 0, not "No data", on a healthy pipeline (a unit test
#: checks the collector rejects with no other).
REJECT_REASONS = (
    "bad_time", "bad_record", "bad_entry", "bad_blob", "bad_frame", "bad_tag", "bad_option",
    "chunk_too_large", "decompressed_too_large", "bad_gzip", "unsupported_compression", "not_logs",
    "missing_method", "missing_target", "bad_request_line", "bad_method", "bad_time_field", "bad_encoding",
    "bad_json", "bad_ltsv", "bad_combined", "record_too_large", "too_many_records",
)
DECODE_ERROR_REASONS = ("msgpack", "chunk_too_large", "too_many_records", "truncated", "bad_stream", "tls_on_plain_port")
REFUSAL_REASONS = ("max_connections", "per_address", "not_allowed")

# PONG failure reason (Fluentd's wording) → metric label.
AUTH_REASONS = {
    "invalid ping message": "invalid_ping",
    "shared_key mismatch": "shared_key_mismatch",
    "username/password mismatch": "user_mismatch",
    "same hostname as the server": "same_hostname",
}


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "shadow_collector_records_total",
            "Request records published to the bus.",
            registry=registry,
        )
        self.frames = Counter(
            "shadow_collector_frames_total",
            "Forward-protocol frames decoded, by mode.",
            ["mode"],
            registry=registry,
        )
        self.rejected = Counter(
            "shadow_collector_rejected_total",
            "Events or whole frames skipped (the connection went on), by reason.",
            ["reason"],
            registry=registry,
        )
        self.bodies_dropped = Counter(
            "shadow_collector_bodies_dropped_total",
            "Request bodies left off their record (the record is published without one), by reason.",
            ["reason"],
            registry=registry,
        )
        self.chunks_acked = Counter(
            "shadow_collector_chunks_acked_total",
            "Chunks acknowledged after their records were durable on the bus.",
            registry=registry,
        )
        self.connections = Counter(
            "shadow_collector_connections_total",
            "Client connections accepted.",
            registry=registry,
        )
        self.connections_refused = Counter(
            "shadow_collector_connections_refused_total",
            "Client connections closed at once, by reason (max_connections, per_address, not_allowed).",
            ["reason"],
            registry=registry,
        )
        self.connections_closed = Counter(
            "shadow_collector_connections_closed_total",
            "Client connections the collector closed by policy, by reason "
            "(shed, idle_timeout, frame_timeout, memory_budget).",
            ["reason"],
            registry=registry,
        )
        self.memory_reserved = Gauge(
            "shadow_collector_memory_reserved_bytes",
            "Bytes of collector.max_memory_bytes that connections hold now.",
            registry=registry,
        )
        self.limit_hits = Counter(
            "shadow_collector_limit_hits_total",
            "Hits of a configured limit, by its config key.",
            ["limit"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "shadow_collector_auth_failures_total",
            "Shared-key handshakes refused (PONG false, then closed), by reason.",
            ["reason"],
            registry=registry,
        )
        self.auth_ok = Counter(
            "shadow_collector_auth_successes_total",
            "Shared-key handshakes that succeeded.",
            registry=registry,
        )
        self.tls_failures = Counter(
            "shadow_collector_tls_handshake_failures_total",
            "TLS handshakes that failed (no certificate, bad certificate, plain text, timeout).",
            registry=registry,
        )
        self.udp_heartbeats = Counter(
            "shadow_collector_udp_heartbeats_total",
            "UDP heartbeat datagrams answered.",
            registry=registry,
        )
        self.connections_active = Gauge(
            "shadow_collector_connections_active",
            "Client connections open now.",
            registry=registry,
        )
        self.decode_errors = Counter(
            "shadow_collector_decode_errors_total",
            "Fatal stream errors, each of which closed its connection, by reason.",
            ["reason"],
            registry=registry,
        )
        self.bus_errors = Counter(
            "shadow_collector_bus_errors_total",
            "Failed publishes to the bus (the connection was closed without an ack).",
            registry=registry,
        )
        self.received_bytes = Counter(
            "shadow_collector_received_bytes_total",
            "Bytes read from clients.",
            registry=registry,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for reason in DECODE_ERROR_REASONS:
            self.decode_errors.labels(reason)
        for reason in REFUSAL_REASONS:
            self.connections_refused.labels(reason)
