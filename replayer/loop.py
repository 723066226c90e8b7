"""Consume RequestRecords, send each to the targets when due, publish ReplayResults, commit.

Three tasks share the work:

* the poll loop takes small batches from the bus, decodes them, applies the window
  (``--from``/``--to``, see below) and the rules, and pushes the records on a heap
  ordered by their speed-schedule due time, then their logged time, then log order
  (the collector's ingest sequence ``seq``, then partition and offset). It stops
  taking messages while too many polled ones are not yet committed (bounded memory, no
  unbounded queue), but keeps polling for nothing meanwhile so the group neither waits
  for nor drops this member. That heap is the reorder window: records polled out of
  timestamp order are sent in due order as long as they arrive before they are due;
  later ones are late (measured, sent or dropped by policy), never a reason to sleep;
* the scheduler pops the heap in due order, passes each due time through the group's
  gap cuts (``replayer/gaps.py``) and the Pacer (``--rate``), sleeps until it (absolute
  wall-clock times, re-checked after every wake-up, since timers may fire early), waits
  for a concurrency slot and starts the send. Lateness is judged once a slot is free: a
  request that waited for one is never dropped as late;
* the flusher publishes results as they come (one bus flush for all that piled up
  during the previous one) and then, partition by partition, commits the longest
  prefix of messages that are done — an offset is committed only once the results of
  it and of every message before it in its partition are durable (at-least-once).

Windows (``[from, to)``, lateness L): records may be out of time order within a
partition by up to L. The replayer seeks to ``from - L`` and skips what is before
``from``; it reads a partition until a record at ``to + L`` or later, sending the
in-window records it meets on the way. The first record at or past ``to`` in a
partition is the commit ceiling: nothing at or after it is committed, so the next
window (``--from to``, which seeks to ``to - L``) finds every record of its own, and
skips those before its start that this one sent.

The anchor: the group's (``replayer/control.py``: set by ``replay start`` or claimed by
the first replayer), or, anchoring locally, this process's own. Either way the replayer
waits (briefly) until every partition it owns has delivered a record, so the smallest
timestamp of the window's start, not that of whichever partition answered first, is
what a new anchor starts from. When the group rebalances, records of partitions this
member lost and not yet sent are forgotten (their new owner replays them).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from shadowreplay.replayer.client import TargetClient
from shadowreplay.replayer.control import GroupSchedule
from shadowreplay.replayer.gaps import Timeline
from shadowreplay.replayer.metrics import HistogramBatch, ReplayerMetrics
from shadowreplay.replayer.probe import ProbeSampler
from shadowreplay.replayer.rules import Rules
from shadowreplay.replayer.schedule import EARLY_TOLERANCE_NS, STALE_ANCHOR_SECONDS, Anchor, Pacer
from shadowreplay.replayer.window import parse_window
from shadowreplay.contract.bus.aio import AsyncConsumer, AsyncProducer, AsyncReader
from shadowreplay.contract.bus.base import Message
from shadowreplay.contract.config import TARGET_NAMES, ReplayerConfig
from shadowreplay.contract.endpoint import endpoint_name
from shadowreplay.contract.errors import BusError, ConfigError, RecordError
from shadowreplay.contract.record import (
    PROBE,
    ReplayResult,
    RequestRecord,
    Response,
    decode_request,
    encode_result,
)

log = logging.getLogger(__name__)

POLL_MAX_RECORDS = 200
# The window of messages polled but not yet committed (heap, in flight, results not yet
# durable): polling pauses at either cap. It must cover what a flat-out replay sends
# while a flush and a commit are under way (longer under load, when the bus threads wait
# for the GIL), or the heap runs dry and sending stalls; a smaller window did, in
# bench/replayer.py's throughput runs. The bytes cap bounds memory when records carry
# large bodies.
MAX_PENDING = 8192
MAX_PENDING_BYTES = 64 * 1024 * 1024
POLL_MIN_ROOM = 100
# How often the poll loop asks the bus which partitions this member owns (a rebalance
# is noticed within this, plus the bus's own delay).
ASSIGNMENT_CHECK_SECONDS = 0.2
POLL_TIMEOUT_SECONDS = 0.2
# With the window full, a poll that takes nothing keeps the membership alive this often.
KEEP_ALIVE_SECONDS = 0.2
# The flusher publishes (and commits) at most this often: results that come during the
# wait share one bus transaction, which costs about as much as one result alone.
FLUSH_INTERVAL_SECONDS = 0.02
BUS_RETRY_SECONDS = 1.0
BUS_ATTEMPTS = 5
# A replayer waits at most this long for its other partitions' first records before anchoring.
ANCHOR_WAIT_SECONDS = 0.5
# With --to and no idle_exit_seconds: exit once idle this long with nothing left to do.
WINDOW_IDLE_EXIT_SECONDS = 2.0
# The gap cutter reads the log at most this far (log time) past what the scheduler asked for.
TIMELINE_AHEAD_SECONDS = 600.0
# While the group rebalances, the scheduler looks again this often; one log line per rebalance.
REBALANCE_WAIT_SECONDS = 0.05
REBALANCE_LOG_SECONDS = 5.0

_Item = tuple[bytes | None, bytes, int | None]
_TP = tuple[str, int]
# (due ns, logged ts, seq, partition, offset, record, slot): equal due times go out by
# logged time, then in log order.
_HeapItem = tuple[int, int, int, int, int, RequestRecord, "_Slot"]


@dataclass(eq=False, slots=True)
class _Slot:
    """One polled message; ``done`` once skipped or its result is durable on the bus."""

    message: Message
    done: bool = False
    dropped: bool = False  # its partition was revoked before it was sent
    # False past its partition's commit ceiling (see the module docstring): it is never
    # committed, so it leaves the window as soon as it is done.
    tracked: bool = True


def build_targets(config: ReplayerConfig) -> dict[str, TargetClient]:
    """One TargetClient per configured target, with its per-target overrides."""
    out: dict[str, TargetClient] = {}
    for name in TARGET_NAMES:
        url = getattr(config, name)
        if not url:
            continue
        opts = getattr(config.targets, name)
        out[name] = TargetClient(
            name,
            url,
            timeout_seconds=opts.timeout_seconds or config.timeout_seconds,
            max_body_bytes=config.max_body_bytes,
            concurrency=opts.concurrency or config.concurrency,
            keep_host=config.keep_host,
            tls_verify=opts.tls_verify,
            streams=config.streams,
        )
    return out


class Replayer:
    """The consume → schedule → send → publish → commit loop of one replayer process.

    ``anchor``: a fixed anchor (tests, benchmarks); ``schedule``: the group's (see
    ``replayer/control.py``), which may also give the window's start and claims the
    group's anchor when none is in force. With neither, the replayer anchors itself.
    """

    def __init__(
        self,
        config: ReplayerConfig,
        consumer: AsyncConsumer,
        producer: AsyncProducer,
        results_topic: str,
        metrics: ReplayerMetrics,
        anchor: Anchor | None = None,
        *,
        schedule: GroupSchedule | None = None,
    ) -> None:
        if not config.candidate:
            raise ConfigError("replayer.candidate: a candidate target URL is required")
        if config.follow and not config.speed > 1:
            log.warning(
                "replayer.follow has no effect at speed %s: only a replay faster than recorded catches up "
                "with the present. To shadow live traffic at recorded speed, anchor the group at the present "
                "instead: `shadowreplay replay start --group %s --speed 1 --from now --at +1s` (each record goes "
                "out 1 s after it was logged)",
                config.speed or "0 (rate only)", config.group,
            )
        self._config = config
        self._consumer = consumer
        self._producer = producer
        self._results_topic = results_topic
        self._metrics = metrics
        self._schedule = schedule
        self.anchor = anchor if anchor is not None or schedule is None else schedule.anchor
        self.replayed = 0
        self.late_sent = 0  # replayed later than late_after_seconds after their due time
        self.dropped_late = 0
        self.dispatched = 0  # records taken off the schedule heap (see schedule_position)
        self.skipped: dict[str, int] = {}  # by reason
        self.held = 0  # records at or past --to: left uncommitted for the next window
        self.targets = build_targets(config)
        self._names = tuple(self.targets)
        self._rules = Rules(config.methods, config.rules)
        self._probes = ProbeSampler(config)  # noise evidence without a secondary
        self._rotation = itertools.count()
        self._window_from, self._window_to = parse_window(config.window_from, config.window_to)
        if self._window_from is None and schedule is not None and schedule.window_from_ns is not None:
            self._window_from = schedule.window_from_ns  # `replay start --from T`: the group's window starts at T
        self._lateness_ns = int(config.lateness_seconds * 1e9)
        self._late_after_ns = int(config.late_after_seconds * 1e9)
        self._drop_late = config.late_policy == "drop"
        self._pacer: Pacer | None = None
        self._timeline: Timeline | None = None
        self._timeline_moved = asyncio.Event()
        self._timeline_wanted = 0  # the largest log time the scheduler asked a cut for
        concurrency = max(c.concurrency for c in self.targets.values())
        # Messages polled but not yet committed; polling pauses at the cap.
        self._max_pending = max(MAX_PENDING, 16 * concurrency)
        self._pending = 0
        self._pending_bytes = 0  # of the polled messages' values: large bodies fill the window sooner
        # Results and the offsets they complete in one bus transaction, where the bus can
        # (asked when the run starts).
        self._commit_in_flush = False
        self._slots: dict[_TP, deque[_Slot]] = {}  # per partition, in offset order, up to the ceiling
        self._loose: dict[_TP, set[_Slot]] = {}  # per partition, past the ceiling, not yet done
        self._ceiling: dict[_TP, int] = {}  # offset of the first record at or past --to
        self._finished: set[_TP] = set()  # partitions read past --to plus the lateness
        self._assigned: set[_TP] = set()
        self._unflushed: list[tuple[_Slot, _Item]] = []
        self._heap: list[_HeapItem] = []
        self._prebuffer: list[tuple[RequestRecord, _Slot]] = []  # until anchored
        self._prebuffer_since: float | None = None
        self._claiming: asyncio.Task[Anchor] | None = None
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Future[None] | None = None
        self._progress = asyncio.Event()  # a result or a skipped message: the flusher has work
        self._capacity = asyncio.Event()  # a commit freed room for more polling
        self._closing = False
        self._skip_logged: set[str] = set()
        self._rebalance_noted = -REBALANCE_LOG_SECONDS
        self._held = False  # sends held across a rebalance (see _schedule_loop)
        self._failure: BaseException | None = None
        # Metric children looked up once, not per request.
        self._ok: dict[str, Counter] = {n: metrics.requests.labels(target=n, outcome="ok") for n in self._names}
        self._err: dict[str, Counter] = {n: metrics.requests.labels(target=n, outcome="error") for n in self._names}
        # Latencies and lags are added to their histograms at every flush, in batches.
        self._resp = {n: HistogramBatch(metrics.response_seconds.labels(target=n)) for n in self._names}
        self._lag = HistogramBatch(metrics.schedule_lag)
        metrics.inflight.set_function(lambda: len(self._tasks))  # read at scrape time, not per request
        # Per-record counts are kept here and added to the counters at every flush (a few
        # per second at least), which costs one locked increment per batch, not per record.
        self._uncounted: dict[Counter, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Replay until ``stop`` is set (or idle for ``idle_exit_seconds``, or past
        ``window_to``), then drain.

        On the way out, requests already sent are finished, their results flushed and
        every partition's done prefix committed; records not yet sent are left
        uncommitted for the next consumer of the group.
        """
        self._commit_in_flush = self._producer.commits_for(self._consumer)
        for client in self.targets.values():
            await client.start()
        log.info(
            "replayer started: targets=%s speed=%s rate=%s concurrency=%s window=%s..%s lateness=%ss http client=%s",
            {n: c.base_url for n, c in self.targets.items()},
            self._config.speed,
            self._config.rate,
            {n: c.concurrency for n, c in self.targets.items()},
            self._window_from,
            self._window_to,
            self._config.lateness_seconds,
            self._config.http_client,
        )
        if self._window_from is not None:
            # Records up to the lateness before the window's start may still be followed
            # by some of the window's own: read from there, skip what is before it.
            await self._consumer.seek_to_time(self._window_from - self._lateness_ns)
        if self.anchor is not None:
            self._log_anchor(self.anchor)
            self._start_pacer(self.anchor)
        scheduler = asyncio.create_task(self._schedule_loop(), name="replayer-scheduler")
        flusher = asyncio.create_task(self._flush_loop(), name="replayer-flusher")
        timeline = asyncio.create_task(self._timeline_loop(), name="replayer-timeline")
        try:
            await self._poll_loop(stop, (scheduler, flusher, timeline))
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
            if self._tasks:
                await asyncio.wait(set(self._tasks))  # each is bounded by the request timeout
            self._closing = True
            self._progress.set()
            await flusher
            self._raise_if_failed()
            log.info("replayer stopped: %s", self.summary())
        finally:
            leftovers: list[asyncio.Task[Any]] = [scheduler, flusher, timeline, *self._tasks]
            if self._claiming is not None:
                leftovers.append(self._claiming)
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
            for client in self.targets.values():
                await client.close()

    def summary(self, now_ns: int | None = None) -> str:
        """What became of every record taken from the bus, in words (the exit log line)."""
        now = time.time_ns() if now_ns is None else now_ns
        parts = [f"{self.replayed} records replayed ({self.late_sent} late)"]
        if self.dropped_late:
            parts.append(f"{self.dropped_late} dropped as late (late_policy = drop)")
        if self.skipped:
            parts.append("skipped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())))
        if self.held:
            parts.append(f"{self.held} at or past --to left for the next window")
        waiting = [item for item in self._heap if not item[6].dropped]
        overdue = sum(1 for item in waiting if item[0] <= now)
        unanchored = len(self._prebuffer)
        if waiting or unanchored:
            left = []
            if overdue:
                left.append(f"{overdue} due but not yet sent")
            if len(waiting) - overdue:
                left.append(f"{len(waiting) - overdue} not yet due")
            if unanchored:
                left.append(f"{unanchored} not yet scheduled")
            parts.append("left uncommitted for the group: " + ", ".join(left))
        return "; ".join(parts)

    # -- polling -------------------------------------------------------------------------

    async def _poll_loop(self, stop: asyncio.Event, helpers: tuple[asyncio.Task[None], ...]) -> None:
        idle_exit = self._config.idle_exit_seconds
        if idle_exit <= 0 and self._window_to is not None:
            idle_exit = WINDOW_IDLE_EXIT_SECONDS
        idle_since: float | None = None
        next_assignment_check = 0.0
        while not stop.is_set():
            for task in helpers:
                if task.done():
                    task.result()  # re-raises its failure
                    raise RuntimeError(f"{task.get_name()} ended unexpectedly")
            self._raise_if_failed()
            self._claimed()
            if self._window_done():
                log.info("replayer reached the end of the window (%d ns) on every partition it owns: exiting",
                         self._window_to)
                return
            room = self._max_pending - self._pending
            if self._pending_bytes >= MAX_PENDING_BYTES:
                room = 0
            # Poll in batches: a trickle of one-record polls (room freed by each commit)
            # costs more than it feeds while the heap still has work.
            if room <= 0 or (room < POLL_MIN_ROOM and self._heap):
                # Not anchored yet and the window full of records waiting for it (partitions
                # that never answer): anchor by time here, or nothing would ever free room.
                self._maybe_anchor()
                self._capacity.clear()
                try:
                    await asyncio.wait_for(self._capacity.wait(), KEEP_ALIVE_SECONDS)
                except TimeoutError:
                    await self._poll(0)  # no room: keep the membership alive all the same
                    await self._check_assignment()
                continue
            messages = await self._poll(min(POLL_MAX_RECORDS, room))
            now = time.monotonic()
            if now >= next_assignment_check or self.anchor is None or self._held:
                next_assignment_check = now + ASSIGNMENT_CHECK_SECONDS
                await self._check_assignment()
            if messages:
                idle_since = None
                self._accept(messages)
            self._maybe_anchor()
            if not messages:
                # Idle only counts once the member has its partitions (a Kafka join takes seconds).
                if idle_exit > 0 and self._pending == 0 and self._claiming is None and self._consumer.joined():
                    now = time.monotonic()
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= idle_exit:
                        log.info("replayer idle for %.1fs with all work done: exiting", idle_exit)
                        return
                else:
                    idle_since = None

    def _window_done(self) -> bool:
        return (
            self._window_to is not None
            and bool(self._assigned)
            and self._assigned <= self._finished
            and self._pending == 0
        )

    async def _poll(self, max_records: int) -> list[Message]:
        try:
            return await self._consumer.poll(max_records, POLL_TIMEOUT_SECONDS if max_records else 0.0)
        except BusError as exc:
            if not exc.retriable:
                raise
            log.warning("bus poll failed, retrying in %.0fs: %s", BUS_RETRY_SECONDS, exc)
            await asyncio.sleep(BUS_RETRY_SECONDS)
            return []

    async def _check_assignment(self) -> None:
        # Assignments change only inside a poll, and the poll loop (this caller) is the only
        # one polling: a group settled before this read is settled for the assignment read.
        settled = not self._consumer.rebalancing()
        assigned = set(await self._consumer.assignment())
        if assigned != self._assigned:
            lost = self._assigned - assigned
            self._assigned = assigned
            self._metrics.assigned_partitions.set(len(assigned))
            log.info("replayer owns partitions %s", sorted(p for _, p in assigned))
            if lost:
                self._forget(lost)
        if settled and self._held:
            self._held = False
            self._kick()

    def _forget(self, lost: set[_TP]) -> None:
        """Drop what is buffered for partitions this member no longer owns."""
        for tp in lost:
            for slot in [*self._slots.pop(tp, ()), *self._loose.pop(tp, ())]:
                slot.dropped = True
                self._pending -= 1
                self._pending_bytes -= len(slot.message.value)
            self._finished.discard(tp)
            self._ceiling.pop(tp, None)
        before = len(self._heap)
        self._heap = [item for item in self._heap if not item[6].dropped]
        heapq.heapify(self._heap)
        self._prebuffer = [(r, s) for r, s in self._prebuffer if not s.dropped]
        if before != len(self._heap):
            log.info("rebalance: %d buffered records of lost partitions left to their new owner",
                     before - len(self._heap))
        self._capacity.set()
        self._kick()

    def _accept(self, messages: list[Message]) -> None:  # noqa: C901 - one pass over the window rules
        records: list[tuple[RequestRecord, _Slot]] = []
        skipped: dict[str, int] = {}
        rule_hits: dict[tuple[str, str], int] = {}
        lo, hi = self._window_from, self._window_to
        stop_at = None if hi is None else hi + self._lateness_ns
        for message in messages:
            tp = (message.topic, message.partition)
            if tp in self._finished:
                continue  # read past --to plus the lateness: nothing of the window can follow
            try:
                record = decode_request(message.value)
            except RecordError as exc:
                record = None
                log.debug("undecodable record at %s/%d@%d: %s",
                          message.topic, message.partition, message.offset, exc)
            ts = message.timestamp_ns if record is None else record.ts
            if hi is not None and ts >= hi:
                # The next window's: never committed past, so it finds it there.
                self._ceiling.setdefault(tp, message.offset)
                self.held += 1
                if stop_at is not None and ts >= stop_at:
                    self._finished.add(tp)
                continue
            loose = tp in self._ceiling
            if loose and lo is not None and ts < lo:
                continue  # before the window, past the ceiling: nothing to do, nothing to commit
            slot = _Slot(message, tracked=not loose)
            if loose:
                self._loose.setdefault(tp, set()).add(slot)
            else:
                self._slots.setdefault(tp, deque()).append(slot)
            self._pending += 1
            self._pending_bytes += len(message.value)
            reason: str | None = None
            if record is None:
                reason = "bad_record"
            elif lo is not None and ts < lo:
                reason = "outside_window"
            else:
                outcome = self._rules.apply(record)
                for label in outcome.acted:
                    key = (label, "drop" if label == outcome.dropped_by else "rewrite")
                    rule_hits[key] = rule_hits.get(key, 0) + 1
                if outcome.record is None:
                    by = outcome.dropped_by or ""
                    reason = ("method_not_allowed" if by == "methods"
                              else "sampled_out" if by.endswith(":sample") else "filtered")
                else:
                    records.append((outcome.record, slot))
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + 1
                self._done(slot)
        for (label, action), count in rule_hits.items():
            self._metrics.rule_hits.labels(rule=label, action=action).inc(count)
        for reason, count in skipped.items():
            self._metrics.skipped.labels(reason=reason).inc(count)
            self.skipped[reason] = self.skipped.get(reason, 0) + count
            if reason in self._skip_logged:
                log.debug("skipped %d records: %s", count, reason)
            else:
                self._skip_logged.add(reason)
                log.warning("skipped %d records: %s (further ones are counted in shadow_replay_skipped_total "
                            "and the exit summary)", count, reason)
        if self.anchor is None:
            if records and self._prebuffer_since is None:
                self._prebuffer_since = time.monotonic()
            self._prebuffer.extend(records)
        else:
            for record, slot in records:
                self._push(record, slot)
        if skipped:
            self._progress.set()  # skipped messages are done: committable in their turn

    def _done(self, slot: _Slot) -> None:
        """``slot`` needs nothing more; past the ceiling it leaves the window at once."""
        slot.done = True
        if not slot.tracked and not slot.dropped:
            loose = self._loose.get((slot.message.topic, slot.message.partition))
            if loose is not None:
                loose.discard(slot)
            self._pending -= 1
            self._pending_bytes -= len(slot.message.value)
            self._capacity.set()

    def _maybe_anchor(self) -> None:
        """Anchor once every owned partition has answered (or ANCHOR_WAIT_SECONDS passed):
        on the group's anchor (claimed now if none is in force) or, anchoring locally,
        on the smallest timestamp polled."""
        if self.anchor is not None or self._claiming is not None or not self._prebuffer:
            return
        if self._prebuffer_since is None:
            return
        seen = {(s.message.topic, s.message.partition) for _, s in self._prebuffer}
        waited = time.monotonic() - self._prebuffer_since
        if not (self._assigned and self._assigned <= seen) and waited < ANCHOR_WAIT_SECONDS:
            return
        first = min(r.ts for r, _ in self._prebuffer)
        if self._schedule is not None and self._schedule.claims:
            self._claiming = asyncio.create_task(self._schedule.claim(first), name="replayer-claim")
            self._claiming.add_done_callback(lambda _: self._kick_poll())
            return
        cfg = self._config
        follow = int(cfg.follow_delay_seconds * 1e9) if cfg.follow else None
        speed = cfg.speed if cfg.speed > 0 else 1.0  # rate without ceiling: ts only orders
        self._anchored(Anchor.starting_now(first, speed, cfg.lead_seconds, follow_delay_ns=follow))

    def _kick_poll(self) -> None:
        self._capacity.set()

    def _claimed(self) -> None:
        """Take the group's anchor once the claim (if any) has come back."""
        task = self._claiming
        if task is None or not task.done():
            return
        self._claiming = None
        self._anchored(task.result())  # a bus failure ends the replay: never a silent local anchor

    def _anchored(self, anchor: Anchor) -> None:
        self.anchor = anchor
        self._log_anchor(anchor)
        self._start_pacer(anchor)
        buffered, self._prebuffer = self._prebuffer, []
        for record, slot in buffered:
            if not slot.dropped:
                self._push(record, slot)

    @staticmethod
    def _log_anchor(anchor: Anchor) -> None:
        log.info("schedule anchored: log %d ns -> wall %d ns at speed %s",
                 anchor.log_t0_ns, anchor.wall_t0_ns, anchor.speed)

    def _start_pacer(self, anchor: Anchor) -> None:
        cfg = self._config
        self._pacer = Pacer(
            rate=cfg.rate,
            rate_t0_ns=anchor.wall_t0_ns if cfg.rate > 0 else None,
            ceiling=not (cfg.rate > 0 and cfg.speed == 0),
        )
        if cfg.max_gap_seconds > 0 and self._timeline is None:
            self._timeline = Timeline(anchor, int(cfg.max_gap_seconds * 1e9), self._lateness_ns, self._window_to)
            self._timeline_moved.set()

    # -- the group's gap cuts ------------------------------------------------------------

    async def _timeline_loop(self) -> None:
        """Read every partition's timestamps (not only this member's) into the Timeline,
        so gap cuts are the group's (``replayer/gaps.py``). Idle without a gap cap."""
        while self._timeline is None:
            self._timeline_moved.clear()
            await self._timeline_moved.wait()
        timeline = self._timeline
        if self._schedule is None:
            raise ConfigError("replayer.max_gap_seconds needs the group's schedule (a bus to read the log from)")
        assert self.anchor is not None
        start = self.anchor.log_t0_ns - self._lateness_ns
        reader = AsyncReader(await asyncio.to_thread(self._schedule.timeline, start))
        try:
            while True:
                ahead = max(2 * self._lateness_ns, int(TIMELINE_AHEAD_SECONDS * 1e9))
                wanted = max(self._timeline_wanted, self.anchor.log_t0_ns)
                if timeline.horizon != float("inf") and timeline.horizon - wanted > ahead:
                    await asyncio.sleep(POLL_TIMEOUT_SECONDS)  # far enough ahead of the schedule
                    continue
                batch = await reader.poll(2000, POLL_TIMEOUT_SECONDS)
                for m in batch:
                    timeline.add((m.topic, m.partition), m.timestamp_ns)
                positions, ends = await reader.progress()
                caught_up = [tp for tp, end in ends.items() if end is not None and positions.get(tp, 0) >= end]
                before = timeline.horizon
                timeline.settle(positions, caught_up)
                if timeline.horizon != before:
                    self._kick()
        finally:
            await reader.close()

    # -- scheduling ----------------------------------------------------------------------

    def _push(self, record: RequestRecord, slot: _Slot) -> None:
        assert self.anchor is not None
        m = slot.message
        item = (self.anchor.due_ns(record.ts), record.ts, record.seq or 0, m.partition, m.offset, record, slot)
        heapq.heappush(self._heap, item)
        if self._heap[0] is item:
            self._kick()  # a new earliest record: the scheduler re-times its sleep

    def _kick(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _due(self, item: _HeapItem) -> int | None:
        """The head's due time with the group's gap cuts; None while they are not known."""
        timeline = self._timeline
        if timeline is None:
            return item[0]
        ts = item[1]
        self._timeline_wanted = max(self._timeline_wanted, ts)
        shift = timeline.shift(ts)
        if shift is None:
            return None
        assert self.anchor is not None
        return self.anchor.due_ns(ts, shift) if shift else item[0]

    async def _schedule_loop(self) -> None:
        while True:
            heap = self._heap  # replaced on rebalance
            if not heap or self._pacer is None:
                await self._sleep(None)
                continue
            head = heap[0]
            base = self._due(head)
            if base is None:  # the gap cuts up to it are not settled yet
                await self._sleep(POLL_TIMEOUT_SECONDS)
                continue
            pacer = None if self._pacer.trivial else self._pacer
            due = base if pacer is None else pacer.peek(base)
            remaining = due - time.time_ns()
            if remaining > EARLY_TOLERANCE_NS:
                await self._sleep(remaining / 1e9)  # timers may fire early: the loop re-checks
                continue
            if self._held or self._consumer.rebalancing():
                # The group is moving partitions: what is sent now may belong to one this
                # member loses, and its commit would not land, so its next owner would send
                # it again. Hold on until the partitions are dealt and the lost ones
                # forgotten (_check_assignment); what was due meanwhile goes out late.
                self._held = True
                self._note_rebalance()
                await self._sleep(REBALANCE_WAIT_SECONDS)
                continue
            # Due: wait for a slot first. A request that had to wait for one is over the
            # concurrency cap, and that is never a reason to drop it (it is sent late).
            waited = self._sem.locked()
            await self._sem.acquire()
            slot_at = time.time_ns()
            heap = self._heap
            if not heap or heap[0] is not head:
                self._sem.release()  # the head changed while waiting (rebalance, a new earlier record)
                continue
            _, ts, _, _, _, record, slot = heapq.heappop(heap)
            if pacer is not None:
                due = pacer.take(base)
            self.dispatched += 1
            now = time.time_ns()
            if self.dispatched == 1 and now - due > STALE_ANCHOR_SECONDS * 1e9:
                self._warn_stale_anchor((now - due) / 1e9)
            judged = now - (max(due, slot_at) if waited else due)
            if self._drop_late and judged > self._late_after_ns:
                self._sem.release()
                self.dropped_late += 1
                self._metrics.late.inc()
                self._metrics.dropped.inc()
                self._metrics.schedule_lag.observe((now - due) / 1e9)
                self._done(slot)
                self._progress.set()
                continue
            task = asyncio.create_task(self._replay(record, slot, due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _note_rebalance(self) -> None:
        now = time.monotonic()
        if now - self._rebalance_noted > REBALANCE_LOG_SECONDS:
            log.info("the group is rebalancing: sends held until its partitions are dealt")
        self._rebalance_noted = now

    def _warn_stale_anchor(self, late_seconds: float) -> None:
        assert self.anchor is not None
        log.warning(
            "the first record is %.0fs late under this schedule (log %d ns -> wall %d ns): every record "
            "until the schedule catches up goes out at once. After a restart that is expected; if the "
            "anchor is left over from an earlier replay, withdraw it (`shadowreplay replay start --group "
            "%s --clear`) or set a new one",
            late_seconds, self.anchor.log_t0_ns, self.anchor.wall_t0_ns, self._config.group,
        )

    async def _sleep(self, seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        timer = loop.call_later(seconds, _resolve, wake) if seconds is not None else None
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    def schedule_position(self, now_ns: int | None = None) -> tuple[int, float]:
        """(records that came due so far, seconds the oldest unsent due record is overdue).

        The first is monotonic: its rate is the request rate the schedule asks for, to
        set beside the achieved rate. Read on the event loop (e.g. at scrape time).
        """
        now = time.time_ns() if now_ns is None else now_ns
        overdue = [item[0] for item in self._heap if item[0] <= now]
        behind = (now - min(overdue)) / 1e9 if overdue else 0.0
        return self.dispatched + len(overdue), behind

    # -- sending -------------------------------------------------------------------------

    async def _replay(self, record: RequestRecord, slot: _Slot, due_ns: int) -> None:
        metrics = self._metrics
        try:
            sent_ns = time.time_ns()
            lag_ns = sent_ns - due_ns
            self._lag.values.append(lag_ns / 1e9 if lag_ns > 0 else 0.0)
            uncounted = self._uncounted
            if lag_ns > self._late_after_ns:
                uncounted[metrics.late] = uncounted.get(metrics.late, 0) + 1
                self.late_sent += 1
            names = self._names
            endpoint = endpoint_name(record.method, record.target)
            probe = self._probes.target_for(record, endpoint)
            if len(names) == 1:
                responses = {names[0]: await self.targets[names[0]].send(record)}
            else:
                # Targets are asked in an order that rotates request by request: no pair
                # of them is systematically closer in time than another, so a timestamp
                # differs as often between baseline and secondary as between candidate
                # and baseline (else noise cancellation would take it for a regression).
                k = next(self._rotation) % len(names)
                order = names[k:] + names[:k]
                answers = await asyncio.gather(*(self.targets[n].send(record) for n in order))
                by_name = dict(zip(order, answers, strict=True))
                responses = {n: by_name[n] for n in names}
            self._count(responses)
            if probe is not None:  # the same request again, once the first answer is in
                responses[PROBE] = await self.targets[probe].send(record)
            result = ReplayResult(
                id=record.id,
                request=self.targets[names[0]].as_sent(record),  # the candidate's, as it went on the wire
                endpoint=endpoint,
                scheduled=due_ns,
                sent=sent_ns,
                responses=responses,
                origin=record.origin,
            )
            if not slot.dropped:
                self._unflushed.append((slot, (record.id.encode(), encode_result(result), sent_ns)))
                self._progress.set()
            self.replayed += 1
            uncounted = self._uncounted  # a flush may have swapped it while the request ran
            uncounted[metrics.records] = uncounted.get(metrics.records, 0) + 1
        except Exception as exc:  # a bug, not a target failure (those come back as Responses)
            log.exception("replaying record %s failed", record.id)
            if self._failure is None:
                self._failure = exc
        finally:
            self._sem.release()

    def _count(self, responses: dict[str, Response]) -> None:
        uncounted = self._uncounted
        for name, response in responses.items():
            if response.status is not None:
                ok = self._ok[name]
                uncounted[ok] = uncounted.get(ok, 0) + 1
            else:
                self._err[name].inc()
                self._metrics.errors.labels(target=name, kind=response.error or "client").inc()
            if response.truncated:
                self._metrics.truncated.labels(target=name).inc()
            if response.latency is not None:
                self._resp[name].values.append(response.latency)

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    # -- publishing and committing -------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._progress.wait()
            self._progress.clear()
            closing = self._closing  # once set, every send has finished: this flush is the last
            started = time.monotonic()
            await self._flush_results()
            if closing:
                return
            rest = FLUSH_INTERVAL_SECONDS - (time.monotonic() - started)
            if rest > 0 and not self._closing:
                await asyncio.sleep(rest)

    async def _flush_results(self) -> None:
        counts, self._uncounted = self._uncounted, {}
        for counter, count in counts.items():
            counter.inc(count)
        self._lag.fold()
        for histogram in self._resp.values():
            histogram.fold()
        batch, self._unflushed = self._unflushed, []
        items = [item for _, item in batch]
        producer, topic, consumer = self._producer, self._results_topic, self._consumer
        if items and not self._commit_in_flush:
            await _retrying("publish results", lambda: producer.publish_and_flush(topic, items))
        # Durable now, or (one transaction, the SQLite bus) together with the commit below:
        # should that fail for good, the replayer stops, so marking them done first is safe.
        for slot, _ in batch:
            self._done(slot)
        last, freed, freed_bytes = self._done_prefixes()
        if self._commit_in_flush:
            if items or last:
                await _retrying("publish results and commit offsets",
                                lambda: producer.publish_and_flush(topic, items, commit=(consumer, last)))
        elif last:
            # A group that is rebalancing defers the commit (the bus commits it once the
            # group has settled, or before the partitions go, and says so if it cannot).
            await _retrying("commit offsets", lambda: consumer.commit(last))
        if freed:
            self._pending -= freed
            self._pending_bytes -= freed_bytes
            self._capacity.set()

    def _done_prefixes(self) -> tuple[list[Message], int, int]:
        """Take each partition's run of done messages off its front: (the last message of
        each run, to commit — it covers the run; how many messages; their bytes)."""
        last: list[Message] = []
        freed = freed_bytes = 0
        for slots in self._slots.values():
            head: _Slot | None = None
            while slots and slots[0].done:
                head = slots.popleft()
                freed += 1
                freed_bytes += len(head.message.value)
            if head is not None:
                last.append(head.message)
        return last, freed, freed_bytes


async def _retrying(what: str, call: Callable[[], Awaitable[None]]) -> None:
    """Run ``call``, retrying retriable bus errors with backoff; others propagate at once."""
    for attempt in range(1, BUS_ATTEMPTS + 1):
        try:
            await call()
            return
        except BusError as exc:
            if not exc.retriable or attempt == BUS_ATTEMPTS:
                raise
            delay = BUS_RETRY_SECONDS * 2 ** (attempt - 1)
            log.warning("%s failed (attempt %d of %d), retrying in %.0fs: %s",
                        what, attempt, BUS_ATTEMPTS, delay, exc)
            await asyncio.sleep(delay)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
