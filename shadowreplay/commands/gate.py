"""``shadowreplay gate``: the release gate for CI, over the divergence store."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from shadowreplay.commands.common import add_store_options, config_from_args
from shadowreplay.comparer.commands import gate
from shadowreplay.contract.config import Config, validate


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``shadowreplay gate`` (each overrides ``[comparer.gate]``)."""
    p.description = (
        "Judge the divergence store after a replay: exit 0 when every endpoint passes, 1 when an endpoint's "
        "real divergence rate is above --max-divergence-rate or it is a latency regression (printing the "
        "endpoint, rate, threshold, fields and p50/p95 latency in ms), 2 when there is no verdict (no store, "
        "too few results compared, or too many not compared because a target was not reached). "
        "Defaults come from [comparer.gate]."
    )
    add_store_options(p, "TOML config file ([comparer.gate] holds the defaults)")
    p.add_argument("--max-divergence-rate", type=float, metavar="R",
                   help="fail an endpoint whose share of requests with a real divergence is above R (default 0)")
    p.add_argument("--allow-latency-regression", action="store_true", default=None,
                   help="do not fail on latency regressions (default: fail)")
    p.add_argument("--max-not-compared-rate", type=float, metavar="R",
                   help="no verdict (exit 2) when more than R of the results were not compared (default 0.01)")
    p.add_argument("--min-compared", type=int, metavar="N",
                   help="no verdict (exit 2) with fewer than N results compared in all (default 1)")
    p.set_defaults(func=run)


def gate_config(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` with the gate flags of ``args`` applied (and checked)."""
    values = {
        "max_divergence_rate": args.max_divergence_rate,
        "fail_on_latency_regression": False if args.allow_latency_regression else None,
        "max_not_compared_rate": args.max_not_compared_rate,
        "min_compared": args.min_compared,
    }
    g = dataclasses.replace(cfg.comparer.gate, **{k: v for k, v in values.items() if v is not None})
    out = dataclasses.replace(cfg, comparer=dataclasses.replace(cfg.comparer, gate=g))
    validate(out)
    return out


def run(args: argparse.Namespace) -> int:
    verdict = gate(gate_config(config_from_args(args), args), store=args.store)
    sys.stdout.write(verdict.text)
    return verdict.code
