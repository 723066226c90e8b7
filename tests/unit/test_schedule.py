from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowreplay.replayer.schedule import DEFAULT_LEAD_SECONDS, Anchor, Pacer
from shadowreplay.contract.errors import ConfigError

LOG_T0 = 1_700_000_000_123_456_789
WALL_T0 = 1_800_000_000_000_000_000


@pytest.mark.parametrize(
    ("speed", "delta_ns", "expected"),
    [
        (1.0, 0, 0),
        (1.0, 1_500_000, 1_500_000),
        (0.5, 1_500_000, 3_000_000),
        (0.5, 1, 2),
        (10.0, 1_500_000, 150_000),
        (10.0, 3_600 * 10**9, 360 * 10**9),
        (100.0, 1_000_000_000, 10_000_000),
        (100.0, 150, 2),  # 1.5 ns rounds half up
        (100.0, 149, 1),
        (10.0, -2_000_000, -200_000),  # a record older than the anchor is due before it
    ],
)
def test_due_is_anchor_plus_gap_over_speed(speed: float, delta_ns: int, expected: int) -> None:
    anchor = Anchor(log_t0_ns=LOG_T0, wall_t0_ns=WALL_T0, speed=speed)
    assert anchor.due_ns(LOG_T0 + delta_ns) == WALL_T0 + expected


def test_due_is_absolute_not_accumulated() -> None:
    # 1e6 gaps of 1 ns at speed 3 would accumulate 1e6 rounding errors if summed;
    # computed from the anchor, record N is exactly round(N / 3) after it.
    anchor = Anchor(log_t0_ns=LOG_T0, wall_t0_ns=WALL_T0, speed=3.0)
    n = 1_000_000
    assert anchor.due_ns(LOG_T0 + n) == WALL_T0 + round(n / 3)
    # thirty days of log at speed 7: still exact to the nanosecond
    month = 30 * 86_400 * 10**9 + 1
    assert anchor.due_ns(LOG_T0 + month) - WALL_T0 == round(Fraction(month) / 3)
    anchor7 = Anchor(log_t0_ns=LOG_T0, wall_t0_ns=WALL_T0, speed=7.0)
    exact = math.floor(Fraction(month, 7) + Fraction(1, 2))
    assert anchor7.due_ns(LOG_T0 + month) - WALL_T0 == exact
    # the due time of a record does not depend on which records came before it
    gaps = [anchor.due_ns(LOG_T0 + 10 * i) for i in range(1, 1000)]
    assert gaps[-1] == anchor.due_ns(LOG_T0 + 9990)


@given(
    delta=st.integers(min_value=-(10**15), max_value=10**17),
    speed=st.floats(min_value=0.001, max_value=10_000, allow_nan=False, allow_infinity=False),
)
def test_due_matches_exact_rational_arithmetic(delta: int, speed: float) -> None:
    anchor = Anchor(log_t0_ns=LOG_T0, wall_t0_ns=WALL_T0, speed=speed)
    exact = Fraction(delta) / Fraction(speed)
    assert anchor.due_ns(LOG_T0 + delta) == WALL_T0 + math.floor(exact + Fraction(1, 2))


@given(
    a=st.integers(min_value=0, max_value=10**15),
    b=st.integers(min_value=0, max_value=10**15),
    speed=st.sampled_from([0.5, 1.0, 2.5, 10.0, 100.0]),
)
def test_due_keeps_log_order(a: int, b: int, speed: float) -> None:
    anchor = Anchor(log_t0_ns=0, wall_t0_ns=WALL_T0, speed=speed)
    lo, hi = sorted((a, b))
    assert anchor.due_ns(lo) <= anchor.due_ns(hi)


def test_starting_now_puts_first_record_lead_seconds_ahead() -> None:
    anchor = Anchor.starting_now(LOG_T0, 10.0, now_ns=WALL_T0)
    assert anchor == Anchor(LOG_T0, WALL_T0 + int(DEFAULT_LEAD_SECONDS * 1e9), 10.0)
    assert anchor.due_ns(LOG_T0) == WALL_T0 + 50_000_000
    no_lead = Anchor.starting_now(LOG_T0, 1.0, lead_seconds=0.0, now_ns=WALL_T0)
    assert no_lead.due_ns(LOG_T0 + 7) == WALL_T0 + 7


