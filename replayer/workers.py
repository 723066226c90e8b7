"""``replay --workers N``: N replayer processes on this machine, one consumer group.

The parent publishes the group's anchor on the bus (unless ``--anchor bus``: then the
one ``replay start`` set is used), starts N children with ``--anchor bus`` so they all
schedule from it, forwards SIGINT/SIGTERM to them and waits. Each child has its own
event loop and serves its own ``/metrics`` on consecutive ports (``metrics.listen``
port + i; port 0: each picks a free one); ``--rate R`` is split R/N per child.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from replayer.control import start_anchor
from shadowreplay.bus import open_bus
from shadowreplay.config import Config, parse_hostport

log = logging.getLogger(__name__)

# Head start of a --workers anchor: children need this long to start and join the group.
LEAD_SECONDS = {"sqlite": 2.0, "kafka": 8.0}
_STRIPPED = ("--workers", "--metrics-listen", "--rate", "--anchor")


def child_argv(argv: Sequence[str], i: int, n: int, cfg: Config) -> list[str]:
    """The command line of child ``i``: the parent's, with its own metrics port, anchor and rate share."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _STRIPPED:
            skip = "=" not in arg
            continue
        out.append(arg)
    host, port = parse_hostport(cfg.metrics.listen, "metrics.listen")
    out += ["--workers", "1", "--anchor", "bus", "--metrics-listen", f"{host}:{port + i if port else 0}"]
    if cfg.replayer.rate > 0:
        out += ["--rate", repr(cfg.replayer.rate / n)]
    return out


def run_workers(cfg: Config, argv: Sequence[str]) -> int:
    """Run ``cfg.replayer.workers`` children; their highest exit status is returned."""
    n = cfg.replayer.workers
    if cfg.replayer.anchor != "bus":
        kind = "kafka" if cfg.bus.url.startswith("kafka://") else "sqlite"
        bus = open_bus(cfg.bus.url, cfg.bus.partitions)
        try:
            bus.ensure_topic(cfg.bus.requests_topic, cfg.bus.partitions)
            bus.ensure_topic(cfg.bus.results_topic, cfg.bus.partitions)
            start_anchor(bus, cfg.bus.requests_topic, cfg.replayer,
                         lead_seconds=max(LEAD_SECONDS[kind], cfg.replayer.lead_seconds))
        finally:
            bus.close()
    children = [
        subprocess.Popen([sys.executable, "-m", "shadowreplay.cli", *child_argv(argv, i, n, cfg)])
        for i in range(n)
    ]
    log.info("started %d replayer workers: pids %s", n, [c.pid for c in children])

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(c.poll() is None for c in children):
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    codes = [c.returncode for c in children]
    log.info("replayer workers exited: %s", codes)
    return max((c if c > 0 else 128 - c for c in codes if c), default=0)
