"""What ``run``, ``collect``, ``replay`` and ``compare`` share: the options every stage
command has, and running a ``Pipeline`` of stages until it ends or a signal stops it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys

from shadowreplay.contract.config import METRICS_PORTS, Config
from shadowreplay.runtime import tune_gc

log = logging.getLogger("shadowreplay")


def add_stage_arguments(p: argparse.ArgumentParser, stages: tuple[str, ...], *, replay: bool = False) -> None:
    """``--config``, ``--bus``, ``--metrics-listen`` (default: the first stage's own port),
    ``--listen`` with the collector; with ``replay``, the replay stage's main flags."""
    p.add_argument("--config", metavar="FILE", help="TOML config file (see `shadowreplay config example`)")
    p.add_argument(
        "--bus",
        metavar="URL",
        help="sqlite:///path/to.db (embedded, default sqlite:///shadowreplay.db) or kafka://host:port[,host:port]",
    )
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help=f"where /metrics, /healthz and /readyz are served (default metrics.listen, "
                        f"else 127.0.0.1:{METRICS_PORTS[stages[0]]}: each stage has its own port)")
    if "collect" in stages:
        p.add_argument("--listen", metavar="HOST:PORT", help="forward-protocol listen address (default 127.0.0.1:24224)")
    if replay:
        p.add_argument("--candidate", metavar="URL", help="base URL of the release under test (required)")
        p.add_argument("--baseline", metavar="URL", help="base URL of the current release (optional)")
        p.add_argument("--speed", type=float, metavar="N", help="replay at N× recorded speed (default 1)")
        p.add_argument("--group", metavar="NAME", help="replayer consumer group (default shadow-replayer)")
        p.add_argument(
            "--idle-exit",
            type=float,
            metavar="SECONDS",
            help="exit once caught up and idle this long (default: follow forever)",
        )


def run_stages(cfg: Config, stages: tuple[str, ...], args: argparse.Namespace) -> int:
    """Run ``stages`` in this process until they end or SIGINT/SIGTERM."""
    tune_gc()
    asyncio.run(_run_stages(cfg, stages, args))
    return 0


async def _run_stages(cfg: Config, stages: tuple[str, ...], args: argparse.Namespace) -> None:
    from shadowreplay.app import Pipeline
    from shadowreplay.status import StatusLine  # operations: live line on a terminal, logs otherwise

    fd = getattr(args, "metrics_fd", None)
    pipeline = Pipeline(cfg, stages, metrics_sock=socket.socket(fileno=fd) if fd is not None else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with pipeline:
        status_stop = asyncio.Event()
        # JSON logs stay one object per line: the status goes to the log, never redrawn in place.
        tty = False if args.log_format == "json" else None
        status = asyncio.create_task(StatusLine(pipeline.registry, sys.stderr, stages=stages, tty=tty).run(status_stop))
        waiter = asyncio.create_task(pipeline.wait())
        stopper = asyncio.create_task(stop.wait())
        done, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        status_stop.set()
        await status
        if waiter in done:
            waiter.result()
        log.info("stopping")
