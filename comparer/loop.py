"""The comparer's consume → compare → count loop.

Results are polled in batches from the bus, each one decoded, compared and counted
(Prometheus metrics and in-memory per-endpoint stats), and the batch is committed only
once every message in it has been handled (at-least-once). A message that cannot be
decoded or compared is counted under ``shadow_compare_errors_total{reason}``, logged,
and skipped; it is still committed, since replaying it would fail the same way.

Diverging results go to an optional :class:`~comparer.diff.DivergenceSink` (the
divergence store): ``add(result, verdict)`` for each diverging verdict, then ``flush()``
once per batch, before the batch's offsets are committed. Both are called on the event
loop's thread and should be quick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from comparer.diff import Differ, DivergenceSink, Verdict
from comparer.metrics import ComparerMetrics
from comparer.noise import OTHER_FIELDS, FieldStat, NoiseTable, NoiseThresholds
from shadowreplay.bus.aio import AsyncConsumer
from shadowreplay.bus.base import Message
from shadowreplay.config import ComparerConfig
from shadowreplay.errors import RecordError
from shadowreplay.record import ReplayResult, decode_result

log = logging.getLogger(__name__)

__all__ = ["Comparer", "DivergenceSink", "EndpointSummary", "FieldStat", "format_table"]

#: Distinct field paths remembered per endpoint; further new paths are pooled here.
MAX_FIELDS_PER_ENDPOINT = 256
#: Field paths kept in an EndpointSummary.
SUMMARY_TOP_FIELDS = 10
#: Give the event loop a turn after this much uninterrupted comparing.
_YIELD_AFTER_SECONDS = 0.02


@dataclass(frozen=True)
class EndpointSummary:
    """Per-endpoint totals since the comparer started."""

    endpoint: str
    compared: int
    diverged: int
    kinds: dict[str, int]
    fields: dict[str, int]
    noisy: int = 0  # compared results in which some difference was cancelled as noise

    @property
    def rate(self) -> float:
        """Fraction of compared results that diverged (0.0 when none compared)."""
        return self.diverged / self.compared if self.compared else 0.0


@dataclass
class _EndpointStats:
    compared: int = 0
    diverged: int = 0
    noisy: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    fields: dict[str, int] = field(default_factory=dict)

    def add(self, verdict: Verdict) -> None:
        self.compared += 1
        self.noisy += bool(verdict.noise)
        if not verdict.diverged:
            return
        self.diverged += 1
        kinds = {d.kind for d in verdict.diffs}
        for kind in kinds:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        for path in {d.path for d in verdict.diffs}:
            if path not in self.fields and len(self.fields) >= MAX_FIELDS_PER_ENDPOINT:
                path = OTHER_FIELDS
            self.fields[path] = self.fields.get(path, 0) + 1


class Comparer:
    """Consumes ReplayResults from ``consumer`` and compares each one.

    ``compared`` and ``diverged`` count results since start; ``skipped`` counts those
    that could not be compared at all. Bus errors from poll or commit propagate out of
    :meth:`run` (the caller decides whether to restart).

    ``store`` receives every diverging result (see the module docstring); ``differ``
    defaults to ``Differ(config)`` (raises ConfigError on a bad route or path pattern).
    :meth:`summary` and :meth:`field_stats` are the in-memory views since start.
    """

    def __init__(
        self,
        config: ComparerConfig,
        consumer: AsyncConsumer,
        metrics: ComparerMetrics,
        *,
        store: DivergenceSink | None = None,
        differ: Differ | None = None,
        max_batch: int = 500,
        poll_timeout_seconds: float = 0.5,
    ) -> None:
        self._config = config
        self._consumer = consumer
        self._metrics = metrics
        self._store = store
        self.differ = differ if differ is not None else Differ(config)
        self._noise = NoiseTable(
            NoiseThresholds(config.noise_relative_threshold, config.noise_absolute_threshold),
            MAX_FIELDS_PER_ENDPOINT,
        )
        self._max_batch = max_batch
        self._poll_timeout = poll_timeout_seconds
        self._endpoints = metrics.endpoints  # the same bound for labels and summary keys
        self._stats: dict[str, _EndpointStats] = {}
        self.compared = 0
        self.diverged = 0
        self.skipped = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Poll, compare and commit until ``stop`` is set; the current batch is finished first."""
        while not stop.is_set():
            messages = await self._consumer.poll(self._max_batch, self._poll_timeout)
            if not messages:
                continue
            await self._handle_batch(messages)
            if self._store is not None:
                self._store.flush()
            await self._consumer.commit(messages)

    async def _handle_batch(self, messages: Sequence[Message]) -> None:
        started = time.monotonic()
        for message in messages:
            self.handle(message)
            if time.monotonic() - started > _YIELD_AFTER_SECONDS:
                await asyncio.sleep(0)
                started = time.monotonic()

    def handle(self, message: Message) -> Verdict | None:
        """Decode, compare and count one bus message; None when it could not be decoded."""
        try:
            result = decode_result(message.value)
        except RecordError as exc:
            self._skip("undecodable", message, str(exc))
            return None
        return self.handle_result(result)

    def handle_result(self, result: ReplayResult) -> Verdict:
        """Compare and count one decoded result."""
        try:
            verdict = self.differ.compare(result)
        except Exception:  # a bug in the diff engine must not stop the stream
            log.exception("comparing result %s failed", result.id)
            verdict = Verdict(result.endpoint, "", (), "compare_failed")
        self._metrics.observe(result, verdict)
        if verdict.error is not None:
            self.skipped += 1
            if self.skipped == 1 or self.skipped % 1000 == 0:
                log.warning(
                    "result %s not compared: %s (%d skipped so far)",
                    result.id,
                    verdict.error,
                    self.skipped,
                )
            return verdict
        self.compared += 1
        self.diverged += verdict.diverged
        key = self._endpoints(verdict.endpoint)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = _EndpointStats()
        stats.add(verdict)
        self._noise.add(key, verdict)
        if verdict.diverged and self._store is not None:
            self._store.add(result, verdict)
        return verdict

    def _skip(self, reason: str, message: Message, detail: str) -> None:
        self._metrics.error(reason)
        self.skipped += 1
        if self.skipped == 1 or self.skipped % 1000 == 0:
            log.warning(
                "skipping %s message %s[%d]@%d: %s (%d skipped so far)",
                reason,
                message.topic,
                message.partition,
                message.offset,
                detail,
                self.skipped,
            )

    def summary(self) -> list[EndpointSummary]:
        """Per-endpoint totals, highest divergence rate first, then most compared."""
        out = [
            EndpointSummary(
                endpoint=name,
                compared=s.compared,
                diverged=s.diverged,
                kinds=dict(sorted(s.kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
                fields=dict(
                    sorted(s.fields.items(), key=lambda kv: (-kv[1], kv[0]))[:SUMMARY_TOP_FIELDS]
                ),
                noisy=s.noisy,
            )
            for name, s in self._stats.items()
        ]
        out.sort(key=lambda e: (-e.rate, -e.compared, e.endpoint))
        return out

    def field_stats(self, endpoint: str) -> list[FieldStat]:
        """Per-field raw and noise counts of ``endpoint`` (a name as in :meth:`summary`),
        real divergences first (the aggregate rule of ``comparer.noise``)."""
        return self._noise.field_stats(endpoint)


def format_table(summaries: Sequence[EndpointSummary], top_fields: int = 3) -> str:
    """A plain-text table for the terminal: endpoint, compared, diverged, rate, top fields."""
    header = ("endpoint", "compared", "diverged", "rate", "top diverging fields")
    rows = [
        (
            s.endpoint,
            str(s.compared),
            str(s.diverged),
            f"{100.0 * s.rate:.1f}%",
            ", ".join(f"{path} ({n})" for path, n in list(s.fields.items())[:top_fields]) or "-",
        )
        for s in summaries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: tuple[str, str, str, str, str]) -> str:
        return "  ".join(
            [
                r[0].ljust(widths[0]),
                r[1].rjust(widths[1]),
                r[2].rjust(widths[2]),
                r[3].rjust(widths[3]),
                r[4],
            ]
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])
