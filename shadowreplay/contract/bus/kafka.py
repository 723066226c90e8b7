"""The Kafka bus, on kafka-python 3.

Producer: ``acks="all"``, idempotent, small linger; ``flush`` waits for the producer and
then checks every send's future, so when it returns the broker has every record.
Timestamps: the record timestamp is the message time in milliseconds; the exact
nanoseconds ride along in a ``ts_ns`` header (8 bytes, big-endian) and are preferred on
read, so our own messages keep their nanoseconds; foreign ones are exact to the ms.

Consumer: a group member with manual commits (``enable_auto_commit=False``), starting at
the earliest offset when the group has none. Group settings default to
``GROUP_DEFAULTS`` (a first join in about 3 s; kafka-python's own defaults take 23 s on
Tansu); the URL's options override them. A commit the broker refuses because the group
is rebalancing is kept and made again once the group has settled, or, by the rebalance
listener, before the partitions are given up, so their next owner does not redo work
this member finished. ``seek_to_time`` asks the broker (``offsets_for_times``) and
verifies the answer by reading the records around it; when the broker's answer is wrong
(Tansu answers offset 0 for every time, and its end offsets are the last batch's base),
it binary-searches the partition with a short-lived probe consumer. Sought consumers
also drop every message older than the seek time, so the window is exact whatever the
broker does. Partitions assigned after the seek (the group assigns inside ``poll``)
start at the later of the group's committed offset and the sought one.

Reader (``Bus.reader``): manual assignment of every partition, no group join, nothing
committed; it learns each partition's end from the high watermark of its fetches.

Topics are created on first use with the bus's partition count.

kafka-python 3.0 can drop a finished group join on the floor (see
``_keep_finished_joins``), which stalls groups whose members poll with short timeouts;
the consumer patches that one method on its own coordinator instance.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka import errors as kafka_errors
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner import DefaultPartitioner, Partitioner
from kafka.partitioner.default import murmur2
from kafka.structs import MemberState, OffsetAndMetadata

from shadowreplay.contract.bus.base import Message, PartitionLag, next_positions
from shadowreplay.contract.errors import BusError, ConfigError

log = logging.getLogger(__name__)

TS_HEADER = "ts_ns"
CLIENT_ID = "shadowreplay"
DEFAULT_FETCH_MAX_WAIT_MS = 100
LAG_TIMEOUT_MS = 5000  # each request of Consumer.lag
# Group settings when the URL names none. kafka-python's session timeout (45 s) makes a
# first join wait about half of it on brokers that hold the JoinGroup open for late
# members (Tansu: 23 s); 6 s (the least Kafka brokers accept by default) joins in about
# 3 s. The replayer polls (or keeps alive, see Consumer.poll) every fraction of a second,
# so a 30 s poll interval, which is also the rebalance timeout, is ample; heartbeats
# every second let members notice a rebalance, and so let a joining member in, sooner.
GROUP_DEFAULTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 30_000}

_PRODUCER_OPTIONS = ("linger_ms", "max_block_ms", "delivery_timeout_ms", "batch_size")
_CONSUMER_OPTIONS = (
    "max_poll_interval_ms", "session_timeout_ms", "heartbeat_interval_ms", "fetch_max_wait_ms",
)
_CLIENT_OPTIONS = ("request_timeout_ms", "bootstrap_timeout_ms")
OPTIONS = _PRODUCER_OPTIONS + _CONSUMER_OPTIONS + _CLIENT_OPTIONS + ("replication_factor",)


@contextmanager
def _boundary(what: str) -> Iterator[None]:
    """Translate kafka-python's errors into BusError."""
    try:
        yield
    except kafka_errors.KafkaTimeoutError as exc:
        if "bootstrap" in str(exc).lower():  # one clear line instead of kafka-python's retries
            raise BusError(f"kafka bus: {what}: no Kafka broker answered ({exc}); is the address right "
                           "and the broker up?", retriable=True) from exc
        raise BusError(f"kafka bus: {what} failed: {exc}", retriable=True) from exc
    except KafkaError as exc:
        raise BusError(f"kafka bus: {what} failed: {exc}", retriable=bool(exc.retriable)) from exc
    except OSError as exc:
        raise BusError(f"kafka bus: {what} failed: {exc}", retriable=True) from exc


def _timestamp_ns(record: Any) -> int:
    for name, value in record.headers or ():
        if name == TS_HEADER and len(value) == 8:
            return int.from_bytes(value, "big", signed=True)
    return int(record.timestamp) * 1_000_000


