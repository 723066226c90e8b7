"""The divergence page's API over a large store: how long a page takes, how big it is.

Fills a store with --endpoints distinct diverging endpoints (one divergence and three
fields each), plus one endpoint with --wide divergences of 100 distinct fields each, then
serves it on a loopback port and times, over HTTP:

* ``/api/endpoints`` (a page of 50, the page's own request: no fields), and 6 at once;
* ``/api/endpoints?limit=500&fields_limit=500``;
* the wide endpoint's fields (``endpoint=…&fields_limit=100``);
* ``/api/samples`` of one endpoint, and ``/api/totals``;

and ``StoreReader.endpoints()`` (every endpoint with every field: ``diffs --json``).
Prints milliseconds and bytes. Bounded: one fill, each request a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Keep bench/ off the import path (scripts here are named like the packages they measure).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import aiohttp  # noqa: E402

from shadowreplay.comparer.diff import FieldDiff, Verdict  # noqa: E402
from shadowreplay.comparer.store import DivergenceStore, StoreReader  # noqa: E402
from shadowreplay.comparer.verdict import EndpointTally  # noqa: E402
from shadowreplay.comparer.web import DivergencePage  # noqa: E402
from shadowreplay.contract.config import StoreConfig, WebConfig  # noqa: E402
from shadowreplay.contract.record import ReplayResult, RequestRecord, Response  # noqa: E402


def fill(path: str, endpoints: int, wide: int) -> None:
    names = [f"GET /attack/p{i}" for i in range(endpoints)]
    tallies: dict[str, EndpointTally] = {}
    store = DivergenceStore(path, StoreConfig(max_count=endpoints + wide), tallies=lambda: tallies)

    def result(i: int, target: str) -> ReplayResult:
        req = RequestRecord(id=f"r{i}", ts=i, method="GET", target=target)
        responses = {"candidate": Response(status=500, body=b"x" * 100), "baseline": Response(status=200)}
        return ReplayResult(id=req.id, request=req, endpoint="", scheduled=1, sent=1, responses=responses)

    def count(verdict: Verdict, same: int) -> None:
        """The verdict, and ``same`` requests of its endpoint that did not differ, as a comparer counts them."""
        tally = tallies.setdefault(verdict.endpoint, EndpointTally())
        tally.add(verdict)
        for _ in range(same):
            tally.add(Verdict(verdict.endpoint, "baseline", ()))

    for i, name in enumerate(names):
        diffs = (FieldDiff("status", "status", 200, 500), FieldDiff("$.a", "value", 1, 2), FieldDiff("$.b", "value", "x", "y"))
        verdict = Verdict(name, "baseline", diffs)
        count(verdict, 9)
        store.add(result(i, name.split(" ", 1)[1]), verdict)
    for i in range(wide):
        diffs = tuple(FieldDiff(f"$.items[{i * 100 + k}]", "value", 1, 2) for k in range(100))
        verdict = Verdict("GET /wide", "baseline", diffs)
        count(verdict, 0)
        store.add(result(endpoints + i, "/wide"), verdict)
    store.close()


async def timed(s: aiohttp.ClientSession, url: str) -> tuple[float, int, int]:
    started = time.perf_counter()
    async with s.get(url) as r:
        body = await r.read()
        assert r.status == 200, (url, r.status, body[:200])
    return (time.perf_counter() - started) * 1000, len(body), int(r.headers.get("X-Total-Count", "0"))


async def measure(path: str, repeat: int) -> None:
    page = DivergencePage(path, WebConfig(listen="127.0.0.1:0", query_timeout_seconds=60.0))
    await page.start()
    base = f"http://127.0.0.1:{page.port}/api/"
    cases = [
        ("endpoints, a page of 50 (no fields)", "endpoints?fields_limit=0"),
        ("endpoints, a page of 50 (20 fields each)", "endpoints"),
        ("endpoints, limit=500 fields_limit=500", "endpoints?limit=500&fields_limit=500"),
        ("the wide endpoint's first 100 fields", "endpoints?endpoint=GET%20/wide&fields_limit=100"),
        ("samples of one endpoint", "samples?endpoint=GET%20/attack/p7"),
        ("totals", "totals"),
    ]
    try:
        async with aiohttp.ClientSession() as s:
            for name, q in cases:
                runs = [await timed(s, base + q) for _ in range(repeat)]
                print(f"{name:42s} median {statistics.median(r[0] for r in runs):8.1f} ms  {runs[0][1]:>9,d} bytes"
                      f"  (of {runs[0][2]:,d})")
            started = time.perf_counter()
            together = await asyncio.gather(*(timed(s, base + "endpoints") for _ in range(6)))
            wall = (time.perf_counter() - started) * 1000
            print(f"{'6 x endpoints at once':42s} slowest {max(t[0] for t in together):7.1f} ms  (all done in {wall:.1f} ms)")
    finally:
        await page.stop()
    started = time.perf_counter()
    views = StoreReader(path).endpoints()
    print(f"{'StoreReader.endpoints() (diffs --json)':42s} {(time.perf_counter() - started) * 1000:15.1f} ms"
          f"  {len(views):,d} endpoints")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, default=20_000, help="distinct diverging endpoints (default 20000)")
    ap.add_argument("--wide", type=int, default=2_000, help="divergences of the wide endpoint, 100 fields each")
    ap.add_argument("--repeat", type=int, default=5, help="requests per case (the median is printed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        path = str(Path(tmp) / "diffs.db")
        started = time.perf_counter()
        fill(path, args.endpoints, args.wide)
        print(f"filled {args.endpoints:,d} endpoints + {args.wide:,d} wide divergences in {time.perf_counter() - started:.1f} s")
        asyncio.run(measure(path, args.repeat))


if __name__ == "__main__":
    main()
