"""Latency judged per endpoint: bounded sketches of each target's latencies over the run,
and a test that says how sure it is. Pure: no I/O, no clock.

:class:`LogSketch` keeps counts in log-scale bins 2 % wide (any latency is known to
within ±1 %), from 1 µs up; a sketch never holds more than about a thousand bins,
whatever the number of requests, and two sketches merge by adding counts (sessions,
processes).

:func:`judge_latency` compares the candidate's and the baseline's distributions at the
median and the 95th percentile. Each quantile gets a distribution-free confidence
interval from order statistics (the ranks ``nq ± z·sqrt(nq(1−q))``, read off the
sketch at the outer bin edges). An endpoint is a **latency regression** when, at some
quantile, the candidate's lower bound is above the baseline's upper bound times
``1 + share`` and above it by more than ``min_ms`` milliseconds: slower by more than
both thresholds even in the least favourable case. Too few requests for an interval
(about 20 for the median, 150 for p95) is no regression.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from shadowreplay.comparer.noise import z_for

GAMMA = 1.02
_LOG_GAMMA = math.log(GAMMA)
MIN_SECONDS = 1e-6
_MIN_INDEX = math.ceil(math.log(MIN_SECONDS) / _LOG_GAMMA)
QUANTILES = (0.5, 0.95)


class LogSketch:
    """Counts of latencies (seconds) in bins ``(GAMMA**(i-1), GAMMA**i]``."""

    __slots__ = ("bins", "count")

    def __init__(self, bins: dict[int, int] | None = None) -> None:
        self.bins: dict[int, int] = dict(bins) if bins else {}
        self.count = sum(self.bins.values())

    @staticmethod
    def index(seconds: float) -> int:
        if seconds <= MIN_SECONDS:
            return _MIN_INDEX
        return max(_MIN_INDEX, math.ceil(math.log(seconds) / _LOG_GAMMA))

    def add(self, seconds: float) -> int:
        """Count one latency; returns its bin."""
        i = self.index(seconds)
        self.bins[i] = self.bins.get(i, 0) + 1
        self.count += 1
        return i

    def merge(self, bins: Iterable[tuple[int, int]]) -> None:
        for i, n in bins:
            self.bins[i] = self.bins.get(i, 0) + n
            self.count += n

    def _walk(self) -> Iterator[tuple[int, int]]:
        """(bin, cumulative count) in order."""
        seen = 0
        for i in sorted(self.bins):
            seen += self.bins[i]
            yield i, seen

    def at_rank(self, rank: int, edge: str = "mid") -> float:
        """The value of the ``rank``-th smallest latency (1-based): its bin's lower edge,
        upper edge or geometric middle."""
        for i, seen in self._walk():
            if seen >= rank:
                return bin_value(i, edge)
        raise IndexError(rank)

    def quantile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        return self.at_rank(max(1, math.ceil(q * self.count)))

    def interval(self, q: float, z: float) -> tuple[float, float] | None:
        """A confidence interval for the ``q`` quantile, or None with too few values."""
        n = self.count
        if n == 0:
            return None
        spread = z * math.sqrt(n * q * (1 - q))
        lo_rank, hi_rank = math.floor(n * q - spread), math.ceil(n * q + spread) + 1
        if lo_rank < 1 or hi_rank > n:
            return None
        return self.at_rank(lo_rank, "lo"), self.at_rank(hi_rank, "hi")


def bin_value(i: int, edge: str) -> float:
    if edge == "lo":
        return GAMMA ** (i - 1)
    if edge == "hi":
        return GAMMA**i
    return GAMMA ** (i - 0.5)


@dataclass(frozen=True)
class LatencyRules:
    """A regression: slower by more than ``share`` (0.2 = 20 %) and ``min_ms``, at ``confidence``."""

    share: float = 0.20
    min_ms: float = 10.0
    confidence: float = 0.99


@dataclass(frozen=True)
class LatencyVerdict:
    regression: bool = False
    baseline_samples: int = 0
    candidate_samples: int = 0
    baseline_p50_ms: float | None = None
    candidate_p50_ms: float | None = None
    baseline_p95_ms: float | None = None
    candidate_p95_ms: float | None = None
    quantile: float | None = None  # the quantile that showed the regression
    slower_ms: float | None = None  # at that quantile: the least the candidate is slower by

    def to_json(self) -> dict[str, Any]:
        return {
            "regression": self.regression,
            "baseline_p50_ms": self.baseline_p50_ms,
            "candidate_p50_ms": self.candidate_p50_ms,
            "baseline_p95_ms": self.baseline_p95_ms,
            "candidate_p95_ms": self.candidate_p95_ms,
            "baseline_samples": self.baseline_samples,
            "candidate_samples": self.candidate_samples,
            "quantile": self.quantile,
            "slower_ms": self.slower_ms,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def judge_latency(baseline: LogSketch | None, candidate: LogSketch | None, rules: LatencyRules) -> LatencyVerdict:
    """The endpoint's latency verdict (see the module docstring)."""
    base = baseline if baseline is not None else LogSketch()
    cand = candidate if candidate is not None else LogSketch()
    z = z_for(rules.confidence)
    found: tuple[float, float] | None = None
    for q in QUANTILES:
        b, c = base.interval(q, z), cand.interval(q, z)
        if b is None or c is None:
            continue
        slower = c[0] - b[1]
        if c[0] > b[1] * (1 + rules.share) and slower * 1000.0 > rules.min_ms:
            found = (q, slower)
            break
    return LatencyVerdict(
        regression=found is not None,
        baseline_samples=base.count,
        candidate_samples=cand.count,
        baseline_p50_ms=_ms(base.quantile(0.5)),
        candidate_p50_ms=_ms(cand.quantile(0.5)),
        baseline_p95_ms=_ms(base.quantile(0.95)),
        candidate_p95_ms=_ms(cand.quantile(0.95)),
        quantile=found[0] if found else None,
        slower_ms=_ms(found[1]) if found else None,
    )