class KafkaBus:
    """A Kafka cluster as a bus. Clients are created per producer/consumer."""

    def __init__(
        self, url: str, servers: Sequence[str], partitions: int = 4, **options: int
    ) -> None:
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise ConfigError(f"{url}: unknown kafka options {sorted(unknown)}")
        if partitions < 1:
            raise ConfigError(f"bus.partitions: must be >= 1, got {partitions}")
        self.url = url
        self.servers = list(servers)
        self.partitions = partitions
        self._replication = options.pop("replication_factor", -1)  # -1: the broker's default
        self._options = options
        self._lock = threading.Lock()
        self._admin: KafkaAdminClient | None = None
        self._known: set[str] = set()

    def client_config(self, *kinds: tuple[str, ...]) -> dict[str, Any]:
        """kafka-python settings from the URL options for one kind of client."""
        names = set(_CLIENT_OPTIONS).union(*kinds)
        config: dict[str, Any] = {"bootstrap_servers": self.servers, "client_id": CLIENT_ID}
        config.update({k: v for k, v in self._options.items() if k in names})
        return config

    def ensure_topic(self, topic: str, partitions: int) -> None:
        """Create ``topic`` with ``partitions`` partitions if it does not exist."""
        with self._lock:
            if topic in self._known:
                return
            with _boundary(f"create topic {topic!r}"):
                if self._admin is None:
                    self._admin = KafkaAdminClient(**self.client_config())
                try:
                    self._admin.create_topics([NewTopic(topic, partitions, self._replication)])
                    log.info("kafka bus: created topic %s with %d partitions", topic, partitions)
                except TopicAlreadyExistsError:
                    pass
            self._known.add(topic)

    def producer(self, *, power_safe: bool = True) -> KafkaBusProducer:
        """``acks=all`` whatever ``power_safe`` says: the brokers' replication is Kafka's
        durability, and there is no per-flush fsync here to skip."""
        return KafkaBusProducer(self)

    def consumer(self, topics: Sequence[str], group: str) -> KafkaBusConsumer:
        return KafkaBusConsumer(self, topics, group)

    def reader(self, topics: Sequence[str], *, group: str | None = None, from_ns: int | None = None) -> KafkaBusReader:
        return KafkaBusReader(self, topics, group, from_ns)

    def close(self) -> None:
        with self._lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None


class _KeyPartitioner(Partitioner):
    """kafka-python's DefaultPartitioner (murmur2 of the key, as the Java client does, so
    other producers agree on a key's partition), remembering the partition of recent
    keys: pure-Python murmur2 was a fifth of the producer's time per record, and a
    collector sees the same client addresses over and over. Bounded: the memo is
    dropped when full or when the topic's partitions change, which is checked at most
    every ``RECHECK_SECONDS`` (asking the metadata builds a set: a tenth of a send)."""

    MEMO_SIZE = 65_536
    RECHECK_SECONDS = 1.0

    def __init__(self) -> None:
        self._default = DefaultPartitioner()
        # topic -> (recheck after, the metadata's partitions in order, key -> partition)
        self._tables: dict[str, tuple[float, tuple[int, ...], dict[bytes, int]]] = {}

    def partition(
        self, topic: str, key: Any, serialized_key: bytes | None, value: Any, serialized_value: Any, cluster: Any
    ) -> int:
        if serialized_key is None:  # no key: the default's (random) answer
            return int(self._default.partition(topic, key, serialized_key, value, serialized_value, cluster))
        table = self._tables.get(topic)
        now = time.monotonic()
        if table is None or now >= table[0] or len(table[2]) >= self.MEMO_SIZE:
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:  # no metadata yet: the default's answer
                return int(self._default.partition(topic, key, serialized_key, value, serialized_value, cluster))
            ordered = tuple(sorted(partitions))
            memo = table[2] if table is not None and table[1] == ordered and len(table[2]) < self.MEMO_SIZE else {}
            table = self._tables[topic] = (now + self.RECHECK_SECONDS, ordered, memo)
        _, ordered, memo = table
        known = memo.get(serialized_key)
        if known is None:
            known = memo[serialized_key] = ordered[(murmur2(serialized_key) & 0x7FFFFFFF) % len(ordered)]
        return known


