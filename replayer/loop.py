"""Consume RequestRecords, send each to the targets when due, publish ReplayResults, commit.

Three tasks share the work:

* the poll loop takes small batches from the bus, decodes them, applies the window
  (``--from``/``--to``) and the rules, and pushes the records on a heap ordered by their
  speed-schedule due time; it stops polling while too many polled messages are not yet
  committed (bounded memory, no unbounded queue). That heap is the reorder window:
  records polled out of timestamp order are sent in due order as long as they arrive
  before they are due; later ones are late (measured, sent or dropped by policy),
  never a reason to sleep;
* the scheduler pops the heap in due order, passes each due time through the Pacer
  (``--rate``, ``--max-gap-seconds``), sleeps until it (absolute wall-clock times,
  re-checked after every wake-up, since timers may fire early) and starts the send, at
  most ``concurrency`` records at a time;
* the flusher publishes results as they come (one bus flush for all that piled up
  during the previous one) and then, partition by partition, commits the longest
  prefix of messages that are done — an offset is committed only once the results of
  it and of every message before it in its partition are durable (at-least-once).

Without an anchor handed in, the replayer anchors itself: it waits (briefly) until
every partition it owns has delivered a record, so the smallest timestamp of the
window's start, not that of whichever partition answered first, is replayed first.
When the group rebalances, records of partitions this member lost and not yet sent are
forgotten (their new owner replays them).
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

from prometheus_client import Counter

from replayer.client import TargetClient
from replayer.metrics import HistogramBatch, ReplayerMetrics
from replayer.probe import ProbeSampler
from replayer.rules import Rules
from replayer.schedule import EARLY_TOLERANCE_NS, Anchor, Pacer
from replayer.window import parse_window
from shadowreplay.bus.aio import AsyncConsumer, AsyncProducer
from shadowreplay.bus.base import Message
from shadowreplay.config import TARGET_NAMES, ReplayerConfig
from shadowreplay.endpoint import endpoint_name
from shadowreplay.errors import BusError, ConfigError, RecordError
from shadowreplay.record import (
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
# durable): polling pauses at either cap. A flush and a commit take a few ms each, tens
# under load (the bus threads wait for the GIL), so at 15,000 req/s 2,048 could run dry;
# 8,192 measured 4 % (one worker) to 12 % (two on two cores) more throughput. The bytes
# cap bounds memory when records carry large bodies.
MAX_PENDING = 8192
MAX_PENDING_BYTES = 64 * 1024 * 1024
POLL_MIN_ROOM = 100
# How often the poll loop asks the bus which partitions this member owns (a rebalance
# is noticed within this, plus the bus's own delay).
ASSIGNMENT_CHECK_SECONDS = 0.2
POLL_TIMEOUT_SECONDS = 0.2
# The flusher publishes (and commits) at most this often: results that come during the
# wait share one bus transaction, which costs about as much as one result alone.
FLUSH_INTERVAL_SECONDS = 0.02
BUS_RETRY_SECONDS = 1.0
BUS_ATTEMPTS = 5
# A self-anchoring replayer waits at most this long for its other partitions' first records.
ANCHOR_WAIT_SECONDS = 0.5
# With --to and no idle_exit_seconds: exit once idle this long with nothing left to do.
WINDOW_IDLE_EXIT_SECONDS = 2.0
# The first record this late means the anchor is probably left over from an earlier replay.
STALE_ANCHOR_SECONDS = 60.0

_Item = tuple[bytes | None, bytes, int | None]
_TP = tuple[str, int]


@dataclass(eq=False, slots=True)
class _Slot:
    """One polled message; ``done`` once skipped or its result is durable on the bus."""

    message: Message
    done: bool = False
    dropped: bool = False  # its partition was revoked before it was sent
    # The message the request was decoded from, when no rule changed the record (the
    # result may embed it as is: see encode_result).
    request_json: bytes | None = None


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
    """The consume → schedule → send → publish → commit loop of one replayer process."""

    def __init__(
        self,
        config: ReplayerConfig,
        consumer: AsyncConsumer,
        producer: AsyncProducer,
        results_topic: str,
        metrics: ReplayerMetrics,
        anchor: Anchor | None = None,
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
        self.anchor = anchor
        self.replayed = 0
        self.dispatched = 0  # records taken off the schedule heap (see schedule_position)
        self.targets = build_targets(config)
        self._names = tuple(self.targets)
        self._rules = Rules(config.methods, config.rules)
        self._probes = ProbeSampler(config)  # noise evidence without a secondary
        self._rotation = itertools.count()
        self._window_from, self._window_to = parse_window(config.window_from, config.window_to)
        self._late_after_ns = int(config.late_after_seconds * 1e9)
        self._drop_late = config.late_policy == "drop"
        self._pacer: Pacer | None = None
        concurrency = max(c.concurrency for c in self.targets.values())
        # Messages polled but not yet committed; polling pauses at the cap.
        self._max_pending = max(MAX_PENDING, 16 * concurrency)
        self._pending = 0
        self._pending_bytes = 0  # of the polled messages' values: large bodies fill the window sooner
        # Results and the offsets they complete in one bus transaction, where the bus can
        # (asked when the run starts).
        self._commit_in_flush = False
        self._slots: dict[_TP, deque[_Slot]] = {}  # per partition, in offset order
        self._finished: set[_TP] = set()  # partitions that reached --to
        self._assigned: set[_TP] = set()
        self._unflushed: list[tuple[_Slot, _Item]] = []
        self._heap: list[tuple[int, int, RequestRecord, _Slot]] = []
        self._prebuffer: list[tuple[RequestRecord, _Slot]] = []  # until anchored
        self._prebuffer_since: float | None = None
        self._seq = itertools.count()
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Future[None] | None = None
        self._progress = asyncio.Event()  # a result or a skipped message: the flusher has work
        self._capacity = asyncio.Event()  # a commit freed room for more polling
        self._closing = False
        self._skip_logged: set[str] = set()
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
        every partition's done prefix committed; records not yet due are left uncommitted
        for the next consumer of the group.
        """
        self._commit_in_flush = self._producer.commits_for(self._consumer)
        for client in self.targets.values():
            await client.start()
        log.info(
            "replayer started: targets=%s speed=%s rate=%s concurrency=%s window=%s..%s http client=%s",
            {n: c.base_url for n, c in self.targets.items()},
            self._config.speed,
            self._config.rate,
            {n: c.concurrency for n, c in self.targets.items()},
            self._window_from,
            self._window_to,
            self._config.http_client,
        )
        if self._window_from is not None:
            await self._consumer.seek_to_time(self._window_from)
        if self.anchor is not None:
            self._start_pacer(self.anchor)
        scheduler = asyncio.create_task(self._schedule_loop(), name="replayer-scheduler")
        flusher = asyncio.create_task(self._flush_loop(), name="replayer-flusher")
        try:
            await self._poll_loop(stop, scheduler, flusher)
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
            if self._tasks:
                await asyncio.wait(set(self._tasks))  # each is bounded by the request timeout
            self._closing = True
            self._progress.set()
            await flusher
            self._raise_if_failed()
            log.info("replayer stopped: %d records replayed, %d not yet due left uncommitted",
                     self.replayed, len(self._heap) + len(self._prebuffer))
        finally:
            leftovers = [scheduler, flusher, *self._tasks]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
            for client in self.targets.values():
                await client.close()

    # -- polling -------------------------------------------------------------------------

    async def _poll_loop(
        self, stop: asyncio.Event, scheduler: asyncio.Task[None], flusher: asyncio.Task[None]
    ) -> None:
        idle_exit = self._config.idle_exit_seconds
        if idle_exit <= 0 and self._window_to is not None:
            idle_exit = WINDOW_IDLE_EXIT_SECONDS
        idle_since: float | None = None
        next_assignment_check = 0.0
        while not stop.is_set():
            for task in (scheduler, flusher):
                if task.done():
                    task.result()  # re-raises its failure
                    raise RuntimeError(f"{task.get_name()} ended unexpectedly")
            self._raise_if_failed()
            if self._window_done():
                log.info("replayer reached the end of the window (%d ns): exiting", self._window_to)
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
                    await asyncio.wait_for(self._capacity.wait(), POLL_TIMEOUT_SECONDS)
                except TimeoutError:
                    pass
                continue
            messages = await self._poll(min(POLL_MAX_RECORDS, room))
            now = time.monotonic()
            if now >= next_assignment_check or self.anchor is None:
                next_assignment_check = now + ASSIGNMENT_CHECK_SECONDS
                await self._check_assignment()
            if messages:
                idle_since = None
                self._accept(messages)
            self._maybe_anchor()
            if not messages:
                if idle_exit > 0 and self._pending == 0:
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
            return await self._consumer.poll(max_records, POLL_TIMEOUT_SECONDS)
        except BusError as exc:
            if not exc.retriable:
                raise
            log.warning("bus poll failed, retrying in %.0fs: %s", BUS_RETRY_SECONDS, exc)
            await asyncio.sleep(BUS_RETRY_SECONDS)
            return []

    async def _check_assignment(self) -> None:
        assigned = set(await self._consumer.assignment())
        if assigned == self._assigned:
            return
        lost = self._assigned - assigned
        self._assigned = assigned
        self._metrics.assigned_partitions.set(len(assigned))
        log.info("replayer owns partitions %s", sorted(p for _, p in assigned))
        if lost:
            self._forget(lost)

    def _forget(self, lost: set[_TP]) -> None:
        """Drop what is buffered for partitions this member no longer owns."""
        for tp in lost:
            for slot in self._slots.pop(tp, ()):
                slot.dropped = True
                self._pending -= 1
                self._pending_bytes -= len(slot.message.value)
            self._finished.discard(tp)
        before = len(self._heap)
        self._heap = [item for item in self._heap if not item[3].dropped]
        heapq.heapify(self._heap)
        self._prebuffer = [(r, s) for r, s in self._prebuffer if not s.dropped]
        if before != len(self._heap):
            log.info("rebalance: %d buffered records of lost partitions left to their new owner",
                     before - len(self._heap))
        self._capacity.set()
        self._kick()

    def _accept(self, messages: list[Message]) -> None:
        records: list[tuple[RequestRecord, _Slot]] = []
        skipped: dict[str, int] = {}
        rule_hits: dict[tuple[str, str], int] = {}
        lo, hi = self._window_from, self._window_to
        for message in messages:
            tp = (message.topic, message.partition)
            if tp in self._finished:
                continue  # past --to: left uncommitted for a later window
            try:
                record = decode_request(message.value)
            except RecordError as exc:
                record = None
                log.debug("undecodable record at %s/%d@%d: %s",
                          message.topic, message.partition, message.offset, exc)
            if record is not None and hi is not None and record.ts >= hi:
                self._finished.add(tp)
                continue
            slot = _Slot(message)
            self._slots.setdefault(tp, deque()).append(slot)
            self._pending += 1
            self._pending_bytes += len(message.value)
            reason: str | None = None
            if record is None:
                reason = "bad_record"
            elif lo is not None and record.ts < lo:
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
                    if outcome.record is record:
                        slot.request_json = message.value
                    records.append((outcome.record, slot))
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + 1
                slot.done = True
        for (label, action), count in rule_hits.items():
            self._metrics.rule_hits.labels(rule=label, action=action).inc(count)
        for reason, count in skipped.items():
            self._metrics.skipped.labels(reason=reason).inc(count)
            if reason in self._skip_logged:
                log.debug("skipped %d records: %s", count, reason)
            else:
                self._skip_logged.add(reason)
                log.warning("skipped %d records: %s (further ones are only counted in "
                            "shadow_replay_skipped_total)", count, reason)
        if self.anchor is None:
            if records and self._prebuffer_since is None:
                self._prebuffer_since = time.monotonic()
            self._prebuffer.extend(records)
        else:
            for record, slot in records:
                self._push(record, slot)
        if skipped:
            self._progress.set()  # skipped messages are done: committable in their turn

    def _maybe_anchor(self) -> None:
        """Anchor on the smallest timestamp once every owned partition has answered."""
        if self.anchor is not None or not self._prebuffer or self._prebuffer_since is None:
            return
        seen = {(s.message.topic, s.message.partition) for _, s in self._prebuffer}
        waited = time.monotonic() - self._prebuffer_since
        if not (self._assigned and self._assigned <= seen) and waited < ANCHOR_WAIT_SECONDS:
            return
        cfg = self._config
        follow = int(cfg.follow_delay_seconds * 1e9) if cfg.follow else None
        speed = cfg.speed if cfg.speed > 0 else 1.0  # rate without ceiling: ts only orders
        self.anchor = Anchor.starting_now(
            min(r.ts for r, _ in self._prebuffer), speed, cfg.lead_seconds, follow_delay_ns=follow
        )
        log.info("schedule anchored: log %d ns -> wall %d ns at speed %s",
                 self.anchor.log_t0_ns, self.anchor.wall_t0_ns, self.anchor.speed)
        self._start_pacer(self.anchor)
        buffered, self._prebuffer = self._prebuffer, []
        for record, slot in buffered:
            self._push(record, slot)

    def _start_pacer(self, anchor: Anchor) -> None:
        cfg = self._config
        self._pacer = Pacer(
            rate=cfg.rate,
            max_gap_ns=int(cfg.max_gap_seconds * 1e9),
            rate_t0_ns=anchor.wall_t0_ns if cfg.rate > 0 else None,
            ceiling=not (cfg.rate > 0 and cfg.speed == 0),
        )

    # -- scheduling ----------------------------------------------------------------------

    def _push(self, record: RequestRecord, slot: _Slot) -> None:
        assert self.anchor is not None
        item = (self.anchor.due_ns(record.ts), next(self._seq), record, slot)
        heapq.heappush(self._heap, item)
        if self._heap[0] is item:
            self._kick()  # a new earliest record: the scheduler re-times its sleep

    def _kick(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _schedule_loop(self) -> None:
        heap = self._heap
        while True:
            heap = self._heap  # replaced on rebalance
            if not heap or self._pacer is None:
                await self._sleep(None)
                continue
            base = heap[0][0]
            pacer = None if self._pacer.trivial else self._pacer
            due = base if pacer is None else pacer.peek(base)
            now = time.time_ns()
            remaining = due - now
            if remaining > EARLY_TOLERANCE_NS:
                await self._sleep(remaining / 1e9)  # timers may fire early: the loop re-checks
                continue
            _, _, record, slot = heapq.heappop(heap)
            if pacer is not None:
                due = pacer.take(base)
            self.dispatched += 1
            if self.dispatched == 1 and now - due > STALE_ANCHOR_SECONDS * 1e9:
                self._warn_stale_anchor((now - due) / 1e9)
            if self._drop_late and now - due > self._late_after_ns:
                self._metrics.late.inc()
                self._metrics.dropped.inc()
                self._metrics.schedule_lag.observe((now - due) / 1e9)
                slot.done = True
                self._progress.set()
                continue
            await self._sem.acquire()
            task = asyncio.create_task(self._replay(record, slot, due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
                request=record,
                endpoint=endpoint,
                scheduled=due_ns,
                sent=sent_ns,
                responses=responses,
                origin=record.origin,
            )
            if not slot.dropped:
                self._unflushed.append((slot, (record.id.encode(), encode_result(result, slot.request_json), sent_ns)))
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
            slot.done = True
        last, freed, freed_bytes = self._done_prefixes()
        if self._commit_in_flush:
            if items or last:
                await _retrying("publish results and commit offsets",
                                lambda: producer.publish_and_flush(topic, items, commit=(consumer, last)))
        elif last:
            try:
                await _retrying("commit offsets", lambda: consumer.commit(last))
            except BusError as exc:
                if exc.retriable:
                    raise
                # The group rebalanced meanwhile: the partitions' new owner gets these again.
                log.warning("commit refused (rebalance?); the new owner will redo them: %s", exc)
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
