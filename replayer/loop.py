"""Consume RequestRecords, send each to the targets when due, publish ReplayResults, commit.

Three tasks share the work:

* the poll loop takes small batches from the bus, decodes and filters them and pushes
  the records on a heap ordered by due time; it stops polling while too many polled
  messages are not yet committed (bounded memory, no unbounded queue);
* the scheduler pops the heap in due order, sleeps until each record is due (absolute
  wall-clock times from the Anchor, re-checked after every wake-up) and starts one send
  task per record, at most ``concurrency`` at a time;
* the flusher publishes results as they come (one bus flush for all that piled up
  during the previous one) and then, partition by partition, commits the longest
  prefix of messages that are done — an offset is committed only once the results of
  it and of every message before it in its partition are durable (at-least-once).

Polls are kept small because a bus hands out one partition's messages at a time: a
large batch from one partition can reach far into that partition's future while the
others, not yet read, are due now.
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

from replayer.client import TargetClient
from replayer.metrics import ReplayerMetrics
from replayer.schedule import EARLY_TOLERANCE_NS, Anchor, is_late
from shadowreplay.bus.aio import AsyncConsumer, AsyncProducer
from shadowreplay.bus.base import Message
from shadowreplay.config import ReplayerConfig
from shadowreplay.endpoint import endpoint_name
from shadowreplay.errors import BusError, ConfigError, RecordError
from shadowreplay.record import ReplayResult, RequestRecord, decode_request, encode_result

log = logging.getLogger(__name__)

POLL_MAX_RECORDS = 100
POLL_TIMEOUT_SECONDS = 0.2
BUS_RETRY_SECONDS = 1.0
BUS_ATTEMPTS = 5

_Item = tuple[bytes | None, bytes, int | None]


@dataclass(eq=False, slots=True)
class _Slot:
    """One polled message; ``done`` once skipped or its result is durable on the bus."""

    message: Message
    done: bool = False


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
        self._config = config
        self._consumer = consumer
        self._producer = producer
        self._results_topic = results_topic
        self._metrics = metrics
        self.anchor = anchor
        self.replayed = 0
        self.targets: dict[str, TargetClient] = {
            name: TargetClient(
                name,
                url,
                timeout_seconds=config.timeout_seconds,
                max_body_bytes=config.max_body_bytes,
                concurrency=config.concurrency,
                keep_host=config.keep_host,
            )
            for name, url in (("candidate", config.candidate), ("baseline", config.baseline))
            if url
        }
        self._methods = frozenset(m.upper() for m in config.methods)
        # Messages polled but not yet committed; polling pauses at the cap.
        self._max_pending = max(1024, 16 * config.concurrency)
        self._pending = 0
        self._slots: dict[tuple[str, int], deque[_Slot]] = {}  # per partition, in offset order
        self._unflushed: list[tuple[_Slot, _Item]] = []
        self._heap: list[tuple[int, int, RequestRecord, _Slot]] = []
        self._seq = itertools.count()
        self._sem = asyncio.Semaphore(config.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Future[None] | None = None
        self._progress = asyncio.Event()  # a result or a skipped message: the flusher has work
        self._capacity = asyncio.Event()  # a commit freed room for more polling
        self._closing = False
        self._skip_logged: set[str] = set()
        self._failure: BaseException | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Replay until ``stop`` is set (or idle for ``idle_exit_seconds``), then drain.

        On the way out, requests already sent are finished, their results flushed and
        every partition's done prefix committed; records not yet due are left uncommitted
        for the next consumer of the group.
        """
        for client in self.targets.values():
            await client.start()
        log.info(
            "replayer started: targets=%s speed=%s concurrency=%d",
            {n: c.base_url for n, c in self.targets.items()},
            self._config.speed,
            self._config.concurrency,
        )
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
                     self.replayed, len(self._heap))
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
        idle_since: float | None = None
        while not stop.is_set():
            for task in (scheduler, flusher):
                if task.done():
                    task.result()  # re-raises its failure
                    raise RuntimeError(f"{task.get_name()} ended unexpectedly")
            self._raise_if_failed()
            room = self._max_pending - self._pending
            if room <= 0:
                self._capacity.clear()
                try:
                    await asyncio.wait_for(self._capacity.wait(), POLL_TIMEOUT_SECONDS)
                except TimeoutError:
                    pass
                continue
            messages = await self._poll(min(POLL_MAX_RECORDS, room))
            if messages:
                idle_since = None
                self._accept(messages)
            elif idle_exit > 0 and self._pending == 0:
                now = time.monotonic()
                if idle_since is None:
                    idle_since = now
                elif now - idle_since >= idle_exit:
                    log.info("replayer idle for %.1fs with all work done: exiting", idle_exit)
                    return
            else:
                idle_since = None

    async def _poll(self, max_records: int) -> list[Message]:
        try:
            return await self._consumer.poll(max_records, POLL_TIMEOUT_SECONDS)
        except BusError as exc:
            if not exc.retriable:
                raise
            log.warning("bus poll failed, retrying in %.0fs: %s", BUS_RETRY_SECONDS, exc)
            await asyncio.sleep(BUS_RETRY_SECONDS)
            return []

    def _accept(self, messages: list[Message]) -> None:
        self._pending += len(messages)
        records: list[tuple[RequestRecord, _Slot]] = []
        skipped: dict[str, int] = {}
        for message in messages:
            slot = _Slot(message)
            self._slots.setdefault((message.topic, message.partition), deque()).append(slot)
            try:
                record = decode_request(message.value)
            except RecordError as exc:
                skipped["bad_record"] = skipped.get("bad_record", 0) + 1
                slot.done = True
                log.debug("undecodable record at %s/%d@%d: %s",
                          message.topic, message.partition, message.offset, exc)
                continue
            if record.method.upper() not in self._methods:
                skipped["method_not_allowed"] = skipped.get("method_not_allowed", 0) + 1
                slot.done = True
                continue
            records.append((record, slot))
        for reason, count in skipped.items():
            self._metrics.skipped.labels(reason=reason).inc(count)
            if reason in self._skip_logged:
                log.debug("skipped %d records: %s", count, reason)
            else:
                self._skip_logged.add(reason)
                log.warning("skipped %d records: %s (further ones are only counted in "
                            "shadow_replay_skipped_total)", count, reason)
        if records and self.anchor is None:
            self.anchor = Anchor.starting_now(min(r.ts for r, _ in records), self._config.speed)
            log.info("schedule anchored: log %d ns -> wall %d ns at speed %s",
                     self.anchor.log_t0_ns, self.anchor.wall_t0_ns, self.anchor.speed)
        for record, slot in records:
            self._push(record, slot)
        if skipped:
            self._progress.set()  # skipped messages are done: committable in their turn

    # -- scheduling ----------------------------------------------------------------------

    def _push(self, record: RequestRecord, slot: _Slot) -> None:
        assert self.anchor is not None
        item = (self.anchor.due_ns(record.ts), next(self._seq), record, slot)
        heapq.heappush(self._heap, item)
        if self._heap[0] is item and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)  # a new earliest record: the scheduler re-times its sleep

    async def _schedule_loop(self) -> None:
        while True:
            if not self._heap:
                await self._sleep(None)
                continue
            due = self._heap[0][0]
            remaining = due - time.time_ns()
            if remaining > EARLY_TOLERANCE_NS:
                await self._sleep(remaining / 1e9)  # timers may fire early: the loop re-checks
                continue
            _, _, record, slot = heapq.heappop(self._heap)
            await self._sem.acquire()
            task = asyncio.create_task(self._replay(record, slot, due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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

    # -- sending -------------------------------------------------------------------------

    async def _replay(self, record: RequestRecord, slot: _Slot, due_ns: int) -> None:
        metrics = self._metrics
        metrics.inflight.inc()
        try:
            sent_ns = time.time_ns()
            metrics.schedule_lag.observe(max(0.0, (sent_ns - due_ns) / 1e9))
            if is_late(due_ns, sent_ns):
                metrics.late.inc()
            names = list(self.targets)
            answers = await asyncio.gather(*(self.targets[name].send(record) for name in names))
            responses = dict(zip(names, answers, strict=True))
            for name, response in responses.items():
                outcome = "ok" if response.status is not None else "error"
                metrics.requests.labels(target=name, outcome=outcome).inc()
                if response.latency is not None:
                    metrics.response_seconds.labels(target=name).observe(response.latency)
            result = ReplayResult(
                id=record.id,
                request=record,
                endpoint=endpoint_name(record.method, record.target),
                scheduled=due_ns,
                sent=sent_ns,
                responses=responses,
                origin=record.origin,
            )
            self._unflushed.append((slot, (record.id.encode(), encode_result(result), sent_ns)))
            self.replayed += 1
            metrics.records.inc()
            self._progress.set()
        except Exception as exc:  # a bug, not a target failure (those come back as Responses)
            log.exception("replaying record %s failed", record.id)
            if self._failure is None:
                self._failure = exc
        finally:
            metrics.inflight.dec()
            self._sem.release()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    # -- publishing and committing -------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._progress.wait()
            self._progress.clear()
            closing = self._closing  # once set, every send has finished: this flush is the last
            await self._flush_results()
            if closing:
                return

    async def _flush_results(self) -> None:
        batch, self._unflushed = self._unflushed, []
        if batch:
            items = [item for _, item in batch]
            producer, topic = self._producer, self._results_topic
            await _retrying("publish results", lambda: producer.publish_and_flush(topic, items))
            for slot, _ in batch:
                slot.done = True
        last: list[Message] = []
        freed = 0
        for slots in self._slots.values():
            head: _Slot | None = None
            while slots and slots[0].done:
                head = slots.popleft()
                freed += 1
            if head is not None:
                last.append(head.message)  # committing the highest done offset covers the prefix
        if last:
            await _retrying("commit offsets", lambda: self._consumer.commit(last))
            self._pending -= freed
            self._capacity.set()


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
