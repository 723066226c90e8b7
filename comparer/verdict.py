"""The one verdict: per endpoint, which fields really diverge, how many requests did,
whether the candidate got slower, and what could not be compared.

Pure: no I/O, no clock. The comparer loop feeds every compared result into an
:class:`EndpointTally` (bounded counts, order-independent), the divergence store keeps
the tallies of every comparer session, and :func:`judge` turns a tally into an
:class:`EndpointJudgement`. The live metrics, the store's readers (page, ``diffs``,
``report``, ``gate``) all call :func:`judge`, so they agree.

Counted per endpoint:

* ``compared``, ``paired`` (compared with a twin of the reference: secondary or probe),
  ``differing`` (with any difference, noise or not);
* per field (a diff path with array indexes and JSON-RPC ids as ``[*]``: see
  :func:`shadowreplay.comparer.paths.field_key`): ``raw`` requests where the candidate differed
  there, ``cancelled`` those of them where the twin differed too (noise in that
  request), ``twin`` paired requests where the twin differed there and at no field
  above it (so the evidence for a field is the sum over it and its ancestors, each
  request counted once);
* *signatures*: for each set of (field, kind) on which a request differed after
  per-request cancellation, how many requests. An endpoint's ``diverged`` is the
  number of requests whose signature holds a field judged real. Since signatures and
  counts are sums, the final verdict does not depend on the order results arrive in,
  and when a field's classification changes every earlier request is re-judged;
* candidate and baseline latency sketches, and results not compared by target and reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shadowreplay.comparer.diff import FieldDiff, Verdict
from shadowreplay.comparer.latency import LatencyRules, LatencyVerdict, LogSketch, judge_latency
from shadowreplay.comparer.noise import NOISE, REAL, UNDECIDED, NoiseThresholds, classify
from shadowreplay.comparer.paths import field_key, is_within
from shadowreplay.contract.config import ComparerConfig
from shadowreplay.contract.record import ReplayResult

#: Distinct fields remembered per endpoint; further new fields are pooled here.
MAX_FIELDS_PER_ENDPOINT = 256
OTHER_FIELDS = "(other fields)"
#: Distinct signatures remembered per endpoint; requests with a further new one are
#: pooled into one overflow signature whose fields are the union of theirs (counted as
#: diverged when any of them is real: an upper bound, logged by the comparer).
MAX_SIGNATURES = 4096
#: Paths listed before the others wherever fields are listed.
FIRST_PATHS = ("status", "error")
LATENCY_TARGETS = ("baseline", "candidate")

Signature = frozenset[tuple[str, str]]
_EMPTY: Signature = frozenset()


@dataclass(frozen=True)
class VerdictRules:
    """Everything :func:`judge` needs: noise and latency thresholds."""

    noise: NoiseThresholds = NoiseThresholds()
    latency: LatencyRules = LatencyRules()

    def to_json(self) -> dict[str, Any]:
        n, lat = self.noise, self.latency
        return {
            "noise_relative": n.relative,
            "noise_absolute": n.absolute,
            "noise_confidence": n.confidence,
            "latency_share": lat.share,
            "latency_min_ms": lat.min_ms,
            "latency_confidence": lat.confidence,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> VerdictRules:
        d = cls()
        return cls(
            NoiseThresholds(
                float(obj.get("noise_relative", d.noise.relative)),
                float(obj.get("noise_absolute", d.noise.absolute)),
                float(obj.get("noise_confidence", d.noise.confidence)),
            ),
            LatencyRules(
                float(obj.get("latency_share", d.latency.share)),
                float(obj.get("latency_min_ms", d.latency.min_ms)),
                float(obj.get("latency_confidence", d.latency.confidence)),
            ),
        )


def verdict_rules(c: ComparerConfig) -> VerdictRules:
    """The verdict thresholds of a ``[comparer]`` config."""
    return VerdictRules(
        NoiseThresholds(c.noise_relative_threshold, c.noise_absolute_threshold, c.noise_confidence),
        LatencyRules(c.latency_regression_share, c.latency_regression_min_ms, c.latency_confidence),
    )


def field_order(path: str) -> int:
    """0 for a status or error difference (listed first everywhere), else 1."""
    return 0 if path in FIRST_PATHS else 1


def status_first(diffs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Diff dicts (``{"path": ...}``) with status and error first, the rest in order."""
    return sorted(diffs, key=lambda d: field_order(str(d.get("path"))))


@dataclass(slots=True)
class FieldTally:
    raw: int = 0
    twin: int = 0
    cancelled: int = 0
    kinds: set[str] = field(default_factory=set)


