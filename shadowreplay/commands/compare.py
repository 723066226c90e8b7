"""``shadowreplay compare``: the comparer alone (results from the bus, diffs to /metrics
and the divergence store), or ``--rediff``: the stored divergences judged again."""

from __future__ import annotations

import argparse
import sys

from shadowreplay.commands.common import config_from_args
from shadowreplay.commands.stage import add_stage_arguments, run_stages
from shadowreplay.contract import config as configmod
from shadowreplay.contract.config import Config

STAGES = ("compare",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_stage_arguments(p, STAGES)
    p.add_argument("--group", metavar="NAME", help="comparer consumer group (default shadow-comparer)")
    p.add_argument(
        "--rediff",
        action="store_true",
        help="re-diff the stored divergences with the current config (after changing ignore rules), then exit",
    )
    p.add_argument("--store", metavar="FILE", help="with --rediff: the divergence store (default: comparer.store.path)")
    p.set_defaults(func=run, configure=compare_config)


def compare_config(cfg: Config, args: argparse.Namespace) -> Config:
    return configmod.override(cfg, "comparer", group=args.group)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.rediff:
        from shadowreplay.comparer.commands import rediff_store

        sys.stdout.write(rediff_store(cfg, store=args.store))
        return 0
    return run_stages(cfg, STAGES, args)
