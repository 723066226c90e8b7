"""The noise model: fields judged real or noise per endpoint over many requests, the
same final verdict whatever the order results arrive in, and its statistics."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.comparer.diff import Differ, FieldDiff, Verdict
from shadowreplay.comparer.noise import NOISE, REAL, UNDECIDED, NoiseThresholds, classify, difference_bounds, wilson, z_for
from shadowreplay.comparer.paths import field_key
from shadowreplay.comparer.verdict import MAX_FIELDS_PER_ENDPOINT, OTHER_FIELDS, EndpointTally, judge
from shadowreplay.contract.config import ComparerConfig
from shadowreplay.contract.record import PROBE, ReplayResult, RequestRecord, Response

T = NoiseThresholds()
JSON = (("content-type", "application/json"),)


def test_wilson_matches_known_values() -> None:
    lo, hi = wilson(0, 50, z_for(0.99))
    assert lo == 0.0 and hi == pytest.approx(0.1171, abs=1e-3)
    lo, hi = wilson(25, 100, 1.959964)
    assert lo == pytest.approx(0.1754, abs=1e-3) and hi == pytest.approx(0.3430, abs=1e-3)
    assert wilson(0, 0, 2.0) == (0.0, 1.0)


def test_difference_bounds_bracket_the_estimate() -> None:
    lo, hi = difference_bounds(30, 100, 10, 100, 1.0, z_for(0.95))
    assert lo < 0.2 < hi
    assert lo == pytest.approx(0.08, abs=0.02)  # Newcombe's hybrid score interval for 0.3 - 0.1


@pytest.mark.parametrize(
    "raw, compared, twin, paired, expected",
    [
        (980, 1000, 490, 500, NOISE),  # differs as often as the release differs from itself
        (250, 1000, 0, 1000, REAL),  # a changed price on a quarter of the requests
        (250, 1000, 0, 40, REAL),  # ... with only 40 probes of evidence
        (3, 10, 0, 10, UNDECIDED),  # too few requests to tell
        (12, 100, 10, 100, UNDECIDED),  # 12 % against 10 %: not (1 + 20 %) more with confidence
        (600, 1000, 100, 1000, REAL),
        (0, 1000, 100, 1000, NOISE),
    ],
)
def test_classify(raw: int, compared: int, twin: int, paired: int, expected: str) -> None:
    assert classify(raw, compared, twin, paired, raw, T) == expected


def test_no_evidence_means_a_difference_is_a_difference() -> None:
    assert classify(5, 10, 0, 0, 5, T) == REAL
    assert classify(1, 10_000, 0, 0, 1, T) == UNDECIDED  # one in 10,000 is within the absolute threshold


def test_a_field_always_cancelled_in_its_request_is_noise() -> None:
    assert classify(300, 1000, 0, 1000, 0, T) == NOISE


def test_thresholds_are_configurable() -> None:
    loose = NoiseThresholds(relative=0.0, absolute=0.0, confidence=0.9)
    assert classify(14, 100, 5, 100, 14, loose) == REAL
    assert classify(14, 100, 5, 100, 14, T) == UNDECIDED


def fd(*paths: str, kind: str = "value") -> tuple[FieldDiff, ...]:
    return tuple(FieldDiff(p, kind, 1, 2) for p in paths)


def verdict(diffs: tuple[FieldDiff, ...] = (), noise: tuple[FieldDiff, ...] = (),
            twin: tuple[FieldDiff, ...] | None = (), endpoint: str = "GET /x") -> Verdict:
    return Verdict(endpoint, "baseline", diffs, None, noise, twin or (), twin=None if twin is None else "secondary")


def test_twin_evidence_counts_once_per_request_at_the_highest_field() -> None:
    t = EndpointTally()
    t.add(verdict(twin=fd("$.meta", "$.meta.ts", "$.items[0].ts", "$.items[3].ts")))
    t.add(verdict(twin=fd("$.meta.ts")))
    assert (t.fields["$.meta"].twin, t.fields["$.meta.ts"].twin, t.fields["$.items[*].ts"].twin) == (1, 1, 1)
    assert t.evidence("$.meta.ts") == 2 and t.evidence("$.meta") == 1 and t.paired == 2


def test_field_keys_generalise_indexes_and_rpc_ids() -> None:
    assert field_key("$.items[3].price") == "$.items[*].price"
    assert field_key("$[?(@.id==7)].result.ts") == "$[*].result.ts"
    assert field_key('$[?(@.id=="a")].x') == "$[*].x"
    assert field_key("status") == "status" and field_key("header:x-a") == "header:x-a"


def scenario_verdicts(seed: int, n: int = 600) -> list[Verdict]:
    """Per request: a timestamp and a random id always differ (also between baseline and
    secondary), ``served_by`` has 50 values, the price changed on one product in five."""
    rng = random.Random(seed)
    differ = Differ(ComparerConfig())
    out = []
    for i in range(n):
        def body(price: float, i: int = i) -> bytes:
            return orjson.dumps({"id": i, "price": price, "generated_at": rng.random(), "rid": rng.getrandbits(64),
                                 "served_by": f"node-{rng.randrange(50)}"})
        responses = {
            "baseline": Response(status=200, headers=JSON, body=body(10.0), latency=0.01),
            "secondary": Response(status=200, headers=JSON, body=body(10.0), latency=0.01),
            "candidate": Response(status=200, headers=JSON, body=body(11.0 if i % 5 == 0 else 10.0), latency=0.01),
        }
        req = RequestRecord(id=f"r{i}", ts=i, method="GET", target=f"/p/{i}")
        out.append(differ.compare(ReplayResult(f"r{i}", req, "GET /p/{id}", i, i, responses)))
    return out


def test_served_by_with_50_values_is_noise_and_the_price_is_real() -> None:
    verdicts = scenario_verdicts(1)
    # Per-request cancellation alone lets served_by through whenever baseline and secondary agree (~2 %).
    leaked = sum(1 for v in verdicts if any(d.path == "$.served_by" for d in v.diffs))
    assert leaked > 0
    t = EndpointTally()
    for v in verdicts:
        t.add(v)
    j = judge("GET /p/{id}", t)
    states = {f.path: f.state for f in j.fields}
    assert states == {"$.price": REAL, "$.served_by": NOISE, "$.generated_at": NOISE, "$.rid": NOISE}
    assert j.diverged == 120 and j.kinds == {"value": 120}
    assert j.real_fields == {"$.price"}
    assert [f.path for f in j.fields][0] == "$.price"


@given(st.randoms(use_true_random=False))
@settings(max_examples=20, deadline=None)
def test_final_verdict_does_not_depend_on_arrival_order(rng: random.Random) -> None:
    verdicts = scenario_verdicts(2, n=200)
    shuffled = list(verdicts)
    rng.shuffle(shuffled)
    a, b = EndpointTally(), EndpointTally()
    for v in verdicts:
        a.add(v)
    for v in shuffled:
        b.add(v)
    assert judge("e", a) == judge("e", b)


def test_an_early_diff_is_rejudged_when_its_field_turns_out_real() -> None:
    t = EndpointTally()
    t.add(verdict(fd("$.price"), twin=()))  # first request: the price differs, nothing known yet
    assert t.classify("$.price", T) == UNDECIDED
    for _ in range(60):
        t.add(verdict(fd("$.price"), twin=()))
    assert judge("e", t).diverged == 61  # the first one counts too


def test_status_is_listed_first_even_when_rarer() -> None:
    t = EndpointTally()
    for i in range(200):
        t.add(verdict(fd("$.a", "$.b") + (fd("status", kind="status") if i < 40 else ()), twin=()))
    assert [f.path for f in judge("e", t).fields][0] == "status"


def test_fields_and_signatures_are_bounded() -> None:
    t = EndpointTally()
    for i in range(MAX_FIELDS_PER_ENDPOINT + 10):
        t.add(verdict(fd(f"$.f{i}"), twin=None))
    assert len(t.fields) == MAX_FIELDS_PER_ENDPOINT + 1 and t.fields[OTHER_FIELDS].raw == 10
    assert all(k in t.fields for sig in t.signatures for k, _ in sig)


def test_merge_equals_one_tally_of_everything() -> None:
    verdicts = scenario_verdicts(3, n=300)
    whole, first, second = EndpointTally(), EndpointTally(), EndpointTally()
    for i, v in enumerate(verdicts):
        whole.add(v)
        (first if i % 3 else second).add(v)
    first.merge(second)
    assert judge("e", first) == judge("e", whole)


def probe_result(i: int, cand: dict[str, Any], base: dict[str, Any], probe: dict[str, Any] | None) -> ReplayResult:
    responses = {
        "baseline": Response(status=200, headers=JSON, body=orjson.dumps(base)),
        "candidate": Response(status=200, headers=JSON, body=orjson.dumps(cand)),
    }
    if probe is not None:
        responses[PROBE] = Response(status=200, headers=JSON, body=orjson.dumps(probe))
    req = RequestRecord(id=f"r{i}", ts=i, method="GET", target="/x")
    return ReplayResult(f"r{i}", req, "GET /x", i, i, responses)


def test_probes_are_twins_without_a_secondary() -> None:
    differ = Differ(ComparerConfig())
    v = differ.compare(probe_result(1, {"ts": 3}, {"ts": 1}, {"ts": 2}))
    assert v.twin == PROBE and [d.path for d in v.noise] == ["$.ts"] and not v.diffs
    v = differ.compare(probe_result(2, {"ts": 3}, {"ts": 1}, None))
    assert v.twin is None and [d.path for d in v.diffs] == ["$.ts"]


def test_probe_sampler_first_per_endpoint_then_a_share_and_only_safe_methods() -> None:
    import dataclasses

    from shadowreplay.replayer.probe import ProbeSampler
    from shadowreplay.contract.config import ReplayerConfig

    cfg = ReplayerConfig(candidate="http://c", baseline="http://b", noise_probe_min_per_endpoint=5)
    sampler = ProbeSampler(cfg)
    recs = [RequestRecord(id=f"id-{i}", ts=i, method="GET", target="/x") for i in range(10_000)]
    picked = [sampler.target_for(r, "GET /x") for r in recs]
    assert picked[:5] == ["baseline"] * 5
    assert 200 < sum(p is not None for p in picked[5:]) < 400  # 3 %
    again = ProbeSampler(cfg)
    assert [again.target_for(r, "GET /x") for r in recs] == picked  # by record id: the same records
    assert sampler.target_for(RequestRecord(id="p", ts=1, method="POST", target="/x"), "POST /x") is None
    assert ProbeSampler(dataclasses.replace(cfg, secondary="http://s")).target is None
    assert ProbeSampler(dataclasses.replace(cfg, noise_probe_percent=0.0)).target is None
    assert ProbeSampler(dataclasses.replace(cfg, baseline="")).target is None
    assert ProbeSampler(dataclasses.replace(cfg, baseline="", noise_probe_candidate=True)).target == "candidate"