class KafkaBusProducer:
    def __init__(self, bus: KafkaBus) -> None:
        self._bus = bus
        # 512 KiB batches (kafka-python's default is 16 KiB): a collector flush of 1,000
        # records then goes out in a few produce requests instead of dozens, and
        # kafka-python's per-request cost bounds the collector's Kafka throughput
        # (bench/collector.py).
        config = {"linger_ms": 5, "batch_size": 512 * 1024} | bus.client_config(_PRODUCER_OPTIONS)
        with _boundary("connect producer"):
            self._producer = KafkaProducer(
                acks="all", enable_idempotence=True, compression_type=None, partitioner=_KeyPartitioner(), **config
            )
        self._futures: list[Future[Any]] = []
        self._topics: set[str] = set()
        self._lock = threading.Lock()

    def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        timestamp_ns: int | None = None,
    ) -> None:
        if topic not in self._topics:
            self._bus.ensure_topic(topic, self._bus.partitions)
            self._topics.add(topic)
        ts = time.time_ns() if timestamp_ns is None else int(timestamp_ns)
        with self._lock, _boundary(f"publish to {topic!r}"):
            self._futures.append(self._producer.send(
                topic,
                value=value,
                key=key,
                timestamp_ms=ts // 1_000_000,
                headers=[(TS_HEADER, ts.to_bytes(8, "big", signed=True))],
            ))

    def publish_batch(self, topic: str, items: Sequence[tuple[bytes | None, bytes, int | None]]) -> None:
        """``publish`` each (key, value, timestamp_ns) of ``items``, in order."""
        if topic not in self._topics:
            self._bus.ensure_topic(topic, self._bus.partitions)
            self._topics.add(topic)
        send = self._producer.send
        now = time.time_ns()
        with self._lock, _boundary(f"publish to {topic!r}"):
            append = self._futures.append
            for key, value, ts in items:
                if ts is None:
                    ts = now
                append(send(
                    topic,
                    value=value,
                    key=key,
                    timestamp_ms=ts // 1_000_000,
                    headers=[(TS_HEADER, ts.to_bytes(8, "big", signed=True))],
                ))

    def flush(self, timeout_seconds: float = 30.0) -> None:
        with self._lock:
            with _boundary("flush"):
                self._producer.flush(timeout=timeout_seconds)
            futures, self._futures = self._futures, []
            failed: list[Any] = [f.exception for f in futures if f.failed()]  # type: ignore[attr-defined]
            if failed:
                exc = failed[0]
                retriable = isinstance(exc, KafkaError) and bool(exc.retriable)
                raise BusError(
                    f"kafka bus: {len(failed)} of {len(futures)} messages were not delivered: {exc}",
                    retriable=retriable,
                ) from exc

    def close(self) -> None:
        try:
            self.flush()
        except BusError as exc:
            log.warning("kafka bus: messages not delivered at close: %s", exc)
        with self._lock:
            try:
                self._producer.close(timeout=5)
            except KafkaError as exc:
                log.warning("kafka bus: producer did not close cleanly: %s", exc)


