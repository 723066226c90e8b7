"""``shadowreplay demo``: the whole pipeline on this machine (shadowreplay/demo/)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from shadowreplay.demo.run import run_demo
from shadowreplay.runtime import tune_gc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Start two local backends (the current release, and a candidate with a changed field, "
        "a 500 on one route and a slower route), feed the bundled nginx JSON access log "
        "through the forward protocol into the collector, replay it at 10x speed, print a "
        "per-endpoint divergence table, and keep /metrics up until Ctrl-C."
    )
    p.add_argument("--speed", type=float, default=10.0, metavar="N",
                   help="replay speed (default 10; the sample spans 200 s, so --speed 1 takes about 200 s)")
    p.add_argument("--metrics-listen", default="127.0.0.1:9464", metavar="HOST:PORT",
                   help="where /metrics and the divergence page are served (default 127.0.0.1:9464; "
                        "a free port if that one is taken)")
    p.add_argument("--no-wait", action="store_true", help="exit after printing the table instead of serving /metrics")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tune_gc()
    outcome = asyncio.run(run_demo(speed=args.speed, metrics_listen=args.metrics_listen, keep_serving=not args.no_wait))
    if outcome.diverged != outcome.expected_diverged or outcome.compared != outcome.replayable:
        print(
            f"shadowreplay: demo check failed: {outcome.diverged} diverged "
            f"(expected {outcome.expected_diverged}), {outcome.compared} compared (expected {outcome.replayable})",
            file=sys.stderr,
        )
        return 1
    return 0
