"""The embedded bus: Kafka's model (topics, partitions, dense offsets, consumer groups)
in one SQLite file, safe to share between processes on one machine.

Durability: WAL journal with ``synchronous=FULL``. A producer's ``flush`` is one
transaction, so it costs one fsync however many messages it carries; in exchange, a
flushed message survives power loss, not just a crash of the process. The collector
acknowledges forward-protocol chunks on the strength of ``flush``, so the stronger
promise is the one worth paying for (NORMAL could lose the last commits on power loss).
A producer opened with ``power_safe=False`` (the replayer's, for its results and the
offsets committed with them) commits with ``synchronous=NORMAL``: no fsync per flush.
Its flushes survive the crash of any process; an OS crash or power loss can take back
those made since the file's last fsync (any power-safe commit on the file, by any
process, or a checkpoint: the WAL is one log, so each fsync covers every frame before
it). What it takes back goes whole, results together with their offsets, so those
requests are replayed again (at-least-once). In exchange the replayer's frequent
flushes no longer wait for an fsync each, which two replayer processes sharing the file
felt most (bench/replayer.py's scale figure).

Groups: each consumer is a row in ``members`` with a heartbeat it refreshes while it
polls; a member silent for ``session_timeout_ms`` is dead. The partitions of the
subscribed topics, sorted, are dealt round-robin over the live members, sorted by id.
A partition changes hands through the ``owners`` table: a member releases what is no
longer its own and claims what is, only when the previous owner has let go (or died),
so no two live members read one partition at the same time. A member that gains a
partition starts from the group's committed offset (or 0).

Storage: as Kafka keeps record batches, each flush stores a partition's messages as a
few batch rows (``batches``: the first offset, the count, the largest timestamp, the
timestamps and lengths packed as int64, the keys and values concatenated), at most
``BATCH_MAX_MESSAGES`` messages and ``BATCH_MAX_BYTES`` of keys and values each (one
larger message gets a batch of its own). One row per message cost a b-tree insert into
the table and two indexes per message, and an interpreter-lock round trip per row. A poll reads the batch
holding its position and the ones after it; a time seek finds the first batch whose
largest timestamp reaches T (an index), then the first message in it that does. Schema
version 1 (one row per message) is converted in place, in one transaction, when opened.

Timestamps are int nanoseconds and are kept exactly.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import threading
import time
import uuid
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from shadowreplay.contract.bus.base import Message, PartitionLag, next_positions
from shadowreplay.contract.errors import BusError, ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 2
MAX_BUFFERED = 10_000
POLL_STEP_SECONDS = 0.025
BATCH_MAX_MESSAGES = 512
BATCH_MAX_BYTES = 256 * 1024
PAGE_SIZE = 16384

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS topics ("
    " id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL)",
    # meta: (timestamp, key length or -1 for none, value length) per message, int64
    # little-endian; data: each message's key then value, in offset order.
    "CREATE TABLE IF NOT EXISTS batches ("
    " topic INTEGER NOT NULL, part INTEGER NOT NULL, base INTEGER NOT NULL,"
    " count INTEGER NOT NULL, max_ts INTEGER NOT NULL, meta BLOB NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (topic, part, base))",
    "CREATE INDEX IF NOT EXISTS batches_by_time ON batches (topic, part, max_ts, base)",
    "CREATE TABLE IF NOT EXISTS group_offsets ("
    " grp TEXT NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,"
    " PRIMARY KEY (grp, topic, part)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS members ("
    " grp TEXT NOT NULL, member TEXT NOT NULL, topics TEXT NOT NULL,"
    " heartbeat_ns INTEGER NOT NULL, PRIMARY KEY (grp, member)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS owners ("
    " grp TEXT NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL, member TEXT NOT NULL,"
    " PRIMARY KEY (grp, topic, part)) WITHOUT ROWID",
)

OPTIONS = ("session_timeout_ms", "rebalance_interval_ms", "busy_timeout_ms")


def _connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) and reads are one
    # statement each, so no read transaction is ever held open across calls. One
    # connection per producer/consumer, guarded by that object's lock; the aio adapter
    # may create it on one thread and close it from another, hence check_same_thread.
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise BusError(f"cannot open sqlite bus {path!r}: {exc}", retriable=False) from exc
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect only on a new, empty file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            return conn
        except sqlite3.Error as exc:
            # Processes that open a new file at the same moment race to turn it to WAL;
            # SQLite answers the losers "locked" at once, without its busy wait. Wait here.
            if "locked" in str(exc) and time.monotonic() < deadline:
                time.sleep(0.005)
                continue
            conn.close()
            raise BusError(f"cannot open sqlite bus {path!r}: {exc}", retriable=False) from exc


def _translate(exc: sqlite3.Error, what: str) -> BusError:
    # A locked/busy database may succeed later, and so may a full disk once space is
    # freed; anything else (corrupt file, schema trouble) will not by itself.
    busy = isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc) or "full" in str(exc)
    )
    return BusError(f"sqlite bus: {what} failed: {exc}", retriable=busy)


@contextmanager
def _write(conn: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """One short write transaction; sqlite errors come out as BusError."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _translate(exc, what) from exc
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("sqlite bus: rollback after failed %s", what)
        if isinstance(exc, sqlite3.Error):
            raise _translate(exc, what) from exc
        raise


