"""``shadowreplay run``: collector, replayer and comparer in one process."""

from __future__ import annotations

import argparse

from shadowreplay.commands import replay
from shadowreplay.commands.common import config_from_args
from shadowreplay.commands.stage import add_stage_arguments, run_stages
from shadowreplay.contract.config import STAGES


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_stage_arguments(p, STAGES, replay=True)
    replay.add_replay_arguments(p, workers=False)
    p.set_defaults(func=run, configure=replay.replay_config)


def run(args: argparse.Namespace) -> int:
    replay.use_uvloop_if_asked(args)
    return run_stages(config_from_args(args), STAGES, args)