def test_starting_now_uses_the_wall_clock() -> None:
    import time

    before = time.time_ns()
    anchor = Anchor.starting_now(LOG_T0, 1.0, lead_seconds=1.0)
    after = time.time_ns()
    assert before + 10**9 <= anchor.wall_t0_ns <= after + 10**9


@pytest.mark.parametrize("speed", [0.0, -1.0, float("nan")])
def test_speed_must_be_positive(speed: float) -> None:
    with pytest.raises(ConfigError, match="speed"):
        Anchor(log_t0_ns=0, wall_t0_ns=0, speed=speed)


def test_follow_switches_to_real_time_once_caught_up() -> None:
    # 10 minutes of backlog at 10x: the replay catches up 1 minute 6.7 s in, after which
    # records are due 1 s after they were logged.
    now = WALL_T0
    log_t0 = now - 600 * 10**9
    anchor = Anchor(log_t0, now, 10.0, follow_delay_ns=10**9)
    # The log time T where the two clocks meet: now + (T - log_t0) / 10 == T + 1 s.
    catch_up = int((10 * (now - 10**9) - log_t0) / 9)
    assert anchor.due_ns(log_t0 + 60 * 10**9) == now + 6 * 10**9  # still at 10x
    assert abs(anchor.due_ns(catch_up) - (catch_up + 10**9)) <= 1  # the two clocks meet
    live = now + 3600 * 10**9
    assert anchor.due_ns(live) == live + 10**9  # real time, 1 s behind
    # continuous and monotonic across the switch
    dues = [anchor.due_ns(catch_up + d) for d in range(-10**6, 10**6, 10**5)]
    assert dues == sorted(dues)
    # speed <= 1 never catches up: follow changes nothing
    slow = Anchor(log_t0, now, 1.0, follow_delay_ns=10**9)
    assert slow.due_ns(live) == now + (live - log_t0)


def test_anchor_wire_round_trip() -> None:
    a = Anchor(LOG_T0, WALL_T0, 2.5, follow_delay_ns=7)
    assert Anchor.from_wire(a.to_wire()) == a
    with pytest.raises(ConfigError):
        Anchor.from_wire({"log_t0": "x"})


def test_pacer_without_rate_or_gap_is_identity() -> None:
    p = Pacer()
    assert [p.take(b) for b in (5, 7, 100)] == [5, 7, 100]


def test_rate_paces_open_model_from_an_absolute_base() -> None:
    # 1000/s: every record 1 ms after the previous one, all due at once in the log.
    p = Pacer(rate=1000.0, rate_t0_ns=WALL_T0)
    dues = [p.take(WALL_T0) for _ in range(5)]
    assert dues == [WALL_T0 + i * 1_000_000 for i in range(5)]
    # 3/s: no drift from rounding however long it runs
    p3 = Pacer(rate=3.0, rate_t0_ns=0)
    last = [p3.take(0) for _ in range(3001)][-1]
    assert last == 10**12


def test_speed_is_a_ceiling_for_the_rate() -> None:
    p = Pacer(rate=1000.0, rate_t0_ns=0)
    assert p.take(0) == 0
    assert p.take(0) == 1_000_000  # the rate binds
    assert p.take(50_000_000) == 50_000_000  # the log is slower than the rate: it binds
    assert p.take(50_000_000) == 51_000_000  # ... and pacing restarts from there
    assert p.peek(0) == 52_000_000 and p.peek(0) == 52_000_000  # peek does not advance


def test_rate_without_ceiling_ignores_the_log_times() -> None:
    p = Pacer(rate=100.0, rate_t0_ns=0, ceiling=False)
    assert [p.take(b) for b in (0, 10**12, 5)] == [0, 10_000_000, 20_000_000]
    with pytest.raises(ConfigError):
        Pacer(ceiling=False)