class _Listener(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO loop, inside the consumer's ``poll``: notes that the
    member joined, and commits what the consumer still owes before partitions are
    given up (``KafkaBusConsumer._commit_before_revoke``)."""

    def __init__(self, owner: KafkaBusConsumer) -> None:
        self._owner = owner
        self.joined = False
        # From the revocation to the next assignment: the partitions this member had may
        # go to another, and nothing it commits meanwhile lands (see Consumer.rebalancing).
        self.rebalancing = False

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.rebalancing = True
        await self._owner._commit_before_revoke(set(revoked))

    async def on_partitions_lost(self, lost: Any) -> None:
        # Evicted (a session timeout): the broker already gave them away, no commit can land.
        self.rebalancing = True
        self._owner._lost(set(lost))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._owner._forget_unowned(set(assigned))
        self.joined = True
        self.rebalancing = False


# Commit errors that mean "the group is changing": the offsets are kept and committed
# again once it has settled, or before the partitions are given up.
_REBALANCING = (
    kafka_errors.CommitFailedError,
    kafka_errors.RebalanceInProgressError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
)


class KafkaBusConsumer:
    """A consumer-group member; see the module docstring for ``seek_to_time`` and for
    the group settings used when the URL names none."""

    def __init__(self, bus: KafkaBus, topics: Sequence[str], group: str) -> None:
        if not topics:
            raise ConfigError("bus consumer: at least one topic is required")
        self._bus = bus
        self.group = group
        for topic in topics:
            bus.ensure_topic(topic, bus.partitions)
        self._timeout_ms = bus.client_config().get("request_timeout_ms", 30_000)
        # A fetch waits at most 100 ms for data (kafka-python's default is 500 ms). A broker
        # that answers a waiting fetch as soon as data arrives (Kafka) is unaffected, but
        # Tansu answers only when the wait is over, so each hop through the bus added up to
        # the whole wait to the end-to-end latency (bench/pipeline.py).
        config = {"fetch_max_wait_ms": DEFAULT_FETCH_MAX_WAIT_MS} | GROUP_DEFAULTS | bus.client_config(_CONSUMER_OPTIONS)
        self._listener = _Listener(self)
        self._lock = threading.Lock()
        self._min_ts: int | None = None
        self._known: set[TopicPartition] = set()  # the assignment as of the last poll
        # Offsets asked for by commit() that the broker has not taken yet (the group was
        # rebalancing): committed at the next commit, or before the partitions go.
        self._owed: dict[TopicPartition, OffsetAndMetadata] = {}
        with _boundary("connect consumer"):
            self._consumer = KafkaConsumer(
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                allow_auto_create_topics=False,
                **config,
            )
            self._consumer.subscribe(list(topics), listener=self._listener)
        _keep_finished_joins(self._consumer)

    def poll(self, max_records: int = 500, timeout_seconds: float = 1.0) -> list[Message]:
        with self._lock, _boundary("poll"):
            if max_records <= 0:
                return self._keep_alive(timeout_seconds)
            batches = self._consumer.poll(
                timeout_ms=int(timeout_seconds * 1000), max_records=max_records
            )
            fresh = self._take_fresh()
            if fresh and self._min_ts is not None:
                # Newly assigned partitions: whatever came from their committed offsets
                # is dropped; the seek below fetches them again from the right place.
                self._seek(sorted(fresh), self._min_ts, keep_committed=True)
                batches = {tp: recs for tp, recs in batches.items() if tp not in fresh}
            min_ts = self._min_ts
            out: list[Message] = []
            for tp in sorted(batches):
                for rec in batches[tp]:
                    ts = _timestamp_ns(rec)
                    if min_ts is None or ts >= min_ts:
                        out.append(Message(tp.topic, tp.partition, rec.offset, rec.key, rec.value, ts))
            return out

    def _keep_alive(self, timeout_seconds: float) -> list[Message]:
        """A poll that takes nothing: every owned partition is paused around it (kafka-python
        keeps what it already fetched for them), so the group's business (heartbeats, a
        rebalance) goes on while the caller has no room for messages."""
        owned = list(self._consumer.assignment())
        self._consumer.pause(*owned)
        try:
            taken = self._consumer.poll(timeout_ms=int(timeout_seconds * 1000), max_records=1)
        finally:
            self._consumer.resume(*(tp for tp in owned if tp in self._consumer.assignment()))
        for tp, records in taken.items():
            # A partition gained during this poll was not paused: give back what it read.
            if records and tp in self._consumer.assignment():
                self._consumer.seek(tp, records[0].offset)
        fresh = self._take_fresh()
        if fresh and self._min_ts is not None:
            self._seek(sorted(fresh), self._min_ts, keep_committed=True)
        return []

    def _take_fresh(self) -> set[TopicPartition]:
        """Partitions owned now that were not at the last look. A partition kept across a
        rebalance keeps its position (kafka-python keeps its state), so it is not fresh."""
        now = set(self._consumer.assignment())
        fresh = now - self._known
        self._known = now
        return fresh

    def commit(self, messages: Sequence[Message]) -> None:
        """Commit. While the group rebalances the broker refuses commits: the offsets are
        kept, committed again at the next commit once the group has settled, or before
        their partitions are given up (see ``_commit_before_revoke``)."""
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in next_positions(messages).items()
        }
        if not offsets and not self._owed:
            return
        with self._lock, _boundary("commit"):
            self._owed.update(offsets)
            owed = dict(self._owed)
            try:
                self._consumer.commit(owed, timeout_ms=self._timeout_ms)
            except _REBALANCING as exc:
                log.debug("kafka bus: group %s is rebalancing; commit of %s deferred: %s",
                          self.group, _describe(owed), exc)
                return
            for tp, done in owed.items():
                if self._owed.get(tp) is done:
                    del self._owed[tp]

    async def _commit_before_revoke(self, revoked: set[TopicPartition]) -> None:
        """On kafka-python's IO loop, before the member gives ``revoked`` up: commit
        what is owed for them, so their next owner starts after it."""
        owed = {tp: om for tp, om in self._owed.items() if tp in revoked}
        if not owed:
            return
        commit = getattr(getattr(self._consumer, "_coordinator", None), "_commit_offsets_sync_async", None)
        if commit is None:  # kafka-python's internals changed: say what is not committed
            log.warning("kafka bus: group %s: cannot commit before a rebalance with this kafka-python; %s "
                        "not committed, their next owner replays from the offsets committed before",
                        self.group, _describe(owed))
            return
        try:
            await commit(owed, timeout_ms=self._timeout_ms)
        except KafkaError as exc:
            log.warning("kafka bus: group %s: could not commit %s before giving the partitions up (%s): "
                        "their next owner replays from the offsets committed before", self.group,
                        _describe(owed), exc)
        else:
            log.info("kafka bus: group %s: committed %s before the rebalance", self.group, _describe(owed))
            for tp in owed:
                if self._owed.get(tp) is owed[tp]:
                    del self._owed[tp]

    def _lost(self, lost: set[TopicPartition]) -> None:
        owed = {tp: om for tp, om in self._owed.items() if tp in lost}
        if owed:
            log.warning("kafka bus: group %s dropped this member (session timeout?): %s not committed; "
                        "their next owner replays from the offsets committed before", self.group, _describe(owed))
        for tp in owed:
            del self._owed[tp]

    def _forget_unowned(self, assigned: set[TopicPartition]) -> None:
        """After an assignment: what is owed for partitions no longer owned cannot be
        committed by this member any more (the revoke step logged it)."""
        owned = set(self._consumer.assignment()) | assigned
        for tp in [tp for tp in self._owed if tp not in owned]:
            del self._owed[tp]

    def seek_to_time(self, timestamp_ns: int) -> None:
        with self._lock, _boundary("seek"):
            self._min_ts = int(timestamp_ns)
            self._known = set(self._consumer.assignment())  # what is assigned now is sought exactly, below
            assigned = sorted(self._known)
            if assigned:
                self._seek(assigned, self._min_ts, keep_committed=False)

    def _seek(self, tps: list[TopicPartition], timestamp_ns: int, *, keep_committed: bool) -> None:
        targets = _offsets_for_time(self._bus, self._consumer, tps, timestamp_ns, self._timeout_ms)
        for tp in tps:
            position = targets[tp]
            if keep_committed:
                committed = self._consumer.committed(tp, timeout_ms=self._timeout_ms)
                position = max(position, committed or 0)
            self._consumer.seek(tp, position)
        log.info("kafka bus: sought %d partitions to %d ns", len(tps), timestamp_ns)

    def assignment(self) -> list[tuple[str, int]]:
        # No lock: a read of kafka-python's subscription state, which it guards itself.
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def lag(self) -> list[PartitionLag]:
        """The group's committed offset (one request per partition to the coordinator)
        and the end offset (one request to the leaders) of each partition this member owns.
        The end is at least the highwater mark the last fetch reported: a broker that
        answers end offsets with the last batch's base (Tansu) would otherwise hide that
        batch's lag. A partition the group never committed counts from its first offset
        still on the broker (retention may have deleted the ones before)."""
        # A figure for a dashboard: bounded well below a request timeout, since it shares
        # this consumer's thread with poll.
        timeout_ms = min(self._timeout_ms, LAG_TIMEOUT_MS)
        with self._lock, _boundary("lag"):
            tps = sorted(self._consumer.assignment())
            if not tps:
                return []
            ends = self._consumer.end_offsets(tps, timeout_ms=timeout_ms)
            committed = {tp: self._consumer.committed(tp, timeout_ms=timeout_ms) for tp in tps}
            never = [tp for tp, offset in committed.items() if offset is None]
            starts = self._consumer.beginning_offsets(never, timeout_ms=timeout_ms) if never else {}
            return [
                PartitionLag(tp.topic, tp.partition, committed[tp] if committed[tp] is not None else starts.get(tp, 0),
                             max(ends.get(tp) or 0, self._consumer.highwater(tp) or 0))
                for tp in tps
            ]

    def joined(self) -> bool:
        return self._listener.joined

    def rebalancing(self) -> bool:
        return self._listener.rebalancing

    def close(self) -> None:
        with self._lock:
            if self._owed:  # offsets the caller asked for: leaving the group is the last chance
                try:
                    self._consumer.commit(dict(self._owed), timeout_ms=self._timeout_ms)
                    self._owed.clear()
                except KafkaError as exc:
                    log.warning("kafka bus: group %s: %s not committed at close (%s): they are replayed again",
                                self.group, _describe(self._owed), exc)
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("kafka bus: consumer did not leave its group cleanly: %s", exc)


def _describe(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(f"partition {tp.partition} of {tp.topic} up to offset {om.offset}"
                     for tp, om in sorted(offsets.items()))


class KafkaBusReader:
    """Reads every partition of some topics by manual assignment, without joining a
    group (see ``Bus.reader``)."""

    def __init__(self, bus: KafkaBus, topics: Sequence[str], group: str | None, from_ns: int | None) -> None:
        self._bus = bus
        self._timeout_ms = bus.client_config().get("request_timeout_ms", 30_000)
        self._min_ts = from_ns
        self._lock = threading.Lock()
        config = {"fetch_max_wait_ms": DEFAULT_FETCH_MAX_WAIT_MS} | bus.client_config(("fetch_max_wait_ms",))
        with _boundary("open reader"):
            # group_id only to read the group's committed offsets: a manually assigned
            # consumer never joins its group and commits nothing here.
            self._consumer = KafkaConsumer(
                group_id=group, enable_auto_commit=False, auto_offset_reset="earliest", **config
            )
        try:
            with _boundary("open reader"):
                tps: list[TopicPartition] = []
                for topic in sorted(set(topics)):
                    partitions = self._consumer.partitions_for_topic(topic)
                    if not partitions:
                        raise BusError(f"kafka bus: no topic {topic!r}", retriable=False)
                    tps += [TopicPartition(topic, p) for p in sorted(partitions)]
                self._tps = tps
                self._consumer.assign(tps)
                starts = dict.fromkeys(tps, 0)
                starts.update(self._consumer.beginning_offsets(tps, timeout_ms=self._timeout_ms))
                if group is not None:
                    for tp in tps:
                        committed = self._consumer.committed(tp, timeout_ms=self._timeout_ms)
                        if committed is not None:
                            starts[tp] = max(starts[tp], committed)
                if from_ns is not None:
                    sought = _offsets_for_time(bus, self._consumer, tps, from_ns, self._timeout_ms)
                    starts = {tp: max(start, sought[tp]) for tp, start in starts.items()}
                for tp, start in starts.items():
                    self._consumer.seek(tp, start)
        except BaseException:
            self._consumer.close(autocommit=False)
            raise

    def poll(self, max_records: int = 500, timeout_seconds: float = 1.0) -> list[Message]:
        with self._lock, _boundary("read"):
            batches = self._consumer.poll(timeout_ms=int(timeout_seconds * 1000), max_records=max_records)
            min_ts = self._min_ts
            out: list[Message] = []
            for tp in sorted(batches):
                for rec in batches[tp]:
                    ts = _timestamp_ns(rec)
                    if min_ts is None or ts >= min_ts:
                        out.append(Message(tp.topic, tp.partition, rec.offset, rec.key, rec.value, ts))
            return out

    def positions(self) -> dict[tuple[str, int], int]:
        with self._lock, _boundary("read positions"):
            return {(tp.topic, tp.partition): self._consumer.position(tp, timeout_ms=self._timeout_ms)
                    for tp in self._tps}

    def ends(self) -> dict[tuple[str, int], int | None]:
        # The high watermark of the last fetch: Tansu's ListOffsets "latest" answers the
        # last batch's base offset, not the end, so that answer is not used.
        with self._lock:
            return {(tp.topic, tp.partition): self._consumer.highwater(tp) for tp in self._tps}

    def close(self) -> None:
        with self._lock:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("kafka bus: reader did not close cleanly: %s", exc)


def _offsets_for_time(
    bus: KafkaBus,
    consumer: KafkaConsumer,
    tps: list[TopicPartition],
    timestamp_ns: int,
    timeout_ms: int,
) -> dict[TopicPartition, int]:
    """For each partition, an offset at or before its first record with time >= T."""
    target_ms = timestamp_ns // 1_000_000
    answers = consumer.offsets_for_times({tp: target_ms for tp in tps}, timeout_ms=timeout_ms)
    out: dict[TopicPartition, int] = {}
    unanswered: list[TopicPartition] = []
    for tp in tps:
        answer = answers.get(tp)
        if answer is None:
            out[tp] = consumer.end_offsets([tp], timeout_ms=timeout_ms)[tp]
        else:
            unanswered.append(tp)
    if not unanswered:
        return out
    probe = _Probe(bus, timeout_ms)
    try:
        for tp in unanswered:
            answer = answers[tp]
            hint = answer.offset if answer.timestamp >= target_ms else None
            out[tp] = probe.first_at_or_after(tp, target_ms, hint)
    finally:
        probe.close()
    return out


class _Probe:
    """Reads single records at chosen offsets, to check or replace the broker's answer."""

    def __init__(self, bus: KafkaBus, timeout_ms: int) -> None:
        config = bus.client_config(_CONSUMER_OPTIONS)
        config.pop("max_poll_interval_ms", None)
        self._consumer = KafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=1,
            **(config | {"fetch_max_wait_ms": 50}),
        )
        self._timeout = timeout_ms / 1000
        self._assigned: TopicPartition | None = None

    def close(self) -> None:
        self._consumer.close(autocommit=False)

    def _read(self, tp: TopicPartition, offset: int) -> tuple[int, int] | None:
        """(offset, timestamp ms) of the first record at or after ``offset``, or None."""
        if self._assigned != tp:
            self._consumer.assign([tp])
            self._assigned = tp
        self._consumer.seek(tp, offset)
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            records = self._consumer.poll(timeout_ms=100, max_records=1).get(tp)
            if records:
                return records[0].offset, records[0].timestamp
            highwater = self._consumer.highwater(tp)
            if highwater is not None and offset >= highwater:
                return None
        raise BusError(f"kafka bus: seek: no answer reading {tp} at {offset}", retriable=True)

    def first_at_or_after(self, tp: TopicPartition, target_ms: int, hint: int | None) -> int:
        def reached(offset: int) -> bool:
            found = self._read(tp, offset)
            return found is None or found[1] >= target_ms

        low = self._consumer.beginning_offsets([tp], timeout_ms=int(self._timeout * 1000))[tp]
        if hint is not None and hint >= low and reached(hint) and (hint == low or not reached(hint - 1)):
            return hint
        first = self._read(tp, low)
        if first is None or first[1] >= target_ms:
            return low
        # Invariant: the record at `low` is older than the target; `high` is past it.
        low = first[0]
        high = self._consumer.highwater(tp)
        if high is None or high <= low:
            return low + 1
        while high - low > 1:
            mid = (low + high) // 2
            found = self._read(tp, mid)
            if found is None or found[1] >= target_ms:
                high = mid
            else:
                low = max(mid, found[0])
        return high


