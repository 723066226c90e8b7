"""Noise cancellation, Diffy style: per endpoint and field, raw differences against noise.

Pure: no I/O, no clock. Two levels, decided as follows.

* **Per request** (``comparer.diff.Differ``): a candidate difference is *noise in that
  request* when the baseline and the secondary also differ at its path or above it, or
  when the path is listed in ``noise_paths``. A request *diverges* when at least one
  candidate difference is left that is not noise in that request. Metrics
  (``shadow_compare_diverged_total`` …) and the divergence store follow this rule.
* **Per endpoint and field** (this module): over all compared requests of an endpoint,
  ``raw`` counts requests where the candidate differed from the baseline on the field
  (cancelled or not) and ``noise`` counts requests where the field was noise (baseline
  and secondary differed on it, or a ``noise_paths`` rule cancelled it). The field is
  reported as a **real** divergence only when ``raw > noise`` and both
  ``|raw − noise| / (raw + noise) > relative`` and ``|raw − noise| / requests > absolute``
  (strictly greater). The endpoint/field report (page, ``diffs``, ``report``) uses this
  aggregate rule, so a field that diverged in a few requests but is noisy overall is
  shown as noise even though those requests counted as diverged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from comparer.diff import Verdict

#: Distinct field paths remembered per endpoint; further new paths are pooled here.
MAX_FIELDS_PER_ENDPOINT = 256
OTHER_FIELDS = "(other fields)"


@dataclass(frozen=True)
class NoiseThresholds:
    """``relative`` on |raw−noise|/(raw+noise), ``absolute`` on |raw−noise|/requests (fractions)."""

    relative: float = 0.20
    absolute: float = 0.0003


def is_real(raw: int, noise: int, requests: int, thresholds: NoiseThresholds = NoiseThresholds()) -> bool:
    """Whether a field with ``raw`` differences and ``noise`` noisy ones in ``requests`` is a real divergence."""
    if raw <= noise or requests <= 0:
        return False
    delta = raw - noise
    return delta / (raw + noise) > thresholds.relative and delta / requests > thresholds.absolute


@dataclass(frozen=True)
class FieldStat:
    """One field of one endpoint: requests with a candidate difference there (``raw``),
    requests where it was noise (``noise``), and the aggregate classification."""

    path: str
    raw: int
    noise: int
    real: bool


@dataclass
class FieldCounts:
    """Raw and noise counts for the fields of one endpoint."""

    requests: int = 0
    raw: dict[str, int] = field(default_factory=dict)
    noise: dict[str, int] = field(default_factory=dict)
    max_fields: int = MAX_FIELDS_PER_ENDPOINT

    def add(self, raw_paths: set[str], noise_paths: set[str]) -> None:
        """Count one compared request: the fields where the candidate differed, and those that were noise."""
        self.requests += 1
        for path in raw_paths:
            key = self._key(path)
            self.raw[key] = self.raw.get(key, 0) + 1
        for path in noise_paths:
            key = self._key(path)
            self.noise[key] = self.noise.get(key, 0) + 1

    def _key(self, path: str) -> str:
        if path in self.raw or path in self.noise:
            return path
        if len(self.raw.keys() | self.noise.keys()) >= self.max_fields:
            return OTHER_FIELDS
        return path

    def stats(self, thresholds: NoiseThresholds) -> list[FieldStat]:
        """Every field, real divergences first, then by raw count, then by path."""
        out = [
            FieldStat(p, self.raw.get(p, 0), self.noise.get(p, 0), is_real(self.raw.get(p, 0), self.noise.get(p, 0), self.requests, thresholds))
            for p in self.raw.keys() | self.noise.keys()
        ]
        out.sort(key=lambda s: (not s.real, -s.raw, -s.noise, s.path))
        return out


def verdict_paths(verdict: Verdict) -> tuple[set[str], set[str]]:
    """(raw, noise) field paths of one verdict, as counted by :class:`FieldCounts`."""
    raw = {d.path for d in verdict.diffs}
    cancelled = {d.path for d in verdict.noise}
    return raw | cancelled, cancelled | {d.path for d in verdict.secondary}


class NoiseTable:
    """Per-endpoint FieldCounts. Endpoint keys are expected to be bounded by the caller."""

    def __init__(self, thresholds: NoiseThresholds = NoiseThresholds(), max_fields: int = MAX_FIELDS_PER_ENDPOINT) -> None:
        self.thresholds = thresholds
        self.max_fields = max_fields
        self._endpoints: dict[str, FieldCounts] = {}

    def add(self, endpoint: str, verdict: Verdict) -> None:
        counts = self._endpoints.get(endpoint)
        if counts is None:
            counts = self._endpoints[endpoint] = FieldCounts(max_fields=self.max_fields)
        counts.add(*verdict_paths(verdict))

    def field_stats(self, endpoint: str) -> list[FieldStat]:
        counts = self._endpoints.get(endpoint)
        return counts.stats(self.thresholds) if counts is not None else []

    def real_fields(self, endpoint: str) -> list[str]:
        return [s.path for s in self.field_stats(endpoint) if s.real]
