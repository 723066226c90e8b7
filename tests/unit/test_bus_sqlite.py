"""Fast checks of the embedded SQLite bus and of bus URL parsing (no broker needed)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from shadowreplay.contract.bus import Consumer, Message, open_bus
from shadowreplay.contract.bus import sqlite as sqlite_bus
from shadowreplay.contract.bus.sqlite import SqliteBus, SqliteProducer
from shadowreplay.contract.errors import BusError, ConfigError
from waiting import DEADLINE_SECONDS

FAST_GROUPS = "?session_timeout_ms=600&rebalance_interval_ms=100"


def poll_until(consumer: Consumer, want: int, seconds: float = DEADLINE_SECONDS, max_records: int = 1000) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + seconds
    while len(got) < want and time.monotonic() < deadline:
        got.extend(consumer.poll(max_records=max_records, timeout_seconds=0.05))
    return got


def settle(consumers: Sequence[Consumer], want: Sequence[int], seconds: float = DEADLINE_SECONDS) -> None:
    """Poll every consumer until each owns as many partitions as ``want`` says."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if [len(c.assignment()) for c in consumers] == list(want):
            return
        for c in consumers:
            c.poll(timeout_seconds=0.02)
    pytest.fail(f"assignment never became {want}: {[c.assignment() for c in consumers]}")