def _keep_finished_joins(consumer: KafkaConsumer) -> None:
    """Work around a kafka-python 3.0 bug that can keep a group from ever forming.

    ``poll`` starts a JoinGroup/SyncGroup round as a task and, when its timeout ends
    first, leaves the task running for the next ``poll`` to await. But if the task
    finishes *between* two polls, the next poll sees a done task, throws its result
    (the member's assignment) away and sends a new JoinGroup, which restarts the
    rebalance for every member; with short polls or several members this can repeat
    for ever. Here a finished, successful round is completed exactly as kafka-python
    completes one it awaited. Skipped (with a warning) if the internals differ.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    needed = ("_join_task", "_lock", "join_group_async", "_enable_heartbeat", "rejoining",
              "rejoin_needed", "state", "_on_join_complete_async", "_generation", "need_rejoin")
    if coordinator is None or not all(hasattr(coordinator, name) for name in needed):
        log.warning("kafka bus: kafka-python internals changed; join workaround not applied")
        return
    original = coordinator.join_group_async

    async def join_group_async(timeout_ms: int | None = None) -> bool:
        task = coordinator._join_task
        if task is not None and task.succeeded() and coordinator.need_rejoin():
            coordinator._join_task = None
            with coordinator._lock:
                coordinator.rejoining = False
                coordinator.rejoin_needed = False
                coordinator.state = MemberState.STABLE
                coordinator._enable_heartbeat()
            generation = coordinator._generation
            await coordinator._on_join_complete_async(
                generation.generation_id, generation.member_id, generation.protocol, task.value
            )
            return True
        return bool(await original(timeout_ms=timeout_ms))

    coordinator.join_group_async = join_group_async
