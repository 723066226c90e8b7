"""One behavioural suite for the bus, run on both backends (SQLite file, Tansu broker).

Timestamps: both backends return our own messages' nanoseconds exactly (Kafka carries
them in a header); a record written to Kafka by a foreign producer is exact to the ms.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer, TopicPartition

from shadowreplay.contract.bus import Bus, Consumer, Message, open_bus, read_to_end
from waiting import read_group_to_end, read_to_end as read_group_member
from shadowreplay.contract.errors import BusError

Unique = Callable[[str], str]
BASE_NS = 1_700_000_000_000_000_000
MS = 1_000_000


@pytest.fixture
def bus(bus_url: str) -> Iterator[Bus]:
    b = open_bus(bus_url, partitions=4)
    yield b
    b.close()


def drain(members: Sequence[Consumer], want: int, seconds: float = 30.0) -> list[list[Message]]:
    """What each member of one group read, polled in turn, until ``want`` in all and every
    partition they own is read to its end: call it once the writers are done, and anything
    beyond ``want`` (a repeat) is in the result."""
    return read_group_to_end(members, want=want, timeout_seconds=seconds)


def wait_assigned(consumers: Sequence[Consumer], partitions: int, seconds: float = 20.0) -> None:
    """Poll (an empty topic) until the members' assignments cover every partition once."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        owned = [p for c in consumers for p in c.assignment()]
        if len(owned) == partitions == len(set(owned)) and all(c.assignment() for c in consumers):
            return
        for c in consumers:
            assert c.poll(timeout_seconds=0.1) == []
    pytest.fail(f"assignment never settled: {[c.assignment() for c in consumers]}")


def position(consumer: Consumer, topic: str, partition: int) -> int:
    """The backend's own read position (white-box: to check where a seek landed)."""
    kafka_consumer = getattr(consumer, "_consumer", None)
    if kafka_consumer is not None:
        return int(kafka_consumer.position(TopicPartition(topic, partition)))
    return int(consumer._positions[(topic, partition)])  # type: ignore[attr-defined]


def publish(bus: Bus, topic: str, items: Sequence[tuple[bytes | None, bytes, int | None]]) -> None:
    p = bus.producer()
    try:
        for key, value, ts in items:
            p.publish(topic, value, key=key, timestamp_ns=ts)
        p.flush(10)
    finally:
        p.close()


def test_everything_published_is_consumed_once_in_order(bus: Bus, unique: Unique) -> None:
    topic = unique("t")
    items = [(b"k%d" % (i % 13), b"v%d" % i, BASE_NS + i) for i in range(300)]
    publish(bus, topic, items[:100])
    publish(bus, topic, items[100:])
    c = bus.consumer([topic], unique("g"))
    try:
        (got,) = drain([c], len(items))
    finally:
        c.close()
    assert sorted(m.value for m in got) == sorted(v for _, v, _ in items)
    by_partition: dict[int, list[int]] = {}
    for m in got:
        assert m.topic == topic
        by_partition.setdefault(m.partition, []).append(m.offset)
    assert len(by_partition) > 1
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))  # dense, from 0, in order
    for k in range(13):  # one key, one partition: publish order is kept
        key = b"k%d" % k
        assert [m.value for m in got if m.key == key] == [v for kk, v, _ in items if kk == key]


def test_keys_map_to_stable_partitions(bus: Bus, unique: Unique) -> None:
    topic = unique("t")
    keys = [b"client-%d" % i for i in range(40)]
    publish(bus, topic, [(k, b"first", None) for k in keys])
    publish(bus, topic, [(k, b"second", None) for k in reversed(keys)])
    c = bus.consumer([topic], unique("g"))
    try:
        (got,) = drain([c], 80)
    finally:
        c.close()
    assert len(got) == 80
    partition_of: dict[bytes | None, set[int]] = {}
    for m in got:
        partition_of.setdefault(m.key, set()).add(m.partition)
    assert all(len(parts) == 1 for parts in partition_of.values())
    assert len(set().union(*partition_of.values())) >= 3  # 40 keys spread over 4 partitions


