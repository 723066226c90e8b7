"""Consumer-group lag: records from offsets, seconds from sampled end offsets."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shadowreplay.contract.bus import PartitionLag
from shadowreplay.contract.errors import BusError
from shadowreplay.lag import LagMonitor, PartitionHistory

NAMES = ("shadow_replay_consumer_lag_records", "shadow_replay_consumer_lag_seconds")


def test_arrival_is_interpolated_between_the_samples_around_it() -> None:
    h = PartitionHistory()
    h.note(0, 100.0)
    h.note(10, 110.0)  # offsets 0..9 arrived in (100, 110]
    h.note(10, 120.0)  # unchanged: not kept
    h.note(30, 130.0)  # offsets 10..29 arrived in (110, 130]
    assert h.arrived(0) == pytest.approx(101.0)
    assert h.arrived(9) == pytest.approx(110.0)
    assert h.arrived(19) == pytest.approx(120.0)
    assert h.arrived(29) == pytest.approx(130.0)


def test_a_backlog_older_than_the_first_sample_is_at_least_that_old() -> None:
    h = PartitionHistory()
    h.note(500, 100.0)
    h.note(600, 110.0)
    assert h.arrived(0) == 100.0 and h.arrived(499) == 100.0
    assert h.arrived(550) == pytest.approx(105.1)


def test_history_is_bounded_and_forgets_what_is_committed() -> None:
    h = PartitionHistory(max_samples=4)
    for i in range(10):
        h.note(i * 10, float(i))
    assert len(h._samples) == 4  # the last four: ends 60..90
    assert h.arrived(5) == 6.0, "older than the oldest sample kept: at least that old"
    h.arrived(85)
    assert [end for end, _ in h._samples] == [80, 90], "samples no later question needs are dropped"


class FakeConsumer:
    def __init__(self) -> None:
        self.answers: list[list[PartitionLag] | BusError] = []

    async def lag(self) -> list[PartitionLag]:
        answer = self.answers.pop(0)
        if isinstance(answer, BusError):
            raise answer
        return answer


async def test_monitor_sums_records_takes_the_oldest_and_exports_them_with_the_group() -> None:
    now = [0.0]
    consumer = FakeConsumer()
    registry = CollectorRegistry()
    monitor = LagMonitor(consumer, "g1", NAMES, registry, clock=lambda: now[0])  # type: ignore[arg-type]
    assert b"shadow_replay_consumer_lag" not in generate_latest(registry), "nothing before the first sample"

    consumer.answers.append([PartitionLag("t", 0, 0, 0), PartitionLag("t", 1, 0, 0)])
    assert await monitor.sample()
    now[0] = 10.0
    consumer.answers.append([PartitionLag("t", 0, 0, 100), PartitionLag("t", 1, 5, 5)])
    assert await monitor.sample()
    assert monitor.records == 100 and monitor.seconds == pytest.approx(10.0 - 0.1)
    text = generate_latest(registry).decode()
    assert 'shadow_replay_consumer_lag_records{group="g1"} 100.0' in text
    assert 'shadow_replay_consumer_lag_seconds{group="g1"} 9.9' in text

    now[0] = 20.0  # partition 1 went to another member; partition 0 half done
    consumer.answers.append([PartitionLag("t", 0, 50, 100)])
    assert await monitor.sample()
    assert monitor.records == 50 and monitor.seconds == pytest.approx(20.0 - 5.1)
    assert set(monitor._history) == {("t", 0)}

    consumer.answers.append(BusError("down", retriable=True))  # the last figures stay
    assert not await monitor.sample()
    assert monitor.records == 50

    now[0] = 30.0
    consumer.answers.append([PartitionLag("t", 0, 100, 100)])
    assert await monitor.sample()
    assert (monitor.records, monitor.seconds) == (0, 0.0)
