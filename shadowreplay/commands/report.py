"""``shadowreplay report``: a self-contained HTML (or Markdown) summary of a replay run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shadowreplay.commands.common import add_store_options, config_from_args
from shadowreplay.comparer.commands import REPORT_FORMATS, report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "A self-contained HTML or Markdown summary of the divergence store, for a release ticket."
    add_store_options(p)
    p.add_argument("--since", metavar="T", help="only divergences stored since T: 30m, 2h, 7d, Unix seconds or ISO 8601")
    p.add_argument("--format", choices=REPORT_FORMATS, help="default: from --output's suffix, else html")
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    p.add_argument("--title", default="shadowreplay report", help="heading of the report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    text, fmt = report(cfg, store=args.store, fmt=args.format, output=args.output, title=args.title, since=args.since)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {fmt} report to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
