"""Noise cancellation: the aggregate field rule at its exact boundaries, and the table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comparer.diff import FieldDiff, Verdict
from comparer.noise import OTHER_FIELDS, FieldCounts, FieldStat, NoiseTable, NoiseThresholds, is_real, verdict_paths

T = NoiseThresholds()  # 20% relative, 0.03% absolute


def test_defaults() -> None:
    assert (T.relative, T.absolute) == (0.20, 0.0003)


@pytest.mark.parametrize(
    "raw, noise, requests, real",
    [
        # raw must exceed noise
        (10, 10, 100, False),
        (9, 10, 100, False),
        (0, 0, 100, False),
        # relative |raw-noise|/(raw+noise) must be strictly above 20%
        (3, 2, 100, False),  # 1/5 = 0.2 exactly
        (6, 4, 100, False),  # 2/10 = 0.2 exactly
        (7, 4, 100, True),  # 3/11 > 0.2
        (13, 9, 100, False),  # 4/22 < 0.2
        (1, 0, 100, True),  # 1/1
        # absolute |raw-noise|/requests must be strictly above 0.03%
        (3, 0, 10000, False),  # 3/10000 = 0.0003 exactly
        (3, 0, 9999, True),
        (4, 0, 10000, True),
        (30, 0, 100000, False),
        (31, 0, 100000, True),
        # no requests: never real
        (1, 0, 0, False),
    ],
)
def test_is_real_boundaries(raw: int, noise: int, requests: int, real: bool) -> None:
    assert is_real(raw, noise, requests, T) is real


def test_thresholds_are_configurable() -> None:
    assert is_real(3, 2, 100, NoiseThresholds(relative=0.19, absolute=0.0))
    assert not is_real(3, 2, 100, NoiseThresholds(relative=0.2, absolute=0.0))
    assert not is_real(2, 0, 100, NoiseThresholds(relative=0.0, absolute=0.02))
    assert is_real(3, 0, 100, NoiseThresholds(relative=0.0, absolute=0.02))


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**7))
@settings(max_examples=300, deadline=None)
def test_real_implies_raw_above_noise_and_both_thresholds(raw: int, noise: int, requests: int) -> None:
    if is_real(raw, noise, requests, T):
        assert raw > noise
        assert (raw - noise) * 5 > raw + noise  # > 20%, in integers
        assert (raw - noise) * 10000 > 3 * requests  # > 0.03%, in integers


def v(diffs: list[str] = [], noise: list[str] = [], secondary: list[str] = []) -> Verdict:  # noqa: B006
    def fds(paths: list[str]) -> tuple[FieldDiff, ...]:
        return tuple(FieldDiff(p, "value", 1, 2) for p in paths)

    return Verdict("GET /x", "baseline", fds(diffs), None, fds(noise), fds(secondary))


def test_verdict_paths() -> None:
    raw, noise = verdict_paths(v(["$.a"], ["$.ts"], ["$.ts", "$.only_secondary"]))
    assert raw == {"$.a", "$.ts"}
    assert noise == {"$.ts", "$.only_secondary"}


def test_table_classifies_fields_by_the_aggregate_rule() -> None:
    table = NoiseTable(NoiseThresholds(relative=0.2, absolute=0.01))
    for i in range(100):
        if i < 30:  # the price changed in 30 requests; never noisy
            table.add("GET /x", v(["$.price"]))
        elif i < 60:  # a timestamp differs everywhere, and between baseline and secondary too
            table.add("GET /x", v([], ["$.ts"], ["$.ts"]))
        else:  # $.rank differs in candidate 12 times, and in baseline/secondary 10 other times
            if i < 72:
                table.add("GET /x", v(["$.rank"]))
            elif i < 82:
                table.add("GET /x", v([], [], ["$.rank"]))
            else:
                table.add("GET /x", v())
    stats = {s.path: s for s in table.field_stats("GET /x")}
    assert stats["$.price"] == FieldStat("$.price", 30, 0, True)
    assert stats["$.ts"] == FieldStat("$.ts", 30, 30, False)
    # 12 raw vs 10 noise: 2/22 < 20% — shown as noise although 12 requests diverged on it.
    assert stats["$.rank"] == FieldStat("$.rank", 12, 10, False)
    assert [s.path for s in table.field_stats("GET /x")][0] == "$.price"
    assert table.real_fields("GET /x") == ["$.price"]
    assert table.field_stats("GET /nope") == []


def test_fields_are_bounded() -> None:
    counts = FieldCounts(max_fields=3)
    for i in range(10):
        counts.add({f"$.f{i}"}, set())
    assert set(counts.raw) == {"$.f0", "$.f1", "$.f2", OTHER_FIELDS}
    assert counts.raw[OTHER_FIELDS] == 7 and counts.requests == 10
