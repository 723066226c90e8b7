"""The group's gap cuts (replayer/gaps.py): computed from every partition's timestamps,
so processes that own different partitions cut the same gaps by the same amounts."""

from __future__ import annotations

import random

from shadowreplay.replayer.gaps import Timeline
from shadowreplay.replayer.schedule import Anchor

S = 10**9
T0 = 1_700_000_000 * S
A, B = ("t", 0), ("t", 1)


def cuts(tl: Timeline) -> list[tuple[int, int]]:
    """(log time of the first record after a cut gap, total wall ns cut up to it): what
    ``Timeline.shift`` answers from."""
    return list(zip(tl._cut_at, tl._shift_after, strict=True))


def _timeline(max_gap: float = 2.0, lateness: float = 5.0, speed: float = 1.0, until: int | None = None) -> Timeline:
    return Timeline(Anchor(T0, 0, speed), int(max_gap * S), int(lateness * S), until)


def test_a_gap_in_one_partition_is_not_cut_when_another_fills_it() -> None:
    tl = _timeline()
    for ts in (0, 1, 11, 12):  # partition A alone has a 10 s gap ...
        tl.add(A, T0 + ts * S)
    for ts in (3, 5, 7, 9):  # ... that B fills: the group never idles more than 2 s
        tl.add(B, T0 + ts * S)
    tl.settle([A, B], caught_up=[A, B])
    assert cuts(tl) == []
    assert tl.shift(T0 + 12 * S) == 0


def test_a_gap_of_the_whole_log_is_cut_to_the_cap_and_shifts_what_follows() -> None:
    tl = _timeline()
    for ts in (0, 1, 12):
        tl.add(A, T0 + ts * S)
    tl.add(B, T0 + 13 * S)
    tl.settle([A, B], caught_up=[A, B])
    assert cuts(tl) == [(T0 + 12 * S, 9 * S)]  # 11 s of silence cut to 2 s
    assert tl.shift(T0 + 1 * S) == 0
    assert tl.shift(T0 + 12 * S) == 9 * S
    assert tl.shift(T0 + 13 * S) == 9 * S


def test_at_speed_the_cap_is_in_replay_time() -> None:
    tl = _timeline(max_gap=2.0, speed=4.0)
    tl.add(A, T0)
    tl.add(A, T0 + 40 * S)  # 40 s of log = 10 s of replay, cut to 2 s
    tl.settle([A], caught_up=[A])
    assert cuts(tl) == [(T0 + 40 * S, 8 * S)]


def test_the_start_of_the_schedule_counts_as_a_point() -> None:
    tl = _timeline()
    tl.add(A, T0 + 30 * S)
    tl.settle([A], caught_up=[A])
    assert tl.shift(T0 + 30 * S) == 28 * S


def test_nothing_is_decided_before_every_partition_is_read_past_the_lateness() -> None:
    tl = _timeline(lateness=5.0)  # buckets of 2 s
    tl.add(A, T0 + 20 * S)
    tl.settle([A, B], caught_up=[])
    assert tl.shift(T0 + 20 * S) is None  # B may still hold anything
    tl.add(B, T0 + 10 * S)
    tl.settle([A, B], caught_up=[])
    assert tl.shift(T0 + 3 * S) == 0  # settled up to B's 10 s minus 5 s of lateness (to the bucket)
    assert tl.shift(T0 + 6 * S) is None
    tl.add(B, T0 + 6 * S)  # out of order, within the lateness: still counted
    tl.add(B, T0 + 40 * S)
    tl.add(A, T0 + 40 * S)
    tl.settle([A, B], caught_up=[])
    assert cuts(tl) == [(T0 + 6 * S, 4 * S), (T0 + 10 * S, 6 * S), (T0 + 20 * S, 14 * S)]
    assert tl.shift(T0 + 40 * S) is None  # 40 s itself is not settled yet


def test_records_past_the_window_are_not_points() -> None:
    tl = _timeline(until=T0 + 10 * S)
    tl.add(A, T0)
    tl.add(A, T0 + 30 * S)
    tl.settle([A], caught_up=[A])
    assert cuts(tl) == []


def test_the_cuts_do_not_depend_on_which_process_reads_what_first() -> None:
    """Two processes read the same log in different orders (partitions interleaved
    differently, records out of order within the lateness): the same cuts."""
    rng = random.Random(7)
    log: dict[tuple[str, int], list[int]] = {A: [], B: []}
    t = 0.0
    for _ in range(400):
        t += rng.choice((0.1, 0.3, 1.5, 4.0, 9.0))
        log[rng.choice((A, B))].append(T0 + int(t * S))
    for tp in log:  # disorder within each partition, bounded by 3 s
        log[tp].sort(key=lambda ts: ts + rng.uniform(-1.5, 1.5) * S)
    results = []
    for seed in (1, 2):
        order = random.Random(seed)
        tl = _timeline(max_gap=2.0, lateness=3.0)
        cursors = {tp: 0 for tp in log}
        while any(cursors[tp] < len(log[tp]) for tp in log):
            tp = order.choice([tp for tp in log if cursors[tp] < len(log[tp])])
            step = order.randint(1, 20)
            for ts in log[tp][cursors[tp]:cursors[tp] + step]:
                tl.add(tp, ts)
            cursors[tp] = min(len(log[tp]), cursors[tp] + step)
            tl.settle(list(log), caught_up=[p for p in log if cursors[p] >= len(log[p])])
        results.append(cuts(tl))
    assert results[0] == results[1] and results[0]
    # and every cut is a real gap of the merged log
    merged = sorted(ts for tss in log.values() for ts in tss)
    starts = {b for a, b in zip(merged, merged[1:], strict=False) if b - a > 2 * S}
    assert {at for at, _ in results[0]} <= starts | {merged[0]}