@dataclass
class EndpointTally:
    """The bounded, order-independent counts of one endpoint (see the module docstring).

    ``changed_*`` collect what moved since :meth:`take_changes`, for the store."""

    compared: int = 0
    paired: int = 0
    differing: int = 0
    fields: dict[str, FieldTally] = field(default_factory=dict)
    signatures: dict[Signature, int] = field(default_factory=dict)
    overflow: set[tuple[str, str]] = field(default_factory=set)
    overflow_count: int = 0
    latency: dict[str, LogSketch] = field(default_factory=dict)
    not_compared: dict[tuple[str, str], int] = field(default_factory=dict)
    changed_fields: set[str] = field(default_factory=set)
    changed_signatures: set[Signature] = field(default_factory=set)
    changed_bins: set[tuple[str, int]] = field(default_factory=set)
    changed_not_compared: set[tuple[str, str]] = field(default_factory=set)
    _states: dict[str, tuple[str, int]] = field(default_factory=dict)
    version: int = 0  # moves with every count added (callers cache judgements by it)

    # -- counting ------------------------------------------------------------------------

    def _field(self, key: str) -> tuple[str, FieldTally]:
        found = self.fields.get(key)
        if found is None:
            if len(self.fields) >= MAX_FIELDS_PER_ENDPOINT:
                key = OTHER_FIELDS
                found = self.fields.get(key)
            if found is None:
                found = self.fields[key] = FieldTally()
        self.changed_fields.add(key)
        return key, found

    def add(self, verdict: Verdict, result: ReplayResult | None = None) -> Signature:
        """Count one compared verdict; returns its signature (empty when nothing is left
        after per-request cancellation)."""
        self.version += 1
        self.compared += 1
        if verdict.twin is not None:
            self.paired += 1
            if verdict.secondary:
                self._add_twin(verdict.secondary)
        signature = _EMPTY
        diffs, noise = verdict.diffs, verdict.noise
        if diffs or noise:
            self.differing += 1
            seen: set[str] = set()
            if diffs:
                signature = frozenset([(self._add_raw(d, seen), d.kind) for d in diffs])
                self._add_signature(signature)
            cancelled: set[str] = set()
            for d in noise:
                key = self._add_raw(d, seen)
                if key not in cancelled:
                    cancelled.add(key)
                    self.fields[key].cancelled += 1
        if result is not None and verdict.reference == "baseline":
            self._add_latency(result)
        return signature

    def _add_raw(self, d: FieldDiff, seen: set[str]) -> str:
        key, tally = self._field(field_key(d.path))
        if key not in seen:
            seen.add(key)
            tally.raw += 1
        tally.kinds.add(d.kind)
        return key

    def known_key(self, key: str) -> str:
        """``key``, or OTHER_FIELDS when it was pooled."""
        return key if key in self.fields else OTHER_FIELDS

    def _add_twin(self, evidence: tuple[FieldDiff, ...]) -> None:
        keys = {field_key(d.path) for d in evidence}
        for key in keys:
            for other in keys:
                if other is not key and key.startswith(other) and is_within(key, other):
                    break  # counted at the field above it
            else:
                self._field(key)[1].twin += 1

    def _add_signature(self, signature: Signature) -> None:
        if signature in self.signatures or len(self.signatures) < MAX_SIGNATURES:
            self.signatures[signature] = self.signatures.get(signature, 0) + 1
            self.changed_signatures.add(signature)
        else:
            self.overflow |= signature
            self.overflow_count += 1

    def _add_latency(self, result: ReplayResult) -> None:
        for target in LATENCY_TARGETS:
            response = result.responses.get(target)
            if response is None or response.error is not None or response.latency is None:
                return
        for target in LATENCY_TARGETS:
            sketch = self.latency.get(target)
            if sketch is None:
                sketch = self.latency[target] = LogSketch()
            latency = result.responses[target].latency
            assert latency is not None
            self.changed_bins.add((target, sketch.add(latency)))

    def add_not_compared(self, target: str, reason: str) -> None:
        self.version += 1
        key = (target, reason)
        self.not_compared[key] = self.not_compared.get(key, 0) + 1
        self.changed_not_compared.add(key)

    # -- judging -------------------------------------------------------------------------

    def evidence(self, key: str) -> int:
        """Paired requests where the twin differed at ``key`` or at a field above it."""
        return sum(t.twin for k, t in self.fields.items() if t.twin and is_within(key, k))

    def classify(self, key: str, rules: NoiseThresholds) -> str:
        t = self.fields.get(key)
        if t is None:
            return NOISE
        return classify(t.raw, self.compared, self.evidence(key), self.paired, t.raw - t.cancelled, rules)

    def state(self, key: str, rules: NoiseThresholds) -> str:
        """:meth:`classify`, cached while the endpoint's count grows by less than ~3 %
        (the live per-request judgement; :func:`judge` always classifies afresh)."""
        cached = self._states.get(key)
        if cached is not None and self.compared - cached[1] <= max(4, self.compared >> 5):
            return cached[0]
        found = self.classify(key, rules)
        self._states[key] = (found, self.compared)
        return found

    def diverged(self, real: set[str] | frozenset[str]) -> int:
        n = sum(c for sig, c in self.signatures.items() if any(k in real for k, _ in sig))
        if self.overflow_count and any(k in real for k, _ in self.overflow):
            n += self.overflow_count
        return n

    def merge(self, other: EndpointTally) -> None:
        """Add ``other``'s counts (another session's)."""
        self.compared += other.compared
        self.paired += other.paired
        self.differing += other.differing
        for key, t in other.fields.items():
            mine = self.fields.setdefault(key, FieldTally())
            mine.raw += t.raw
            mine.twin += t.twin
            mine.cancelled += t.cancelled
            mine.kinds |= t.kinds
        for sig, n in other.signatures.items():
            self.signatures[sig] = self.signatures.get(sig, 0) + n
        self.overflow |= other.overflow
        self.overflow_count += other.overflow_count
        for target, sketch in other.latency.items():
            self.latency.setdefault(target, LogSketch()).merge(sketch.bins.items())
        for reason_key, n in other.not_compared.items():
            self.not_compared[reason_key] = self.not_compared.get(reason_key, 0) + n