def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_bus("sqlite:///rel.db")
    assert isinstance(relative, SqliteBus) and relative.path == "rel.db"
    relative.close()
    assert (tmp_path / "rel.db").exists()
    absolute = open_bus(f"sqlite:///{tmp_path / 'abs.db'}?session_timeout_ms=5000")
    assert isinstance(absolute, SqliteBus) and absolute.path == str(tmp_path / "abs.db")
    assert absolute.session_timeout_ms == 5000
    absolute.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379",
        "sqlite://relative.db",
        "sqlite:///:memory:",
        "sqlite:///bus.db?unknown_ms=3",
        "sqlite:///bus.db?session_timeout_ms=soon",
        "kafka://",
        "kafka://host-without-port",
        "kafka://127.0.0.1:9092?acks=1",
    ],
)
def test_bad_urls_are_config_errors_naming_the_url(url: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        open_bus(url)
    assert url in str(caught.value)


def test_kafka_is_imported_only_for_kafka_urls(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from shadowreplay.contract.bus import open_bus\n"
        f"open_bus('sqlite:///{tmp_path / 'x.db'}').close()\n"
        "assert 'kafka' not in sys.modules, 'kafka-python was imported'\n"
        "assert 'shadowreplay.contract.bus.kafka' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_full_buffer_flushes_by_itself(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    assert isinstance(bus, SqliteBus)
    producer = SqliteProducer(bus, max_buffered=5)
    consumer = bus.consumer(["t"], "g")
    for i in range(6):
        producer.publish("t", b"%d" % i)
    assert sorted(int(m.value) for m in poll_until(consumer, 5)) == [0, 1, 2, 3, 4]
    producer.flush()
    assert [m.value for m in poll_until(consumer, 1)] == [b"5"]
    producer.close()
    consumer.close()
    bus.close()


def test_interleaved_producers_get_dense_offsets_and_commits_are_durable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bus.db'}"
    bus = open_bus(url, partitions=1)
    p1, p2 = bus.producer(), bus.producer()
    for i in range(5):
        p1.publish("t", b"a%d" % i)
        p2.publish("t", b"b%d" % i)
        (p1 if i % 2 else p2).flush()
    p1.close()
    p2.close()
    consumer = bus.consumer(["t"], "g")
    got = poll_until(consumer, 10)
    assert [m.offset for m in got] == list(range(10))
    consumer.commit(got[:4])
    consumer.close()
    bus.close()
    reopened = open_bus(url, partitions=1)
    again = reopened.consumer(["t"], "g")
    assert [m.offset for m in poll_until(again, 6)] == list(range(4, 10))
    again.close()
    reopened.close()


def test_ensure_topic_keeps_an_existing_partition_count(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}", partitions=2)
    bus.ensure_topic("t", 3)
    bus.ensure_topic("t", 8)
    c = bus.consumer(["t", "auto"], "g")
    settle([c], [3 + 2])  # "auto" was created with the bus default
    c.close()
    bus.close()


def test_a_silent_member_is_declared_dead_and_a_closed_one_hands_over_at_once(tmp_path: Path) -> None:
    # A session long enough that "before c's session would time out" holds on a loaded machine.
    session = 3.0
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}?session_timeout_ms={session * 1000:.0f}&rebalance_interval_ms=100")
    bus.ensure_topic("t", 4)
    a, b, c = (bus.consumer(["t"], "g") for _ in range(3))
    deadline = time.monotonic() + 5
    while sorted(len(x.assignment()) for x in (a, b, c)) != [1, 1, 2] and time.monotonic() < deadline:
        for x in (a, b, c):
            x.poll(timeout_seconds=0.02)
    owned = [p for x in (a, b, c) for p in x.assignment()]
    assert sorted(owned) == [("t", p) for p in range(4)]
    closed = time.monotonic()
    c.close()
    settle([a, b], [2, 2], seconds=session * 0.8)  # before c's session would time out
    assert time.monotonic() - closed < session
    started = time.monotonic()
    settle([b], [4], seconds=DEADLINE_SECONDS)  # a goes silent: it neither polls nor closes
    assert time.monotonic() - started > session * 0.8, "declared dead before its session timed out"
    producer = bus.producer()
    for i in range(40):
        producer.publish("t", b"%d" % i, key=b"%d" % i)
    producer.close()
    assert len(poll_until(b, 40)) == 40
    a.close()
    b.close()
    bus.close()


def test_poll_waits_without_spinning(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    c = bus.consumer(["t"], "g")
    c.poll(timeout_seconds=0)
    # The poll runs on this thread: its CPU time alone (not the process's, which other
    # threads share) shows whether it spun. The wall time only proves it waited.
    wall, cpu = time.monotonic(), time.thread_time()
    assert c.poll(timeout_seconds=1.0) == []
    wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
    assert wall >= 0.95
    assert cpu < 0.25
    c.close()
    bus.close()


def test_seek_applies_to_partitions_gained_later(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}{FAST_GROUPS}")
    bus.ensure_topic("t", 4)
    producer = bus.producer()
    base = 1_700_000_000_000_000_000
    for i in range(200):
        producer.publish("t", b"%d" % i, key=b"k%d" % (i % 10), timestamp_ns=base + i)
    producer.close()
    group = uuid.uuid4().hex
    a, b = bus.consumer(["t"], group), bus.consumer(["t"], group)
    settle([a, b], [2, 2])
    a.seek_to_time(base + 150)
    b.close()  # a gains b's partitions, where nothing was committed
    settle_without_reading = time.monotonic() + 5
    while len(a.assignment()) < 4 and time.monotonic() < settle_without_reading:
        a.poll(max_records=0, timeout_seconds=0.05)
    assert len(a.assignment()) == 4
    # White-box: every partition starts at its first message >= T (not merely filtered).
    partition_of = [zlib.crc32(b"k%d" % (i % 10)) % 4 for i in range(200)]
    expected = {("t", p): partition_of[:150].count(p) for p in range(4)}
    assert a._positions == expected  # type: ignore[attr-defined]
    got = poll_until(a, 50)
    assert sorted(int(m.value) for m in got) == list(range(150, 200))
    assert a.poll(timeout_seconds=0.2) == []
    a.close()
    bus.close()


ODD_ITEMS: list[tuple[bytes | None, bytes, int | None]] = [
    (None, b"", 2**63 - 1),
    (b"", b"\x00\xff", -5),
    (b"\xff\x00client", b'{"v":1}', 7),
    (None, b"x" * 70_000, 0),
    (b"10.0.0.1", b"\xc3\x28 not utf-8 \x00", 1_700_000_000_123_456_789),
    (b"\x00", b"\x00" * 3, 1),
]


def test_publish_batch_stores_exactly_what_publish_stores(tmp_path: Path) -> None:
    bus = SqliteBus(f"sqlite:///{tmp_path}/b.db", str(tmp_path / "b.db"), partitions=3)
    items = ODD_ITEMS * 3
    producer = bus.producer()
    producer.publish_batch("batch", items)
    for key, value, ts in items:
        producer.publish("single", value, key=key, timestamp_ns=ts)
    producer.flush()
    producer.close()
    consumer = bus.consumer(["batch", "single"], "g")
    got = poll_until(consumer, 2 * len(items))
    consumer.close()
    bus.close()

    def stored(topic: str) -> list[tuple[int, int, bytes | None, bytes, int]]:
        return sorted((m.partition, m.offset, m.key, m.value, m.timestamp_ns) for m in got if m.topic == topic)

    assert len(stored("batch")) == len(items)
    assert stored("batch") == stored("single")


def routed(items: Sequence[tuple[bytes | None, bytes, int | None]], partitions: int
           ) -> dict[int, list[tuple[bytes | None, bytes, int | None]]]:
    """What each partition must hold, in offset order: keyed items by crc32, the rest round robin."""
    out: dict[int, list[tuple[bytes | None, bytes, int | None]]] = {}
    n = 0
    for key, value, ts in items:
        if key is None:
            partition, n = n % partitions, n + 1
        else:
            partition = zlib.crc32(key) % partitions
        out.setdefault(partition, []).append((key, value, ts))
    return out


@pytest.mark.parametrize("max_messages", [3, 512], ids=["small-batches", "default-batches"])
def test_poll_returns_exactly_what_was_published_in_offset_order(tmp_path: Path, max_messages: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Polls of 7 start and end inside batches and cross from one batch into the next, and
    several flushes make several batches per partition."""
    monkeypatch.setattr(sqlite_bus, "BATCH_MAX_MESSAGES", max_messages)
    bus = SqliteBus(f"sqlite:///{tmp_path}/b.db", str(tmp_path / "b.db"), partitions=3)
    items = ODD_ITEMS * 40
    producer = bus.producer()
    for at in range(0, len(items), 50):
        producer.publish_batch("t", items[at:at + 50])
        producer.flush()
    producer.close()
    consumer = bus.consumer(["t"], "g")
    got = poll_until(consumer, len(items), max_records=7)
    consumer.close()
    bus.close()
    assert_partitions_hold(got, items, 3)


def assert_partitions_hold(got: Sequence[Message], items: Sequence[tuple[bytes | None, bytes, int | None]],
                           partitions: int) -> None:
    """Each partition holds exactly its share of ``items``, at offsets 0, 1, 2, ..."""
    by_partition: dict[int, list[Message]] = {}
    for m in got:
        by_partition.setdefault(m.partition, []).append(m)
    assert {p: [m.offset for m in ms] for p, ms in by_partition.items()} == {
        p: list(range(len(ms))) for p, ms in by_partition.items()}
    assert {p: [(m.key, m.value, m.timestamp_ns) for m in ms]
            for p, ms in by_partition.items()} == routed(items, partitions)


def test_a_flush_past_sqlites_length_limit_is_cut_into_batches_that_fit(tmp_path: Path) -> None:
    """A flush's messages together may exceed SQLite's length limit (1 GB by default;
    lowered here to 200 kB): each still fits alone, so nothing is refused."""
    bus = SqliteBus(f"sqlite:///{tmp_path}/b.db", str(tmp_path / "b.db"), partitions=1)
    items: list[tuple[bytes | None, bytes, int | None]] = [(b"k%d" % i, bytes([i]) * 90_000, i) for i in range(8)]
    producer = bus.producer()
    producer._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 200_000)
    producer.publish_batch("t", items)
    producer.flush()
    producer.close()
    consumer = bus.consumer(["t"], "g")
    got = poll_until(consumer, len(items))
    consumer.close()
    assert [(m.offset, m.key, m.value, m.timestamp_ns) for m in got] == [
        (i, key, value, ts) for i, (key, value, ts) in enumerate(items)]
    assert bus._conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 4  # two messages a batch
    bus.close()


def test_flush_and_commit_writes_messages_and_offsets_together_or_neither(tmp_path: Path) -> None:
    bus = SqliteBus(f"sqlite:///{tmp_path}/b.db", str(tmp_path / "b.db"), partitions=1)
    producer = bus.producer()
    for i in range(5):
        producer.publish("in", b"%d" % i)
    producer.flush()
    worker = bus.consumer(["in"], "workers")
    polled = poll_until(worker, 5)
    worker.close()  # leaves the group to the checkers below; its group is all a commit uses
    assert producer.commits_for(worker)

    producer.publish("out", b"result of 0-2")
    producer.flush_and_commit(worker, polled[:3])
    late = bus.consumer(["in"], "workers")  # resumes after what the group committed
    assert [m.value for m in poll_until(late, 2)] == [b"3", b"4"]
    late.close()
    reader = bus.consumer(["out"], "readers")
    assert [m.value for m in poll_until(reader, 1)] == [b"result of 0-2"]

    # A transaction that fails writes neither the results nor the offsets.
    bus._conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON group_offsets BEGIN SELECT RAISE(ABORT, 'no'); END")
    producer.publish("out", b"result of 3-4")
    with pytest.raises(BusError, match="no"):
        producer.flush_and_commit(worker, polled[3:])
    assert reader.poll(timeout_seconds=0.2) == []
    again = bus.consumer(["in"], "workers")
    assert [m.value for m in poll_until(again, 2)] == [b"3", b"4"]
    for c in (again, reader):
        c.close()
    producer.close()
    bus.close()


def test_a_producer_that_need_not_be_power_safe_skips_only_its_own_fsync(tmp_path: Path) -> None:
    """``power_safe=False`` (the replayer's results): that connection commits with
    ``synchronous=NORMAL``, every other keeps FULL, and what it flushed survives the
    process being killed the moment ``flush`` returns."""
    path = tmp_path / "b.db"
    bus = SqliteBus(f"sqlite:///{path}", str(path), partitions=2)
    safe, fast = bus.producer(), bus.producer(power_safe=False)

    def synchronous(p: SqliteProducer) -> int:
        return int(p._conn.execute("PRAGMA synchronous").fetchone()[0])

    assert (safe.power_safe, synchronous(safe)) == (True, 2)  # FULL: an fsync per flush
    assert (fast.power_safe, synchronous(fast)) == (False, 1)  # NORMAL: none
    safe.close()
    fast.close()
    code = (
        "import os, signal\n"
        "from shadowreplay.contract.bus.sqlite import SqliteBus\n"
        f"bus = SqliteBus('sqlite:///{path}', {str(path)!r}, partitions=2)\n"
        "p = bus.producer(power_safe=False)\n"
        "for i in range(300):\n"
        "    p.publish('t', b'%d' % i)\n"
        "p.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -signal.SIGKILL
    reader = bus.consumer(["t"], "g")
    assert sorted(int(m.value) for m in poll_until(reader, 300)) == list(range(300))
    reader.close()
    bus.close()


def test_flush_and_commit_needs_a_consumer_of_the_same_file(tmp_path: Path) -> None:
    here = SqliteBus(f"sqlite:///{tmp_path}/a.db", str(tmp_path / "a.db"))
    there = SqliteBus(f"sqlite:///{tmp_path}/b.db", str(tmp_path / "b.db"))
    producer, consumer = here.producer(), there.consumer(["t"], "g")
    assert not producer.commits_for(consumer)
    assert not producer.commits_for(object())
    with pytest.raises(BusError, match="same bus file"):
        producer.flush_and_commit(consumer, [])
    consumer.close()
    producer.close()
    here.close()
    there.close()


def test_a_file_from_a_newer_schema_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    SqliteBus(f"sqlite:///{path}", str(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigError, match="schema is version 99, written by a newer shadowreplay"):
        SqliteBus(f"sqlite:///{path}", str(path))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99


def test_a_time_seek_finds_the_first_message_at_or_after_t_with_timestamps_out_of_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_bus, "BATCH_MAX_MESSAGES", 7)
    stamps = [(i * 7919) % 101 for i in range(100)]  # a permutation of 0..100 minus one: out of order
    bus = SqliteBus(f"sqlite:///{tmp_path}/b.db", str(tmp_path / "b.db"), partitions=1)
    producer = bus.producer()
    producer.publish_batch("t", [(None, b"%d" % i, ts) for i, ts in enumerate(stamps)])
    producer.close()
    consumer = bus.consumer(["t"], "g")
    for t in (-1, 0, 1, 50, 99, 100, 101, 500):
        want = next((i for i, ts in enumerate(stamps) if ts >= t), len(stamps))
        assert consumer._offset_for_time(("t", 0), t) == want, t
    consumer.seek_to_time(60)
    got = poll_until(consumer, sum(ts >= 60 for ts in stamps), max_records=5)
    assert [(m.offset, m.timestamp_ns) for m in got] == [(i, ts) for i, ts in enumerate(stamps) if ts >= 60]
    consumer.close()
    bus.close()


V1_SCHEMA = (
    "CREATE TABLE topics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL)",
    "CREATE TABLE messages (topic INTEGER NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,"
    " ts INTEGER NOT NULL, key BLOB, value BLOB NOT NULL, PRIMARY KEY (topic, part, off))",
    "CREATE INDEX messages_by_time ON messages (topic, part, ts, off)",
    "CREATE TABLE group_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL,"
    " off INTEGER NOT NULL, PRIMARY KEY (grp, topic, part)) WITHOUT ROWID",
    "CREATE TABLE members (grp TEXT NOT NULL, member TEXT NOT NULL, topics TEXT NOT NULL,"
    " heartbeat_ns INTEGER NOT NULL, PRIMARY KEY (grp, member)) WITHOUT ROWID",
    "CREATE TABLE owners (grp TEXT NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL, member TEXT NOT NULL,"
    " PRIMARY KEY (grp, topic, part)) WITHOUT ROWID",
)


def test_a_version_1_file_is_converted_in_place_keeping_offsets_and_commits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file written by a build with one row per message: every message keeps its offset,
    key, value and timestamp, committed offsets still hold, and new messages follow on."""
    monkeypatch.setattr(sqlite_bus, "BATCH_MAX_MESSAGES", 4)
    path = tmp_path / "b.db"
    items = ODD_ITEMS * 3
    with sqlite3.connect(path) as conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO topics (id, name, partitions) VALUES (1, 't', 2), (2, 'empty', 2)")
        # Partition 0 holds all the items; partition 1 has a gap (offsets 0-2, then 10-11).
        conn.executemany("INSERT INTO messages VALUES (1, 0, ?, ?, ?, ?)",
                         [(i, ts or 0, key, value) for i, (key, value, ts) in enumerate(items)])
        conn.executemany("INSERT INTO messages VALUES (1, 1, ?, ?, NULL, ?)",
                         [(off, off, b"p1-%d" % off) for off in (0, 1, 2, 10, 11)])
        conn.execute("INSERT INTO group_offsets VALUES ('g', 't', 0, 5)")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    bus = SqliteBus(f"sqlite:///{path}", str(path), partitions=2)
    assert bus._conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_bus.SCHEMA_VERSION
    assert bus._conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'messages%'").fetchall() == []
    producer = bus.producer()
    producer.publish("t", b"new", key=None)  # round robin: partition 0
    producer.publish("t", b"new", key=None)  # partition 1
    producer.close()
    resumed = bus.consumer(["t"], "g")  # committed 5 on partition 0, nothing on 1
    got = poll_until(resumed, len(items) - 5 + 1 + 6, max_records=3)
    resumed.close()
    by_partition: dict[int, list[tuple[int, bytes | None, bytes, int]]] = {0: [], 1: []}
    for m in got:
        by_partition[m.partition].append((m.offset, m.key, m.value, m.timestamp_ns))
    assert by_partition[0] == [(i, key, value, ts or 0) for i, (key, value, ts) in enumerate(items)][5:] + [
        (len(items), None, b"new", by_partition[0][-1][3])]
    assert by_partition[1] == [(off, None, b"p1-%d" % off, off) for off in (0, 1, 2, 10, 11)] + [
        (12, None, b"new", by_partition[1][-1][3])]
    seeker = bus.consumer(["t"], "seek")
    assert seeker._offset_for_time(("t", 1), 3) == 10  # the gap: the next message at or after T
    seeker.close()
    bus.close()


def test_a_damaged_batch_is_a_clear_error_after_every_good_message(tmp_path: Path) -> None:
    """Not a silent stall, and not the loss of good messages read in the same poll, from
    the damaged batch or from another partition."""
    bus = SqliteBus(f"sqlite:///{tmp_path}/b.db", str(tmp_path / "b.db"), partitions=2)
    producer = bus.producer()
    producer.publish_batch("t", [(None, b"%d" % i, i) for i in range(6)])  # round robin: 3 each
    producer.flush()
    bus._conn.execute("UPDATE batches SET count = 10 WHERE part = 0")  # claims more than it packs
    consumer = bus.consumer(["t"], "g")
    got: list[Message] = []
    errors = []
    for i in range(6):  # polls alternate which partition they read first
        if i == 2:
            producer.publish_batch("t", [(None, b"6", 6), (None, b"7", 7)])  # 6 on partition 0, 7 on 1
            producer.flush()
        try:
            got.extend(consumer.poll(max_records=10, timeout_seconds=0.2))
        except BusError as exc:
            errors.append(str(exc))
    assert errors and all("the batch at offset 0 of partition 0 is damaged" in e for e in errors)
    assert [m.value for m in got if m.partition == 0] == [b"0", b"2", b"4"]
    assert [m.value for m in got if m.partition == 1] == [b"1", b"3", b"5", b"7"]
    producer.close()
    consumer.close()
    bus.close()


def test_processes_opening_a_new_file_at_once_all_get_it(tmp_path: Path) -> None:
    """Stages start together (`shadowreplay run`, `--workers N`) and each opens the bus:
    the ones that lose SQLite's race to turn a new file to WAL were told "database is
    locked" (about 1 open in 90 here). Threads stand in for processes: each has its own
    connection, so SQLite sees the same race."""
    errors: list[str] = []
    for i in range(100):
        path = tmp_path / f"b{i}.db"
        barrier = threading.Barrier(4)

        def open_it(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                SqliteBus(f"sqlite:///{path}", str(path)).close()
            except BusError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
