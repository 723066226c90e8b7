"""``shadowreplay tail``: follow access-log files and ship their lines to a collector.

The options are the collector's own (``shadowreplay.collector.tail.add_arguments``): the
single-file build of the tail (collector/pyz.py) runs without this package's other
modules and parses the same command line."""

from __future__ import annotations

import argparse
import sys

from shadowreplay.collector.tail import add_arguments as add_tail_arguments
from shadowreplay.collector.tail import run_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Follow access-log files across rename and copytruncate rotation, parse each line "
        "(nginx_json, ltsv, combined) and ship the records to a collector as acknowledged "
        "PackedForward chunks. The file position is saved (--state) only after the collector "
        "acknowledged, so restarting either side neither skips nor repeats lines."
    )
    add_tail_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stats = run_from_args(args)
    print(stats.summary(), file=sys.stderr)
    return 0