def _read(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except sqlite3.Error as exc:
        raise _translate(exc, what) from exc


def _ensure_topic(conn: sqlite3.Connection, topic: str, partitions: int) -> tuple[int, int]:
    """Create ``topic`` if missing; return its (id, partition count) as stored."""
    if partitions < 1:
        raise ConfigError(f"bus.partitions: must be >= 1, got {partitions} for topic {topic!r}")
    row = _read("topic lookup", lambda: conn.execute(
        "SELECT id, partitions FROM topics WHERE name = ?", (topic,)).fetchone())
    if row is None:
        with _write(conn, "create topic"):
            conn.execute(
                "INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)", (topic, partitions)
            )
            row = conn.execute(
                "SELECT id, partitions FROM topics WHERE name = ?", (topic,)).fetchone()
    return int(row[0]), int(row[1])


_LITTLE = sys.byteorder == "little"


def _meta(meta_bytes: bytes) -> array[int]:
    """A batch's (timestamp, key length, value length) per message, flat."""
    meta = array("q", meta_bytes)
    if not _LITTLE:
        meta.byteswap()
    return meta


def _unpack(topic: str, partition: int, base: int, meta_bytes: bytes, data: bytes, first: int,
            room: int) -> list[Message]:
    """The batch's messages from offset ``first`` on, at most ``room`` of them."""
    meta = _meta(meta_bytes)
    skip = first - base
    key_lens = meta[1::3]
    skipped = key_lens[:skip]
    at = sum(meta[2:3 * skip:3]) + sum(skipped) + skipped.count(-1)  # -1 (no key) takes no bytes
    end = min(len(key_lens), skip + room)
    rows: list[Message] = []
    append = rows.append
    for off, ts, key_len, value_len in zip(range(first, base + end), meta[3 * skip:3 * end:3], key_lens[skip:end],
                                           meta[3 * skip + 2:3 * end:3], strict=True):
        key = None
        if key_len >= 0:
            key = data[at:at + key_len]
            at += key_len
        append(Message(topic, partition, off, key, data[at:at + value_len], ts))
        at += value_len
    return rows


def _packed(messages: Sequence[tuple[int, bytes | None, bytes]], max_bytes: int
            ) -> Iterator[tuple[int, int, bytes, bytes]]:
    """Cut one partition's (timestamp, key, value) messages into batches of at most
    ``BATCH_MAX_MESSAGES`` and ``max_bytes`` of keys and values (a larger message alone);
    yield each as (count, largest timestamp, meta, data)."""
    meta = array("q")
    parts: list[bytes] = []
    size = 0
    for ts, key, value in messages:
        n = len(value) if key is None else len(key) + len(value)
        if parts and (len(meta) >= 3 * BATCH_MAX_MESSAGES or size + n > max_bytes):
            yield _sealed(meta, parts)
            meta, parts, size = array("q"), [], 0
        if key is None:
            meta.extend((ts, -1, len(value)))
        else:
            meta.extend((ts, len(key), len(value)))
            parts.append(key)
        parts.append(value)
        size += n
    if parts:
        yield _sealed(meta, parts)


def _sealed(meta: array[int], parts: list[bytes]) -> tuple[int, int, bytes, bytes]:
    count, top = len(meta) // 3, max(meta[0::3])
    if not _LITTLE:
        meta.byteswap()
    return count, top, meta.tobytes(), b"".join(parts)


# A flush goes in with few statements: each statement (and each row it steps through)
# releases and retakes the GIL, and with a busy event loop holding it every retake is a
# forced switch (a wait of up to one switch interval and two context switches). One
# statement reads the end offset of every partition the flush writes to, as a single row;
# the batch rows (a few per partition) follow. (A multi-row INSERT would save a retake or
# two per flush, but copies every blob once more: slower in the end.)


def _max_batch_bytes(conn: sqlite3.Connection) -> int:
    # A batch's data must fit SQLite's length limit (1 GB unless lowered).
    return min(BATCH_MAX_BYTES, conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))


