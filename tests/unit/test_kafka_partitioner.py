"""The Kafka producer's key partitioner agrees with kafka-python's (and Java's) default."""

from __future__ import annotations

import pytest
from kafka.partitioner import DefaultPartitioner

from shadowreplay.contract.bus import kafka as kafka_bus
from shadowreplay.contract.bus.kafka import _KeyPartitioner


class Cluster:
    """What a partitioner reads from kafka-python's ClusterMetadata."""

    def __init__(self, partitions: int) -> None:
        self.partitions = set(range(partitions))
        self.asked = 0

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        self.asked += 1
        return set(self.partitions) if topic == "t" else None

    def topics(self) -> set[str]:
        return {"t"}

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions_for_topic(topic)


def test_same_partition_as_the_default_and_memo_is_used() -> None:
    cluster, reference, ours, default = Cluster(6), Cluster(6), _KeyPartitioner(), DefaultPartitioner()
    keys = [f"10.0.{i % 7}.{i}".encode() for i in range(500)] * 3
    for key in keys:
        assert ours.partition("t", key, key, None, b"v", cluster) == default.partition("t", key, key, None, b"v", reference)
    assert reference.asked >= len(keys)  # the default asks the metadata for every record
    assert cluster.asked <= 5  # ours about once a second


def test_partition_change_is_noticed_after_the_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(kafka_bus.time, "monotonic", lambda: now[0])
    cluster, ours, default = Cluster(4), _KeyPartitioner(), DefaultPartitioner()
    keys = [f"k{i}".encode() for i in range(200)]
    before = [ours.partition("t", k, k, None, b"v", cluster) for k in keys]
    cluster.partitions = set(range(12))
    assert [ours.partition("t", k, k, None, b"v", cluster) for k in keys] == before  # not yet rechecked
    now[0] += _KeyPartitioner.RECHECK_SECONDS
    after = [ours.partition("t", k, k, None, b"v", cluster) for k in keys]
    assert after == [default.partition("t", k, k, None, b"v", cluster) for k in keys]
    assert after != before


def test_no_key_or_no_metadata_falls_back_to_the_default() -> None:
    cluster, ours = Cluster(4), _KeyPartitioner()
    assert ours.partition("t", None, None, None, b"v", cluster) in cluster.partitions
    with pytest.raises(ValueError, match="not found"):  # as the default does
        ours.partition("unknown", b"k", b"k", None, b"v", cluster)
