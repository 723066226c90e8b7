"""Precision and recall of the verdict on a noisy backend (tests/noisy_scenario.py).

~3,000 requests through the real pipeline (collector → bus → replayer → comparer) against
backends whose JSON carries a timestamp, a random request id and a ``served_by`` with 50
values; the candidate changes ``price`` on some products, answers 500 on some carts and
is 60 ms slower on /api/search; a JSON-RPC batch comes back in another order. Four runs:
with a secondary or with the baseline probes, candidate with regressions or identical.

Prints, per run: requests reported divergent, how many hit no regression (noise),
precision and recall at the request level, the value and status regressions found
against their exact counts, and the endpoints judged latency regressions.

    .venv/bin/python bench/verdict.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from tests.noisy_scenario import N_REQUESTS, run  # noqa: E402


async def one(secondary: bool, regressions: bool, n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-verdict-") as d:
        started = time.monotonic()
        out = await run(Path(d), secondary=secondary, regressions=regressions, n=n)
        seconds = time.monotonic() - started
    reported = sum(len(ids) for ids in out.reported.values())
    truth = len(out.expected["value"]) + len(out.expected["status"])
    hits = out.found("value") + out.found("status")
    precision = hits / reported if reported else 1.0
    recall = hits / truth if truth else 1.0
    mode = "secondary" if secondary else f"probes ({out.probes} sent)"
    cand = "candidate with regressions" if regressions else "candidate identical"
    print(f"{mode:<22} {cand:<27} compared {out.compared:>5}  reported {reported:>4}  noise {out.noise_reported:>3}  "
          f"precision {precision:6.1%}  recall {recall:6.1%}  "
          f"value {out.found('value')}/{len(out.expected['value'])}  status {out.found('status')}/{len(out.expected['status'])}  "
          f"latency regressions {out.latency_regressions or '-'}  ({seconds:.0f} s)")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=N_REQUESTS, help=f"requests per run (default {N_REQUESTS})")
    args = ap.parse_args()
    for secondary in (True, False):
        for regressions in (True, False):
            await one(secondary, regressions, args.requests)


if __name__ == "__main__":
    asyncio.run(main())
