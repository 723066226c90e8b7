"""Consumer-group lag of one process's consumer, in records and in seconds, for /metrics.

Every ``interval_seconds`` the monitor asks the bus (``Consumer.lag``) where the group
stands on each partition this process owns:

* **records** — end offset minus committed offset, summed over those partitions. Each
  member reports only its own partitions, so ``sum by (group)`` over the members of a
  group is the group's lag. Read but uncommitted messages count: they are not done.
* **seconds** — how long ago the oldest message the group has not finished arrived on
  the bus, the largest over those partitions (0 when nothing is left). A bus does not
  hand out arrival times cheaply, so they are estimated as kafka-lag-exporter does: each
  sample notes the partition's end offset and the time; the message at the committed
  offset arrived after the last sample whose end was at or below it and by the first
  sample whose end was past it (interpolated between the two). A message that was
  already there at this process's first sample gets that sample's time, so for a
  backlog older than the process the figure is a lower bound: "behind for at least
  this long", growing until the group catches up. Message timestamps are not used: a
  request's is its log time, which says nothing about keeping up when old logs replay.

Nothing is exported before the first sample. A failed sample keeps the previous figures
(logged once per failure streak): a lag figure is not worth stopping a stage for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from shadowreplay.contract.bus import PartitionLag
from shadowreplay.contract.bus.aio import AsyncConsumer
from shadowreplay.contract.errors import BusError

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0
#: End-offset samples kept per partition (only changes are kept: idle partitions cost nothing).
MAX_SAMPLES = 720


class PartitionHistory:
    """(end offset, time) samples of one partition, oldest first, only when the end moved."""

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=max_samples)

    def note(self, end: int, now: float) -> None:
        if not self._samples or end != self._samples[-1][0]:
            self._samples.append((end, now))

    def arrived(self, offset: int) -> float:
        """When the message at ``offset`` arrived (estimated; see the module docstring).
        Call after ``note``, with an offset below the last end noted."""
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= offset:
            samples.popleft()  # no later question needs it: committed offsets only grow
        end0, t0 = samples[0]
        if end0 > offset:
            return t0  # there before the first sample: at least this old
        for end1, t1 in samples:
            if end1 > offset:
                return t0 + (t1 - t0) * (offset - end0 + 1) / (end1 - end0)
            end0, t0 = end1, t1
        return samples[-1][1]


class LagMonitor:
    """Samples ``consumer``'s lag and exports it as two gauges labelled with ``group``:
    ``names`` = (records metric, seconds metric), e.g. the replayer's
    ``shadow_replay_consumer_lag_records`` and ``..._seconds``."""

    def __init__(
        self,
        consumer: AsyncConsumer,
        group: str,
        names: tuple[str, str],
        registry: CollectorRegistry,
        *,
        interval_seconds: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._group = group
        self._names = names
        self._interval = interval_seconds
        self._clock = clock
        self._history: dict[tuple[str, int], PartitionHistory] = {}
        self.records: int | None = None  # None until the first sample
        self.seconds = 0.0
        self._failing = False
        registry.register(self)

    def update(self, lags: Iterable[PartitionLag]) -> None:
        """Fold one sample of the owned partitions in (partitions no longer owned are forgotten)."""
        now = self._clock()
        records, seconds = 0, 0.0
        seen: set[tuple[str, int]] = set()
        for lag in lags:
            tp = (lag.topic, lag.partition)
            seen.add(tp)
            history = self._history.get(tp)
            if history is None:
                history = self._history[tp] = PartitionHistory()
            history.note(lag.end, now)
            if lag.records:
                records += lag.records
                seconds = max(seconds, now - history.arrived(lag.committed))
        for tp in set(self._history) - seen:
            del self._history[tp]
        self.records, self.seconds = records, seconds

    async def sample(self) -> bool:
        """Take one sample; False (the last figures kept) when the bus did not answer."""
        try:
            lags = await self._consumer.lag()
        except BusError as exc:
            if not self._failing:
                log.warning("consumer lag of group %s not read (kept the last figures): %s", self._group, exc)
            self._failing = True
            return False
        self._failing = False
        self.update(lags)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Sample now, then every interval until ``stop`` is set."""
        while not stop.is_set():
            await self.sample()
            try:
                await asyncio.wait_for(stop.wait(), self._interval)
            except TimeoutError:
                pass

    def describe(self) -> Sequence[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        if self.records is not None:
            yield from self._families(self.records, self.seconds)

    def _families(self, records: float | None = None, seconds: float | None = None) -> Iterator[Metric]:
        records_name, seconds_name = self._names
        families = (
            GaugeMetricFamily(records_name, "Messages the consumer group has not finished on the partitions "
                              "this process owns (end offset minus committed offset).", labels=["group"]),
            GaugeMetricFamily(seconds_name, "How long ago the oldest message the group has not finished arrived "
                              "on the bus (estimated from end offsets sampled every few seconds; 0 when caught up).",
                              labels=["group"]),
        )
        if records is not None and seconds is not None:
            families[0].add_metric([self._group], records)
            families[1].add_metric([self._group], seconds)
        yield from families
