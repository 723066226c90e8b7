"""The live status line of ``run``, ``collect``, ``replay`` and ``compare``: rate, lag
and divergence at a glance.

On a terminal one line is redrawn every second (log lines print above it); when the
output is not a terminal (systemd, a pipe) the same figures are logged at INFO every
``log_every_seconds`` instead. Figures come from the pipeline's Prometheus registry,
so the line shows exactly what ``/metrics`` and the dashboards show. Each stage's
figures appear only in a process that runs that stage: a lone comparer does not print
a replay rate of 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TextIO

from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

CLEAR_LINE = "\r\x1b[2K"

#: Metric name → the sum of its samples is read into a Snapshot field.
SAMPLES = {
    "shadow_collector_records_total": "received",
    "shadow_collector_rejected_total": "rejected",
    "shadow_replay_records_total": "replayed",
    "shadow_replay_due_total": "due",
    "shadow_replay_bus_lag_seconds": "behind",
    "shadow_replay_inflight": "inflight",
    "shadow_compare_compared_total": "compared",
    "shadow_compare_matched_total": "matched",
    "shadow_compare_consumer_lag_records": "unread",
    "shadow_replay_dropped_total": "dropped",
    "shadow_replay_skipped_total": "skipped",
    "shadow_replay_late_total": "late",
}
STAGES = ("collect", "replay", "compare")


@dataclass(frozen=True)
class Snapshot:
    """Totals read from the registry at ``at`` (monotonic seconds)."""

    at: float
    received: float = 0.0
    rejected: float = 0.0
    replayed: float = 0.0
    due: float = 0.0
    behind: float = 0.0
    inflight: float = 0.0
    compared: float = 0.0
    matched: float = 0.0
    unread: float = 0.0
    dropped: float = 0.0
    skipped: float = 0.0
    late: float = 0.0


def snapshot(registry: CollectorRegistry, at: float | None = None) -> Snapshot:
    """Sum each metric of ``SAMPLES`` over its labels."""
    values: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            field = SAMPLES.get(sample.name)
            if field is not None:
                values[field] = values.get(field, 0.0) + sample.value
    return Snapshot(at=time.monotonic() if at is None else at, **values)


def format_status(prev: Snapshot, cur: Snapshot, stages: tuple[str, ...] = STAGES) -> str:
    """One line: rates over ``prev → cur``, lag now, divergence since start; only the
    figures of ``stages`` (those this process runs)."""
    seconds = max(cur.at - prev.at, 1e-9)

    def rate(name: str) -> float:
        return max(0.0, getattr(cur, name) - getattr(prev, name)) / seconds

    parts = []
    if "collect" in stages:
        parts.append(f"in {rate('received'):.1f}/s")
        if cur.rejected:
            parts.append(f"rejected {cur.rejected:.0f}")
    if "replay" in stages:
        parts += [
            f"replay {rate('replayed'):.1f}/s of {rate('due'):.1f}/s due",
            f"behind {cur.behind:.2f}s",
            f"inflight {cur.inflight:.0f}",
        ]
        # Records the replayer did not send on time, or at all (late counts dropped ones too).
        for name in ("late", "dropped", "skipped"):
            if getattr(cur, name):
                parts.append(f"{name} {getattr(cur, name):.0f}")
    if "compare" in stages:
        diverged = cur.compared - cur.matched
        share = f"{100.0 * diverged / cur.compared:.1f}%" if cur.compared else "-"
        parts += [f"compared {cur.compared:.0f}", f"diverged {diverged:.0f} ({share})"]
        if "replay" not in stages:  # alone, whether it keeps up is the question
            parts.append(f"unread {cur.unread:.0f}")
    return " · ".join(parts)


class _ClearBeforeLog(logging.Filter):
    """Erases the status line before a log line is written to the same terminal."""

    def __init__(self, status: StatusLine) -> None:
        super().__init__()
        self._status = status

    def filter(self, record: logging.LogRecord) -> bool:
        self._status.clear()
        return True


class StatusLine:
    """Prints the status of ``stages`` on ``out`` while ``run`` runs; ``tty`` defaults to
    ``out.isatty()``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        out: TextIO,
        *,
        stages: tuple[str, ...] = STAGES,
        tty: bool | None = None,
        interval_seconds: float = 1.0,
        log_every_seconds: float = 30.0,
    ) -> None:
        self._registry = registry
        self._out = out
        self._stages = stages
        self.tty = out.isatty() if tty is None else tty
        self._interval = interval_seconds if self.tty else log_every_seconds
        self._shown = False

    def clear(self) -> None:
        if self._shown:
            self._out.write(CLEAR_LINE)
            self._out.flush()
            self._shown = False

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: redraw (terminal) or log (otherwise) every interval."""
        handlers = logging.getLogger().handlers if self.tty else []
        guard = _ClearBeforeLog(self)
        for handler in handlers:
            handler.addFilter(guard)
        prev = snapshot(self._registry)
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), self._interval)
                except TimeoutError:
                    pass
                cur = snapshot(self._registry)
                line = format_status(prev, cur, self._stages)
                prev = cur
                if self.tty:
                    self._out.write(CLEAR_LINE + line)
                    self._out.flush()
                    self._shown = True
                else:
                    log.info("status: %s", line)
        finally:
            if self.tty and self._shown:
                self._out.write("\n")
                self._out.flush()
                self._shown = False
            for handler in handlers:
                handler.removeFilter(guard)
