"""The collector's Prometheus metrics, registered on a registry handed in.

Reasons are a small fixed vocabulary (``bad_time``, ``bad_record``, ``bad_entry``,
``bad_blob``, ``bad_frame``, ``bad_tag``, ``bad_option``, ``chunk_too_large``,
``decompressed_too_large``, ``bad_gzip``, ``unsupported_compression``, ``not_logs``,
``missing_method``, ``missing_target``, ``bad_time_field``, ``bad_encoding``, ...).

* ``rejected_total{reason}`` counts what was skipped while the connection went on:
  one per event, or one per refused frame.
* ``decode_errors_total{reason}`` counts fatal stream errors (``msgpack``,
  ``chunk_too_large``, ``truncated``): each closed one connection.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
            "Client connections closed at once because max_connections were open.",
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
