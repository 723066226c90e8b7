"""Is a difference on one field of one endpoint real, or noise? Pure: no I/O, no clock.

Diffy's idea, made to hold with few samples. Per endpoint and field the comparer counts

* ``raw`` — compared requests where the candidate differed from the reference there;
* ``twin`` — of the ``paired`` requests that also had a *twin* of the reference (the
  secondary, or the reference asked a second time: a probe), those where the reference
  and its twin differed there (or above it).

``raw / compared`` is how often the candidate differs, ``twin / paired`` how often the
current release differs from itself. The field is **real** when, with the configured
confidence, the first exceeds ``(1 + relative)`` times the second by more than
``absolute``: the lower bound of ``p_raw − (1 + relative)·p_twin`` — a MOVER interval
(Newcombe 1998; Zou & Donner 2008) built from Wilson score intervals of both rates —
is above ``absolute``. It is **noise** when the upper bound is at or below ``absolute``
(the candidate differs no more than the release differs from itself), and
**undecided** in between (too few requests yet to tell); undecided is not real.

Without any twin on an endpoint there is nothing to learn noise from: a difference is a
difference (real once its rate's lower bound is above ``absolute``). A field that
differed only in requests where the twin differed too (cancelled in each request), or
only on ``noise_paths``, is noise whatever the rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist

REAL = "real"
NOISE = "noise"
UNDECIDED = "undecided"


@lru_cache(maxsize=64)
def z_for(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (0.99 → 2.576)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class NoiseThresholds:
    """``relative``: the candidate must differ more than (1 + relative) × as often as the
    release differs from itself; ``absolute``: by more than this share of requests;
    ``confidence``: how sure (the two-sided level of the intervals)."""

    relative: float = 0.20
    absolute: float = 0.0003
    confidence: float = 0.99
    z: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "z", z_for(self.confidence))


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k <= 0 else max(0.0, centre - half)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return lo, hi


def difference_bounds(k1: int, n1: int, k2: int, n2: int, factor: float, z: float) -> tuple[float, float]:
    """MOVER bounds of ``p1 − factor·p2`` from the Wilson intervals of both rates."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - factor * p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (factor * (u2 - p2)) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (factor * (p2 - l2)) ** 2)
    return lo, hi


def classify(
    raw: int, compared: int, twin: int, paired: int, uncancelled: int, t: NoiseThresholds = NoiseThresholds()
) -> str:
    """REAL, NOISE or UNDECIDED for one field of one endpoint (see the module docstring)."""
    if raw <= 0 or compared <= 0 or uncancelled <= 0:
        return NOISE
    if paired <= 0:
        lo, _ = wilson(raw, compared, t.z)
        return REAL if lo > t.absolute else UNDECIDED
    lo, hi = difference_bounds(raw, compared, min(twin, paired), paired, 1 + t.relative, t.z)
    if lo > t.absolute:
        return REAL
    if hi <= t.absolute:
        return NOISE
    return UNDECIDED