def _insert_batches(conn: sqlite3.Connection,
                    by_partition: dict[tuple[int, int], list[tuple[int, bytes | None, bytes]]]) -> None:
    """Append each (topic id, partition)'s (timestamp, key, value) messages to it."""
    ends = _end_offsets(conn, list(by_partition))
    max_bytes = _max_batch_bytes(conn)
    _insert_rows(conn, [row for (topic_id, partition), messages in by_partition.items()
                        for row in _rows(topic_id, partition, ends[(topic_id, partition)], messages, max_bytes)])


def _rows(topic_id: int, partition: int, base: int, messages: Sequence[tuple[int, bytes | None, bytes]],
          max_bytes: int) -> list[tuple[int, int, int, int, int, bytes, bytes]]:
    """The batch rows of ``messages`` (timestamp, key, value) from offset ``base`` on."""
    rows = []
    for count, top, meta, data in _packed(messages, max_bytes):
        rows.append((topic_id, partition, base, count, top, meta, data))
        base += count
    return rows


def _insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[int, int, int, int, int, bytes, bytes]]) -> None:
    conn.executemany("INSERT INTO batches (topic, part, base, count, max_ts, meta, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     rows)


# The batch holding offset ?3, or else the first one after it. (The inner query looks only
# at the last batch starting at or before ?3, so it costs one index step however long the
# partition; "base + count > ?3" as a plain condition would scan.)
_SELECT_BATCH = (
    "SELECT base, meta, data FROM batches WHERE topic = ?1 AND part = ?2 AND base >= COALESCE("
    "(SELECT CASE WHEN base + count > ?3 THEN base ELSE ?3 END FROM batches"
    " WHERE topic = ?1 AND part = ?2 AND base <= ?3 ORDER BY base DESC LIMIT 1), ?3)"
    " ORDER BY base LIMIT 1"
)


def _select_rows(conn: sqlite3.Connection, topic: str, topic_id: int, partition: int, position: int,
                 room: int) -> list[Message]:
    """Up to ``room`` messages of one partition from offset ``position`` on, in offset order."""
    rows: list[Message] = []
    while len(rows) < room:
        # One statement per batch: each releases and retakes the GIL once (a busy event
        # loop can hold it for a switch interval), so no row is fetched that is not used.
        batch = conn.execute(_SELECT_BATCH, (topic_id, partition, position)).fetchall()
        if not batch:
            break
        base, meta, data = batch[0]
        got = _unpack(topic, partition, base, meta, data, max(position, base), room - len(rows))
        if not got and rows:
            break  # return the good messages first; the next poll reports the damage
        if not got:  # its count says it holds ``position``, its packed lengths say not
            raise BusError(f"sqlite bus: the batch at offset {base} of partition {partition} is damaged",
                           retriable=False)
        rows.extend(got)
        position = got[-1].offset + 1
    return rows


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Convert schema version 1 (a ``messages`` table, one row per message) into batches,
    inside the caller's transaction, and drop the old table."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'").fetchone() is None:
        return
    count = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    log.info("sqlite bus: converting %d messages to bus schema version %d", count, SCHEMA_VERSION)
    max_bytes = _max_batch_bytes(conn)
    run: list[tuple[int, bytes | None, bytes]] = []
    run_at: tuple[int, int, int] | None = None  # (topic, partition, first offset) of ``run``
    reader = conn.cursor()  # its own cursor: the inserts below must not reset it
    for topic_id, partition, off, ts, key, value in reader.execute(
            "SELECT topic, part, off, ts, key, value FROM messages ORDER BY topic, part, off"):
        if run_at is not None and (run_at[:2] != (topic_id, partition) or run_at[2] + len(run) != off
                                   or len(run) >= BATCH_MAX_MESSAGES):
            _insert_rows(conn, _rows(*run_at, run, max_bytes))  # offsets as they were, gaps included
            run, run_at = [], None
        if run_at is None:
            run_at = (topic_id, partition, off)
        run.append((ts, key, value))
    if run_at is not None:
        _insert_rows(conn, _rows(*run_at, run, max_bytes))
    conn.execute("DROP TABLE messages")  # and its index


def _end_offsets(conn: sqlite3.Connection, partitions: Sequence[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """The offset each (topic id, partition)'s next message gets, read by one statement
    whose result is one row (each row fetched is another GIL retake)."""
    ends: dict[tuple[int, int], int] = {}
    for at in range(0, len(partitions), 400):  # 2 parameters each
        chunk = partitions[at:at + 400]
        row = conn.execute(
            f"WITH parts (t, p) AS (VALUES {', '.join(['(?, ?)'] * len(chunk))}) SELECT group_concat("
            "t || ':' || p || ':' || COALESCE((SELECT base + count FROM batches WHERE topic = t AND part = p"
            " ORDER BY base DESC LIMIT 1), 0), ' ') FROM parts", [x for tp in chunk for x in tp]).fetchone()
        for item in row[0].split():
            t, p, end = (int(x) for x in item.split(":"))
            ends[(t, p)] = end
    return ends


def _end_offset(conn: sqlite3.Connection, topic_id: int, partition: int) -> int:
    """The offset the partition's next message gets."""
    return _end_offsets(conn, [(topic_id, partition)])[(topic_id, partition)]


def _commit_offsets(conn: sqlite3.Connection, group: str, messages: Sequence[Message]) -> None:
    rows = [(group, t, p, o) for (t, p), o in next_positions(messages).items()]
    for at in range(0, len(rows), 200):  # one statement (one GIL retake) for up to 200 partitions
        chunk = rows[at:at + 200]
        conn.execute(
            f"INSERT INTO group_offsets (grp, topic, part, off) VALUES {', '.join(['(?, ?, ?, ?)'] * len(chunk))}"
            " ON CONFLICT (grp, topic, part) DO UPDATE SET off = excluded.off",
            [x for row in chunk for x in row],
        )


def check_options(
    url: str, path: str, *, session_timeout_ms: int = 10_000, rebalance_interval_ms: int = 500,
    busy_timeout_ms: int = 30_000,
) -> None:
    """What a bus file at ``path`` with these options needs before it is opened."""
    if rebalance_interval_ms * 2 > session_timeout_ms:
        raise ConfigError(f"bus.url: {url!r}: rebalance_interval_ms must be at most half of session_timeout_ms")
    parent = Path(path).parent
    if not parent.is_dir():
        raise ConfigError(f"bus.url: {url!r}: directory {str(parent)!r} does not exist")


def _offset_for_time(conn: sqlite3.Connection, topic_id: int, partition: int, timestamp_ns: int) -> int:
    """The partition's first offset whose timestamp is >= ``timestamp_ns`` (or its end)."""

    def seek() -> int:
        # Every batch before the first one whose largest timestamp reaches T is older.
        row = conn.execute(
            "SELECT base, meta FROM batches WHERE topic = ? AND part = ? AND max_ts >= ?"
            " ORDER BY base LIMIT 1", (topic_id, partition, timestamp_ns)).fetchone()
        if row is None:
            return _end_offset(conn, topic_id, partition)
        base, meta = row
        return int(base) + next(i for i, ts in enumerate(_meta(meta)[0::3]) if ts >= timestamp_ns)

    return _read("seek", seek)


def _fetch(conn: sqlite3.Connection, topic_ids: dict[str, int], positions: dict[tuple[str, int], int],
           order: Sequence[tuple[str, int]], max_records: int, min_ts: int | None) -> tuple[list[Message], bool]:
    """Read up to ``max_records`` from the partitions in ``order``, moving ``positions``;
    leave out messages older than ``min_ts``. Also say whether any position moved."""
    out: list[Message] = []
    moved = False
    for topic, partition in order:
        room = max_records - len(out)
        if room <= 0:
            break
        position = positions[(topic, partition)]
        args = (conn, topic, topic_ids[topic], partition, position, room)
        try:
            rows = _read("poll", lambda args=args: _select_rows(*args))  # type: ignore[misc]
        except BusError:
            if out:
                break  # hand over what was read (positions moved past it); the next poll raises again
            raise
        if not rows:
            continue
        moved = True
        positions[(topic, partition)] = rows[-1].offset + 1
        out.extend(rows if min_ts is None else (m for m in rows if m.timestamp_ns >= min_ts))
    return out, moved


class SqliteBus:
    """A bus in one SQLite file. Producers and consumers each open their own connection."""

    def __init__(
        self,
        url: str,
        path: str,
        partitions: int = 4,
        *,
        session_timeout_ms: int = 10_000,
        rebalance_interval_ms: int = 500,
        busy_timeout_ms: int = 30_000,
    ) -> None:
        if partitions < 1:
            raise ConfigError(f"bus.partitions: must be >= 1, got {partitions}")
        check_options(
            url, path, session_timeout_ms=session_timeout_ms, rebalance_interval_ms=rebalance_interval_ms,
            busy_timeout_ms=busy_timeout_ms,
        )
        self.url = url
        self.path = path
        self.partitions = partitions
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_interval_ms = rebalance_interval_ms
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._conn = _connect(path, busy_timeout_ms)
        try:
            with _write(self._conn, "create schema"):
                version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    # Not ours to change: a newer build's layout, read wrongly or stamped over.
                    raise ConfigError(f"{url}: the file's bus schema is version {version}, written by a "
                                      f"newer shadowreplay; this one reads version {SCHEMA_VERSION}")
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                if version == 1:
                    _migrate_v1(self._conn)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._conn.close()
            raise

    def connect(self) -> sqlite3.Connection:
        return _connect(self.path, self.busy_timeout_ms)

    def ensure_topic(self, topic: str, partitions: int) -> None:
        """Create ``topic`` with ``partitions`` partitions if it does not exist."""
        with self._lock:
            _ensure_topic(self._conn, topic, partitions)

    def producer(self, *, power_safe: bool = True) -> SqliteProducer:
        return SqliteProducer(self, power_safe=power_safe)

    def consumer(self, topics: Sequence[str], group: str) -> SqliteConsumer:
        return SqliteConsumer(self, topics, group)

    def reader(self, topics: Sequence[str], *, group: str | None = None, from_ns: int | None = None) -> SqliteReader:
        return SqliteReader(self, topics, group, from_ns)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SqliteProducer:
    """Buffers in memory (at most ``MAX_BUFFERED`` messages); ``flush`` is one transaction.

    ``power_safe=False``: this connection commits with ``synchronous=NORMAL``, so a flush
    writes the WAL without its fsync (see the module docstring)."""

    def __init__(self, bus: SqliteBus, max_buffered: int = MAX_BUFFERED, *, power_safe: bool = True) -> None:
        self._bus = bus
        self._max_buffered = max_buffered
        self._lock = threading.Lock()
        self._conn = bus.connect()
        self.power_safe = power_safe
        if not power_safe:
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._topics: dict[str, tuple[int, int]] = {}
        self._round_robin: dict[int, int] = {}
        # (topic id, partition) -> [(timestamp ns, key, value)], in publish order
        self._buffer: dict[tuple[int, int], list[tuple[int, bytes | None, bytes]]] = {}
        self._buffered = 0
        self._busy_ms = bus.busy_timeout_ms
        self._closed = False

    def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        timestamp_ns: int | None = None,
    ) -> None:
        self.publish_batch(topic, [(key, value, timestamp_ns)])

    def publish_batch(self, topic: str, items: Sequence[tuple[bytes | None, bytes, int | None]]) -> None:
        """``publish`` each (key, value, timestamp_ns) of ``items``, in order, at a
        fraction of the cost (one lock, one topic lookup)."""
        with self._lock:
            if self._closed:
                raise BusError("sqlite bus: producer is closed", retriable=False)
            if self._buffered and self._buffered + len(items) > self._max_buffered:
                self._flush_locked()
            spec = self._topics.get(topic)
            if spec is None:
                spec = self._topics[topic] = _ensure_topic(self._conn, topic, self._bus.partitions)
            topic_id, partitions = spec
            n = self._round_robin.get(topic_id, 0)
            crc32 = zlib.crc32
            now = time.time_ns()
            lists = [self._buffer.setdefault((topic_id, p), []) for p in range(partitions)]
            for key, value, ts in items:
                if key is None:
                    partition = n % partitions
                    n += 1
                else:
                    partition = crc32(key) % partitions
                lists[partition].append((now if ts is None else int(ts), key, value))
            self._round_robin[topic_id] = n
            self._buffered += len(items)

    def flush(self, timeout_seconds: float = 30.0) -> None:
        with self._lock:
            self._flush_locked(timeout_seconds)

    def commits_for(self, consumer: object) -> bool:
        """Whether ``flush_and_commit`` can commit ``consumer``'s offsets: a consumer of the same file."""
        return isinstance(consumer, SqliteConsumer) and consumer._bus.path == self._bus.path

    def flush_and_commit(self, consumer: SqliteConsumer, messages: Sequence[Message],
                         timeout_seconds: float = 30.0) -> None:
        """``flush``, and commit ``messages`` for ``consumer``'s group in the same transaction
        (as ``consumer.commit`` would): both happen or neither does, for one fsync."""
        if not self.commits_for(consumer):
            raise BusError("sqlite bus: flush_and_commit needs a consumer of the same bus file", retriable=False)
        with self._lock:
            self._flush_locked(timeout_seconds, (consumer.group, messages))

    def _flush_locked(self, timeout_seconds: float | None = None,
                      commit: tuple[str, Sequence[Message]] | None = None) -> None:
        if not self._buffered and not (commit and commit[1]):
            return
        if timeout_seconds is not None:
            # The only wait in a flush is for the write lock: bound it by the timeout.
            busy_ms = max(1, int(timeout_seconds * 1000))
            if busy_ms != self._busy_ms:
                self._conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
                self._busy_ms = busy_ms
        try:
            self._write_buffer(commit)
        finally:
            # Written or not, the buffer is done with: a failed flush leaves the messages
            # unacknowledged and every caller publishes them again, so keeping them here
            # would store them twice (Kafka's producer likewise drops failed sends).
            self._buffer.clear()
            self._buffered = 0

    def _write_buffer(self, commit: tuple[str, Sequence[Message]] | None = None) -> None:
        by_partition = {tp: messages for tp, messages in self._buffer.items() if messages}
        with _write(self._conn, "flush"):
            if commit is not None:
                _commit_offsets(self._conn, *commit)
            _insert_batches(self._conn, by_partition)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = self._buffered
            try:
                self._flush_locked()
            except BusError as exc:
                log.warning("sqlite bus: %d messages not flushed at close: %s", pending, exc)
            self._conn.close()


class SqliteConsumer:
    """One member of a consumer group; see the module docstring for how partitions are shared.

    ``seek_to_time(T)`` moves the partitions it owns to their first message with
    timestamp >= T; a partition it gains later starts at the later of the group's
    committed offset and that message. From then on, messages older than T are skipped.
    """

    def __init__(self, bus: SqliteBus, topics: Sequence[str], group: str) -> None:
        if not topics:
            raise ConfigError("bus consumer: at least one topic is required")
        self._bus = bus
        self.group = group
        self._member = uuid.uuid4().hex
        self._topics = sorted(set(topics))
        self._session_ns = bus.session_timeout_ms * 1_000_000
        self._interval = bus.rebalance_interval_ms / 1000
        self._lock = threading.Lock()
        self._conn = bus.connect()
        self._topic_ids: dict[str, int] = {}
        for topic in self._topics:
            self._topic_ids[topic] = _ensure_topic(self._conn, topic, bus.partitions)[0]
        self._positions: dict[tuple[str, int], int] = {}
        self._assigned: tuple[tuple[str, int], ...] = ()
        self._next_rebalance = 0.0
        self._rotate = 0
        self._min_ts: int | None = None
        self._closed = False
        self._joined = False
        # Join now, so that members created together are dealt partitions together.
        with _write(self._conn, "join group"):
            self._heartbeat(time.time_ns())

    def _heartbeat(self, now_ns: int) -> None:
        self._conn.execute(
            "INSERT INTO members (grp, member, topics, heartbeat_ns) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (grp, member) DO UPDATE SET heartbeat_ns = excluded.heartbeat_ns",
            (self.group, self._member, json.dumps(self._topics), now_ns),
        )

    def _rebalance(self) -> None:
        conn, grp = self._conn, self.group
        with _write(conn, "rebalance"):
            now = time.time_ns()
            self._heartbeat(now)
            conn.execute(
                "DELETE FROM members WHERE grp = ? AND heartbeat_ns < ?", (grp, now - self._session_ns)
            )
            conn.execute(
                "DELETE FROM owners WHERE grp = ? AND member NOT IN"
                " (SELECT member FROM members WHERE grp = ?)",
                (grp, grp),
            )
            members = [
                (m, set(json.loads(t)))
                for m, t in conn.execute(
                    "SELECT member, topics FROM members WHERE grp = ? ORDER BY member", (grp,)
                )
            ]
            wanted = sorted(set().union(*(t for _, t in members)))
            counts = dict(conn.execute(
                f"SELECT name, partitions FROM topics WHERE name IN ({','.join('?' * len(wanted))})",
                wanted,
            ).fetchall())
            mine: set[tuple[str, int]] = set()
            dealt = 0
            for topic in sorted(counts):
                eligible = [m for m, t in members if topic in t]
                for partition in range(counts[topic]):
                    if eligible[dealt % len(eligible)] == self._member:
                        mine.add((topic, partition))
                    dealt += 1
            owned = set(conn.execute(
                "SELECT topic, part FROM owners WHERE grp = ? AND member = ?", (grp, self._member)
            ).fetchall())
            conn.executemany(
                "DELETE FROM owners WHERE grp = ? AND topic = ? AND part = ? AND member = ?",
                [(grp, t, p, self._member) for t, p in owned - mine],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO owners (grp, topic, part, member) VALUES (?, ?, ?, ?)",
                [(grp, t, p, self._member) for t, p in mine - owned],
            )
            now_owned = set(conn.execute(
                "SELECT topic, part FROM owners WHERE grp = ? AND member = ?", (grp, self._member)
            ).fetchall())
            gained = now_owned - set(self._positions)
            committed = {
                (t, p): int(o)
                for t, p, o in conn.execute(
                    "SELECT topic, part, off FROM group_offsets WHERE grp = ?", (grp,)
                )
                if (t, p) in gained
            }
        for tp in set(self._positions) - now_owned:
            del self._positions[tp]
        self._assigned = tuple(sorted(now_owned))
        for tp in sorted(gained):
            position = committed.get(tp, 0)
            if self._min_ts is not None:
                position = max(position, self._offset_for_time(tp, self._min_ts))
            self._positions[tp] = position
        if gained or len(now_owned) != len(owned):
            log.debug("sqlite bus: member %s of %s owns %s", self._member, grp, sorted(now_owned))

    def _offset_for_time(self, tp: tuple[str, int], timestamp_ns: int) -> int:
        """The partition's first offset whose timestamp is >= ``timestamp_ns`` (or its end)."""
        return _offset_for_time(self._conn, self._topic_ids[tp[0]], tp[1], timestamp_ns)

    def _fetch(self, max_records: int) -> tuple[list[Message], bool]:
        """Read from owned partitions; also say whether any position moved."""
        tps = sorted(self._positions)
        if tps:
            self._rotate = (self._rotate + 1) % len(tps)
        return _fetch(self._conn, self._topic_ids, self._positions, tps[self._rotate:] + tps[:self._rotate],
                      max_records, self._min_ts)

    def poll(self, max_records: int = 500, timeout_seconds: float = 1.0) -> list[Message]:
        deadline = time.monotonic() + timeout_seconds
        with self._lock:
            if self._closed:
                raise BusError("sqlite bus: consumer is closed", retriable=False)
            while True:
                now = time.monotonic()
                if now >= self._next_rebalance:
                    self._rebalance()
                    self._joined = True
                    self._next_rebalance = time.monotonic() + self._interval
                if max_records <= 0:  # keep-alive only: the heartbeat above is all it takes
                    return []
                out, moved = self._fetch(max_records)
                now = time.monotonic()
                if out or now >= deadline:
                    return out
                if not moved:
                    time.sleep(min(POLL_STEP_SECONDS, deadline - now))

    def commit(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        with self._lock, _write(self._conn, "commit"):
            _commit_offsets(self._conn, self.group, messages)

    def seek_to_time(self, timestamp_ns: int) -> None:
        with self._lock:
            self._min_ts = int(timestamp_ns)
            for tp in self._positions:
                self._positions[tp] = self._offset_for_time(tp, self._min_ts)

    def assignment(self) -> list[tuple[str, int]]:
        # No lock, so another thread can watch a member that is blocked in poll.
        return list(self._assigned)

    def lag(self) -> list[PartitionLag]:
        """The group's committed offset and the end offset of each partition this member
        owns: two statements. A closed member owns nothing."""
        with self._lock:
            owned = list(self._assigned)
            if not owned:
                return []

            def read() -> list[PartitionLag]:
                committed = {(t, p): int(o) for t, p, o in self._conn.execute(
                    "SELECT topic, part, off FROM group_offsets WHERE grp = ?", (self.group,))}
                ends = _end_offsets(self._conn, [(self._topic_ids[t], p) for t, p in owned])
                return [PartitionLag(t, p, committed.get((t, p), 0), ends[(self._topic_ids[t], p)]) for t, p in owned]

            return _read("lag", read)

    def joined(self) -> bool:
        """True from the first poll on: its rebalance step deals this member its partitions."""
        return self._joined

    def rebalancing(self) -> bool:
        """Never: a partition changes hands only once its owner has let go of it, and a
        commit made by a member that just let go still lands."""
        return False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._assigned = ()
            try:
                with _write(self._conn, "leave group"):
                    self._conn.execute(
                        "DELETE FROM owners WHERE grp = ? AND member = ?", (self.group, self._member)
                    )
                    self._conn.execute(
                        "DELETE FROM members WHERE grp = ? AND member = ?", (self.group, self._member)
                    )
            except BusError as exc:
                log.warning("sqlite bus: could not leave group %s cleanly: %s", self.group, exc)
            finally:
                self._conn.close()


class SqliteReader:
    """Reads every partition of some topics without joining a group (see ``Bus.reader``)."""

    def __init__(self, bus: SqliteBus, topics: Sequence[str], group: str | None, from_ns: int | None) -> None:
        self._conn = bus.connect()
        self._lock = threading.Lock()
        self._min_ts = from_ns
        try:
            self._topic_ids: dict[str, int] = {}
            self._positions: dict[tuple[str, int], int] = {}
            for topic in sorted(set(topics)):
                row = _read("topic lookup", lambda topic=topic: self._conn.execute(  # type: ignore[misc]
                    "SELECT id, partitions FROM topics WHERE name = ?", (topic,)).fetchone())
                if row is None:
                    raise BusError(f"sqlite bus {bus.path}: no topic {topic!r}", retriable=False)
                self._topic_ids[topic] = int(row[0])
                for partition in range(int(row[1])):
                    self._positions[(topic, partition)] = 0
            if group is not None:
                committed = _read("read offsets", lambda: self._conn.execute(
                    "SELECT topic, part, off FROM group_offsets WHERE grp = ?", (group,)).fetchall())
                for topic, partition, offset in committed:
                    if (topic, partition) in self._positions:
                        self._positions[(topic, partition)] = int(offset)
            if from_ns is not None:
                for (topic, partition), position in self._positions.items():
                    at = _offset_for_time(self._conn, self._topic_ids[topic], partition, from_ns)
                    self._positions[(topic, partition)] = max(position, at)
        except BaseException:
            self._conn.close()
            raise

    def poll(self, max_records: int = 500, timeout_seconds: float = 1.0) -> list[Message]:
        deadline = time.monotonic() + timeout_seconds
        with self._lock:
            while True:
                out, moved = _fetch(self._conn, self._topic_ids, self._positions, sorted(self._positions),
                                    max_records, self._min_ts)
                now = time.monotonic()
                if out or now >= deadline:
                    return out
                if not moved:
                    time.sleep(min(POLL_STEP_SECONDS, deadline - now))

    def positions(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._positions)

    def ends(self) -> dict[tuple[str, int], int | None]:
        with self._lock:
            keys = [(self._topic_ids[t], p) for t, p in self._positions]
            ends = _read("end offsets", lambda: _end_offsets(self._conn, keys))
            return {(t, p): ends[(self._topic_ids[t], p)] for t, p in self._positions}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