def test_a_new_member_resumes_after_the_committed_offset(bus: Bus, unique: Unique) -> None:
    topic, group = unique("t"), unique("g")
    bus.ensure_topic(topic, 1)
    publish(bus, topic, [(None, b"%d" % i, None) for i in range(30)])
    first = bus.consumer([topic], group)
    fresh = bus.consumer([topic], unique("g"))  # another group, nothing committed
    try:
        got, from_start = read_group_member(first, want=30), read_group_member(fresh, want=30)
        assert [m.offset for m in got] == list(range(30))
        assert [m.offset for m in from_start] == list(range(30))
        first.commit(got[:10])  # offsets 10.. were read but not committed
    finally:
        first.close()
        fresh.close()
    second = bus.consumer([topic], group)
    try:
        (again,) = drain([second], 20)
    finally:
        second.close()
    assert [m.offset for m in again] == list(range(10, 30))
    assert [m.value for m in again] == [b"%d" % i for i in range(10, 30)]


def test_lag_is_what_the_group_has_not_committed_on_the_partitions_a_member_owns(bus: Bus, unique: Unique) -> None:
    topic, group = unique("t"), unique("g")
    bus.ensure_topic(topic, 2)
    consumer = bus.consumer([topic], group)
    try:
        wait_assigned([consumer], 2)
        assert sorted((lag.partition, lag.records) for lag in consumer.lag()) == [(0, 0), (1, 0)]
        publish(bus, topic, [(b"a", b"%d" % i, None) for i in range(20)])  # one key: one partition
        (got,) = drain([consumer], 20)
        busy = got[0].partition
        before = {lag.partition: lag for lag in consumer.lag()}
        assert before[busy].committed == 0 and before[busy].end == 20 and before[busy].records == 20
        assert before[1 - busy].records == 0, "read is not done: only commits count"
        consumer.commit(got[:15])
        after = {lag.partition: lag for lag in consumer.lag()}
        assert (after[busy].committed, after[busy].end, after[busy].records) == (15, 20, 5)
        consumer.commit(got)
        assert sum(lag.records for lag in consumer.lag()) == 0
    finally:
        consumer.close()
    assert consumer.lag() == [], "a closed member owns nothing"


def test_two_members_of_a_group_split_the_partitions(bus: Bus, unique: Unique) -> None:
    topic, group = unique("t"), unique("g")
    bus.ensure_topic(topic, 4)
    a, b = bus.consumer([topic], group), bus.consumer([topic], group)
    try:
        wait_assigned([a, b], 4)
        assert set(a.assignment()).isdisjoint(b.assignment())
        publish(bus, topic, [(b"k%d" % i, b"%d" % i, None) for i in range(400)])
        got_a, got_b = drain([a, b], 400)
        a.commit(got_a)
        b.commit(got_b)
    finally:
        a.close()
        b.close()
    seen_a = {(m.partition, m.offset) for m in got_a}
    seen_b = {(m.partition, m.offset) for m in got_b}
    assert got_a and got_b
    assert seen_a.isdisjoint(seen_b)
    assert len(got_a) + len(got_b) == len(seen_a | seen_b) == 400
    assert {m.value for m in got_a + got_b} == {b"%d" % i for i in range(400)}


def test_two_groups_each_see_everything(bus: Bus, unique: Unique) -> None:
    topic = unique("t")
    publish(bus, topic, [(None, b"%d" % i, None) for i in range(50)])
    one, two = bus.consumer([topic], unique("g")), bus.consumer([topic], unique("g"))
    try:
        got_one, got_two = read_group_member(one, want=50), read_group_member(two, want=50)
    finally:
        one.close()
        two.close()
    assert sorted(int(m.value) for m in got_one) == list(range(50))
    assert sorted(int(m.value) for m in got_two) == list(range(50))