@dataclass(frozen=True)
class FieldJudgement:
    """One field of one endpoint. ``noise`` counts its differences judged noise: all of
    them when the field is not real, else those cancelled in their request."""

    path: str
    raw: int
    twin: int
    cancelled: int
    kinds: tuple[str, ...]
    state: str
    diverged: int  # requests that count as diverged on this field (0 unless real)

    @property
    def real(self) -> bool:
        return self.state == REAL

    @property
    def noise(self) -> int:
        return self.cancelled if self.real else self.raw


@dataclass(frozen=True)
class EndpointJudgement:
    endpoint: str
    compared: int
    paired: int
    differing: int
    diverged: int
    kinds: dict[str, int]
    fields: list[FieldJudgement]
    latency: LatencyVerdict
    not_compared: dict[str, dict[str, int]]

    @property
    def rate(self) -> float:
        return self.diverged / self.compared if self.compared else 0.0

    @property
    def noise(self) -> int:
        """Requests that differed only in ways judged noise."""
        return max(self.differing - self.diverged, 0)

    @property
    def real_fields(self) -> frozenset[str]:
        return frozenset(f.path for f in self.fields if f.real)

    @property
    def not_compared_total(self) -> int:
        return sum(n for by_reason in self.not_compared.values() for n in by_reason.values())


def judge(endpoint: str, tally: EndpointTally, rules: VerdictRules = VerdictRules()) -> EndpointJudgement:
    """The endpoint's verdict from its counts (the same whatever order they were added in)."""
    states = {key: tally.classify(key, rules.noise) for key in tally.fields}
    real = {key for key, s in states.items() if s == REAL}
    per_field: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for sig, n in tally.signatures.items():
        hits = [(k, kind) for k, kind in sig if k in real]
        if not hits:
            continue
        for k in {k for k, _ in hits}:
            per_field[k] = per_field.get(k, 0) + n
        for kind in {kind for _, kind in hits}:
            kinds[kind] = kinds.get(kind, 0) + n
    fields = [
        FieldJudgement(
            key, t.raw, tally.evidence(key), t.cancelled, tuple(sorted(t.kinds)), states[key], per_field.get(key, 0)
        )
        for key, t in tally.fields.items()
    ]
    fields.sort(key=lambda f: (field_order(f.path), not f.real, f.state != UNDECIDED, -f.diverged, -f.raw, f.path))
    not_compared: dict[str, dict[str, int]] = {}
    for (target, reason), n in sorted(tally.not_compared.items()):
        not_compared.setdefault(target, {})[reason] = n
    return EndpointJudgement(
        endpoint=endpoint,
        compared=tally.compared,
        paired=tally.paired,
        differing=tally.differing,
        diverged=tally.diverged(real),
        kinds=dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        fields=fields,
        latency=judge_latency(tally.latency.get("baseline"), tally.latency.get("candidate"), rules.latency),
        not_compared=not_compared,
    )


__all__ = [
    "MAX_FIELDS_PER_ENDPOINT",
    "NOISE",
    "OTHER_FIELDS",
    "REAL",
    "UNDECIDED",
    "EndpointJudgement",
    "EndpointTally",
    "FieldJudgement",
    "FieldTally",
    "Signature",
    "VerdictRules",
    "field_order",
    "judge",
    "status_first",
    "verdict_rules",
]
