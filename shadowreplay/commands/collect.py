"""``shadowreplay collect``: the collector alone (forward protocol in, request records onto the bus)."""

from __future__ import annotations

import argparse

from shadowreplay.commands.common import config_from_args
from shadowreplay.commands.stage import add_stage_arguments, run_stages

STAGES = ("collect",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_stage_arguments(p, STAGES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_stages(config_from_args(args), STAGES, args)
