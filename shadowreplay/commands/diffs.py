"""``shadowreplay diffs``: stored divergences by endpoint, as a table or JSON."""

from __future__ import annotations

import argparse
import sys

from shadowreplay.commands.common import add_store_options, config_from_args
from shadowreplay.comparer.commands import diffs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Endpoints by divergence rate, with counts, noise and diverging fields, from the divergence store."
    add_store_options(p)
    p.add_argument("--since", metavar="T", help="only divergences stored since T: 30m, 2h, 7d, Unix seconds or ISO 8601")
    p.add_argument("--endpoint", metavar="E", help='only this endpoint, e.g. "GET /api/products/{id}"')
    p.add_argument("--json", action="store_true", help="one JSON object per endpoint (see docs/verdict.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    sys.stdout.write(diffs(cfg, store=args.store, endpoint=args.endpoint, since=args.since, as_json=args.json))
    return 0