def _timed_items(n: int) -> list[tuple[bytes | None, bytes, int | None]]:
    # Two messages per millisecond, half a millisecond apart, over 8 keys.
    return [(b"k%d" % (i % 8), b"%d" % i, BASE_NS + i * MS // 2) for i in range(n)]


def test_seek_to_time_before_the_first_poll(bus: Bus, unique: Unique) -> None:
    topic = unique("t")
    items = _timed_items(400)
    for start in range(0, 400, 40):  # several flushes: several batches per partition
        publish(bus, topic, items[start:start + 40])
    cut = BASE_NS + 301 * MS // 2 - 1  # between message 300 and 301, inside one ms
    c = bus.consumer([topic], unique("g"))
    try:
        c.seek_to_time(cut)
        (got,) = drain([c], 99)
    finally:
        c.close()
    assert sorted(int(m.value) for m in got) == list(range(301, 400))
    assert min(m.timestamp_ns for m in got) >= cut


def test_seek_to_time_rewinds_assigned_partitions(bus: Bus, unique: Unique) -> None:
    topic = unique("t")
    items = _timed_items(200)
    for start in range(0, 200, 25):
        publish(bus, topic, items[start:start + 25])
    c = bus.consumer([topic], unique("g"))
    try:
        (everything,) = drain([c], 200)
        assert len(everything) == 200 and c.assignment()
        c.commit(everything)
        cut = BASE_NS + 120 * MS // 2
        c.seek_to_time(cut)
        for topic_, partition in c.assignment():  # landed exactly, not merely filtered
            first = min((m.offset for m in everything
                         if m.partition == partition and m.timestamp_ns >= cut),
                        default=sum(1 for m in everything if m.partition == partition))
            assert position(c, topic_, partition) == first
        (again,) = drain([c], 80)
    finally:
        c.close()
    assert sorted(int(m.value) for m in again) == list(range(120, 200))


def test_a_reader_joins_no_group_and_starts_at_the_groups_offsets_or_a_time(bus: Bus, unique: Unique) -> None:
    topic, group = unique("t"), unique("g")
    bus.ensure_topic(topic, 4)
    publish(bus, topic, [(b"k%d" % (i % 8), b"v%03d" % i, BASE_NS + i * MS) for i in range(100)])
    member = bus.consumer([topic], group)
    try:
        [first] = drain([member], 100)
        # commit the first half of what each partition gave
        by_partition: dict[int, list[Message]] = {}
        for m in first:
            by_partition.setdefault(m.partition, []).append(m)
        done = [ms[len(ms) // 2 - 1] for ms in by_partition.values() if len(ms) >= 2]
        member.commit(done)
        left = {m.value for ms in by_partition.values() for m in ms[len(ms) // 2:]}

        def read(**kw: Any) -> list[Message]:
            reader = bus.reader([topic], **kw)
            try:
                return [m for batch in read_to_end(reader) for m in batch]
            finally:
                reader.close()

        assert sorted(m.value for m in read()) == sorted(m.value for m in first)  # from the beginning
        assert {m.value for m in read(group=group)} == left  # from the group's offsets
        late = read(from_ns=BASE_NS + 70 * MS)
        assert sorted(m.value for m in late) == [b"v%03d" % i for i in range(70, 100)]
        reader = bus.reader([topic], group=group)  # open while the member polls on
        try:
            assert member.poll(100, 0.5) == []
            assert len(member.assignment()) == 4  # a reader is no member: nothing was taken away
        finally:
            reader.close()
    finally:
        member.close()


def test_a_keep_alive_poll_takes_nothing(bus: Bus, unique: Unique) -> None:
    topic = unique("t")
    bus.ensure_topic(topic, 4)
    publish(bus, topic, [(b"k%d" % i, b"v%d" % i, BASE_NS + i) for i in range(40)])
    consumer = bus.consumer([topic], unique("g"))
    try:
        deadline = time.monotonic() + 20
        while len(consumer.assignment()) < 4:  # keep-alive polls alone get the member its partitions
            assert consumer.poll(0, 0.1) == [] and time.monotonic() < deadline
        assert consumer.joined()
        for _ in range(5):
            assert consumer.poll(0, 0.1) == []
        assert sorted(m.value for m in drain([consumer], 40)[0]) == sorted(b"v%d" % i for i in range(40))
    finally:
        consumer.close()


def test_topics_are_independent(bus: Bus, unique: Unique) -> None:
    t1, t2 = unique("t1"), unique("t2")
    publish(bus, t1, [(b"same", b"one-%d" % i, None) for i in range(10)])
    publish(bus, t2, [(b"same", b"two-%d" % i, None) for i in range(7)])
    only_t2 = bus.consumer([t2], unique("g"))
    both = bus.consumer([t1, t2], unique("g"))
    try:
        got2, got_both = read_group_member(only_t2, want=7), read_group_member(both, want=17)
    finally:
        only_t2.close()
        both.close()
    assert [m.value for m in got2] == [b"two-%d" % i for i in range(7)]
    assert [m.offset for m in got2] == list(range(7))  # offsets are per topic
    assert sorted((m.topic, m.value) for m in got_both) == sorted(
        [(t1, b"one-%d" % i) for i in range(10)] + [(t2, b"two-%d" % i) for i in range(7)]
    )


def test_nanosecond_timestamps_and_binary_values_survive(bus: Bus, unique: Unique) -> None:
    topic = unique("t")
    exact = 1_700_000_000_123_456_789
    before = time.time_ns()
    publish(bus, topic, [(None, b"\x00\xff" * 300, exact), (b"\x00k", b"", None)])
    after = time.time_ns()
    c = bus.consumer([topic], unique("g"))
    try:
        (got,) = drain([c], 2)
    finally:
        c.close()
    by_value = {m.value: m for m in got}
    assert by_value[b"\x00\xff" * 300].timestamp_ns == exact
    assert by_value[b""].key == b"\x00k"
    assert before <= by_value[b""].timestamp_ns <= after


@pytest.mark.integration
def test_kafka_records_from_foreign_producers_keep_milliseconds(kafka_url: str, kafka_broker: str,
                                                                unique: Unique) -> None:
    bus = open_bus(kafka_url)
    topic = unique("t")
    bus.ensure_topic(topic, 1)
    raw = KafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    raw.send(topic, b"foreign", timestamp_ms=1_700_000_000_123)
    raw.flush(10)
    raw.close()
    c = bus.consumer([topic], unique("g"))
    try:
        (got,) = drain([c], 1)
    finally:
        c.close()
        bus.close()
    assert [(m.value, m.timestamp_ns) for m in got] == [(b"foreign", 1_700_000_000_123_000_000)]


@pytest.mark.integration
def test_kafka_flush_to_an_unreachable_broker_raises(unused_port: int, unique: Unique) -> None:
    url = (f"kafka://127.0.0.1:{unused_port}"
           "?bootstrap_timeout_ms=1000&max_block_ms=1000&request_timeout_ms=1000")
    started = time.monotonic()
    bus = open_bus(url)
    with pytest.raises(BusError) as caught:
        p = bus.producer()
        p.publish(unique("t"), b"x")
        p.flush(2)
    assert caught.value.retriable
    assert time.monotonic() - started < 10


@pytest.mark.integration
def test_kafka_flush_after_the_broker_stopped_raises(start_broker: Callable[[], Any],
                                                     unique: Unique) -> None:
    broker = start_broker()
    bus = open_bus(f"kafka://{broker.bootstrap}"
                   "?request_timeout_ms=1000&max_block_ms=1000&delivery_timeout_ms=2000")
    topic = unique("t")
    p = bus.producer()
    try:
        p.publish(topic, b"before")
        p.flush(10)
        broker.kill()
        started = time.monotonic()
        with pytest.raises(BusError) as caught:
            p.publish(topic, b"after")
            p.flush(2)
        assert caught.value.retriable
        assert time.monotonic() - started < 10
    finally:
        p.close()
        bus.close()


PRODUCER_SCRIPT = textwrap.dedent("""
    import sys, time
    from shadowreplay.contract.bus import open_bus
    url, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    bus = open_bus(url)
    p = bus.producer()
    for i in range(n):
        p.publish(topic, b"%d" % i, key=b"k%d" % (i % 17))
        if i % 100 == 99:
            p.flush()
            time.sleep(0.005)
    p.close()
    bus.close()
""")


def test_sqlite_producer_in_another_process(tmp_path: Path, unique: Unique) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    bus = open_bus(url)
    topic, group = unique("t"), unique("g")
    bus.ensure_topic(topic, 4)
    a, b = bus.consumer([topic], group), bus.consumer([topic], group)
    n = 3000
    child = subprocess.Popen([sys.executable, "-c", PRODUCER_SCRIPT, url, topic, str(n)])
    try:
        got_a, got_b = drain([a, b], n, seconds=30)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        a.close()
        b.close()
        bus.close()
    assert got_a and got_b
    values = [int(m.value) for m in got_a + got_b]
    assert sorted(values) == list(range(n))
