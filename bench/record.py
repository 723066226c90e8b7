"""The wire format alone: CPU per message to encode and decode requests and results.

    .venv/bin/python bench/record.py [--messages N] [--rounds R]

The requests are the collector bench's nginx records (4 headers, a body on one in five);
each result carries two 400-byte JSON answers (candidate and baseline), as a replay with a
baseline does. Prints the CPU time (``time.thread_time``) per message of
``encode_request``, ``decode_request``, ``encode_result`` and ``decode_result``; the median of R rounds, run interleaved. Bounded: N messages per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Keep bench/ off the import path (scripts here are named like the packages they measure).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from shadowreplay.contract.record import (  # noqa: E402
    Origin,
    ReplayResult,
    RequestRecord,
    Response,
    decode_request,
    decode_result,
    encode_request,
    encode_result,
)

TS0 = 1_700_000_000_000_000_000
ANSWER = b'{"id":1,"name":"item","price":12.5,"tags":["a","b","c"],"stock":{"here":3,"there":0}}' * 5


def request(i: int) -> RequestRecord:
    """The request bench/collector.py's nginx record ``i`` becomes."""
    return RequestRecord(
        id=f"{i:032x}",
        ts=TS0 + i,
        method="GET" if i % 5 else "POST",
        target=f"/api/v1/items/{i % 5000}?page={i % 7}&sort=price",
        tag="nginx.access",
        scheme="https",
        host="shop.example.com",
        headers=(
            ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"),
            ("Referer", "https://shop.example.com/"),
            ("Accept", "application/json"),
            ("X-Forwarded-For", "203.0.113.9"),
        ),
        body=None if i % 5 else b'{"qty":1,"sku":"A-1"}',
        client=f"10.{i % 3}.{i % 251}.{i % 97}",
        origin=Origin(200 if i % 50 else 404, 512 + i % 4096, (i % 1000) / 1000),
    )


def result(rec: RequestRecord) -> ReplayResult:
    headers = (("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER))))
    return ReplayResult(
        id=rec.id, request=rec, endpoint="GET /api/v1/items/{id}", scheduled=rec.ts, sent=rec.ts + 1000,
        responses={
            "candidate": Response(200, headers, ANSWER, False, 0.0021, 0.0019),
            "baseline": Response(200, headers, ANSWER, False, 0.0018, 0.0016),
        },
        origin=rec.origin,
    )


def cpu_us(fn: Callable[[Any], object], items: Sequence[Any]) -> float:
    start = time.thread_time()
    for item in items:
        fn(item)
    return 1e6 * (time.thread_time() - start) / len(items)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20_000, help="messages per round (default 20,000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; medians are printed (default 5)")
    args = ap.parse_args()
    if min(args.messages, args.rounds) < 1:
        ap.error("every count must be at least 1")
    requests = [request(i) for i in range(args.messages)]
    request_json = [encode_request(r) for r in requests]
    results = [result(r) for r in requests]
    result_json = [encode_result(r) for r in results]
    cases: dict[str, tuple[Callable[[Any], object], Sequence[Any]]] = {
        "encode_request": (encode_request, requests),
        "decode_request": (decode_request, request_json),
        "encode_result": (encode_result, results),
        "decode_result": (decode_result, result_json),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (fn, items) in cases.items():
            times[name].append(cpu_us(fn, items))
    print(f"wire format, {args.messages:,} messages, CPU µs per message, medians of {args.rounds} interleaved rounds")
    for name, values in times.items():
        print(f"  {name:<44} {statistics.median(values):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
