"""Diff engine throughput: Differ.compare() per second on one core.

Cases (each a ReplayResult with JSON bodies that differ in a couple of fields, so the
structural walk runs; identical bodies would hit the byte-equality fast path):

* 2 KB bodies, ~40 fields: baseline vs candidate; then with a secondary (noise cancellation)
* 2 KB bodies with a secondary, through the noise model too: Differ.compare() plus the
  per-endpoint tally and the per-request judgement (what the comparer loop does per result)
* 100 KB bodies: baseline vs candidate
* the same 2 KB case with arrival timelines, as the replayer records them now (one point each)
* streams (docs/streaming.md): a 20-line chunked body held to its end by the candidate
  (the cadence verdict finds buffering), and 30 server-sent events whose JSON data carry a
  timestamp, compared event by event

Prints diffs/s and µs/diff. Bounded: each case runs for about --seconds (default 3).
Targets: >= 20,000 diffs/s for the 2 KB case (issue 5), and >= 20,000 results/s with
the noise model on and a secondary (issue 16).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

# This script is named like the package it measures: keep bench/ off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import orjson  # noqa: E402

from shadowreplay.comparer.diff import Differ, Verdict  # noqa: E402
from shadowreplay.comparer.paths import field_key  # noqa: E402
from shadowreplay.comparer.verdict import EndpointTally, VerdictRules  # noqa: E402
from shadowreplay.contract.config import ComparerConfig  # noqa: E402
from shadowreplay.contract.record import ReplayResult, RequestRecord, Response  # noqa: E402

JSON = (("content-type", "application/json"),)


def doc_2k(i: int, variant: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": i,
        "updated_at": f"2025-01-01T00:00:{variant:02d}Z",
        "price": 19.99 if variant != 2 else 21.99,
        "currency": "EUR",
        "tags": ["a", "b", "c"],
        "meta": {"request_id": f"req-{variant}-{i}", "region": "eu-west-1", "version": 3},
    }
    for k in range(34):
        doc[f"field_{k:02d}"] = f"value number {k} for item {i} ....................................." if k % 3 else k * 1.5
    return doc


def doc_100k(variant: int) -> dict[str, Any]:
    return {
        "page": 1,
        "generated_at": variant,
        "items": [doc_2k(i, variant if i == 7 else 0) for i in range(50)],
    }


def result(base: dict[str, Any], cand: dict[str, Any], sec: dict[str, Any] | None) -> ReplayResult:
    responses = {
        "baseline": Response(status=200, headers=JSON, body=orjson.dumps(base), latency=0.01),
        "candidate": Response(status=200, headers=JSON, body=orjson.dumps(cand), latency=0.012),
    }
    if sec is not None:
        responses["secondary"] = Response(status=200, headers=JSON, body=orjson.dumps(sec), latency=0.011)
    req = RequestRecord(id="r", ts=1, method="GET", target="/api/items/1")
    return ReplayResult(id="r", request=req, endpoint="GET /api/items/{id}", scheduled=1, sent=1, responses=responses)


def with_timelines(r: ReplayResult) -> ReplayResult:
    """``r`` with a one-point arrival timeline on every response (a body that came at once)."""
    responses = {
        name: dataclasses.replace(resp, timeline=((0.004, len(resp.body)),)) for name, resp in r.responses.items()
    }
    return dataclasses.replace(r, responses=responses)


def stream_result(kind: str, i: int) -> ReplayResult:
    """``lines``: 20 chunked lines, 100 ms apart on the baseline, held to the end on the
    candidate. ``sse``: 30 events per side, each with its own timestamp."""
    if kind == "lines":
        body = b"".join(b"line %02d of the deploy log\n" % k for k in range(20))
        ctype = (("content-type", "text/plain"),)
        base = Response(status=200, headers=ctype, body=body, latency=1.9, stream=True,
                        timeline=tuple((0.002 + 0.1 * k, 27 * (k + 1)) for k in range(20)))
        cand = Response(status=200, headers=ctype, body=body, latency=2.0, timeline=((2.0, 91),))
    else:
        ctype = (("content-type", "text/event-stream"),)

        def events(ts: float) -> bytes:
            return b"".join(b'id: %d\nevent: tick\ndata: {"n": %d, "ts": %.6f}\n\n' % (k, k, ts + k) for k in range(30))

        timeline = tuple((0.002 + 0.1 * k, 60 * (k + 1)) for k in range(30))
        base = Response(status=200, headers=ctype, body=events(i), latency=3.0, stream=True,
                        stream_window_reached=True, timeline=timeline)
        cand = Response(status=200, headers=ctype, body=events(i + 0.5), latency=3.0, stream=True,
                        stream_window_reached=True, timeline=timeline)
    req = RequestRecord(id="r", ts=1, method="GET", target="/deploys/1/log")
    return ReplayResult(id="r", request=req, endpoint="GET /deploys/{id}/log", scheduled=1, sent=1,
                        responses={"baseline": base, "candidate": cand})


def run(name: str, differ: Differ, results: list[ReplayResult], seconds: float) -> float:
    n = 0
    diverged = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for r in results:
            diverged += differ.compare(r).diverged
        n += len(results)
    elapsed = time.perf_counter() - start
    rate = n / elapsed
    size = len(results[0].responses["baseline"].body)
    print(f"{name:<44} body {size / 1024:6.1f} KB  {rate:10,.0f} diffs/s  {1e6 / rate:8.1f} µs/diff  ({diverged}/{n} diverged)")
    return rate


class WithNoiseModel:
    """Differ.compare() followed by what the comparer loop adds per result: the tally and
    the judgement of the result's fields (comparer/loop.py, Comparer.handle_result)."""

    def __init__(self, differ: Differ) -> None:
        self.differ = differ
        self.tally = EndpointTally()
        self.rules = VerdictRules().noise

    def compare(self, r: ReplayResult) -> Verdict:
        verdict = self.differ.compare(r)
        signature = self.tally.add(verdict, r)
        if signature:
            states = {key: self.tally.state(key, self.rules) for key, _ in signature}
            [d for d in verdict.diffs if states.get(self.tally.known_key(field_key(d.path))) == "real"]
        return verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="per case (default 3)")
    args = ap.parse_args()
    differ = Differ(ComparerConfig())
    small = [result(doc_2k(i, 0), doc_2k(i, 2), None) for i in range(100)]
    small_sec = [result(doc_2k(i, 0), doc_2k(i, 2), doc_2k(i, 1)) for i in range(100)]
    ignoring = Differ(ComparerConfig(ignore_paths=("$..updated_at", "$.meta.request_id"), tolerance_relative=0.001))
    big = [result(doc_100k(0), doc_100k(2), None) for _ in range(5)]
    print(f"one core, Python {'.'.join(map(str, sys.version_info[:3]))}")
    r1 = run("2 KB, ~40 fields, baseline vs candidate", differ, small, args.seconds)
    run("2 KB, ~40 fields, + secondary (noise)", differ, small_sec, args.seconds)
    r2 = run("2 KB, + secondary, + noise model", WithNoiseModel(differ), small_sec, args.seconds)  # type: ignore[arg-type]
    run("2 KB, ~40 fields, ignore_paths + tolerance", ignoring, small, args.seconds)
    run("100 KB, baseline vs candidate", differ, big, args.seconds)
    run("2 KB, with arrival timelines", differ, [with_timelines(r) for r in small], args.seconds)
    run("stream: 20 lines held by the candidate", differ, [stream_result("lines", i) for i in range(100)], args.seconds)
    noisy_ts = Differ(ComparerConfig(noise_paths=("$.events[*].data.ts",)))
    run("stream: 30 SSE events, ts noise by rule", noisy_ts, [stream_result("sse", i) for i in range(100)], args.seconds)
    print(f"2 KB target >= 20,000 diffs/s: {'met' if r1 >= 20000 else 'NOT met'} ({r1 / 20000:.2f}x)")
    print(f"noise model + secondary target >= 20,000 results/s: {'met' if r2 >= 20000 else 'NOT met'} ({r2 / 20000:.2f}x)")


if __name__ == "__main__":
    main()
