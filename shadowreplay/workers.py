"""``replay --workers N``: N replayer processes on this machine, one consumer group.

The parent makes sure the group has an anchor on the bus (unless ``--anchor bus``: then
the one in force is used): the one in force if still in use (``replay start``'s, or a
running group's), else it claims one a little ahead, so the children have time to join.
It starts N children with ``--anchor bus`` so they all schedule from it (or, when the
group has nothing to replay yet, with ``--anchor auto``: the first to get records claims
it), forwards SIGINT/SIGTERM to them and waits. Each child has its own event loop; how it
serves ``/metrics`` is the caller's ``ChildMetrics`` (the CLI's: on a socket the parent
bound, the parent serving them all on ``--metrics-listen``, see
shadowreplay/workermetrics.py); without one, each child takes a free loopback port.

``--rate`` and ``--concurrency`` (and each target's own concurrency) stay totals: child i
of N (``--worker i/N``) takes its share, so a target sees the same rate and the same cap
on in-flight requests whatever N is.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Protocol

from shadowreplay.replayer.control import ensure_anchor
from shadowreplay.contract.bus import open_bus
from shadowreplay.contract.config import TARGET_NAMES, Config, ReplayerConfig
from shadowreplay.contract.errors import ConfigError

log = logging.getLogger(__name__)

# Head start of a --workers anchor: children need this long to start and join the group.
LEAD_SECONDS = {"sqlite": 2.0, "kafka": 8.0}
_STRIPPED = ("--workers", "--metrics-listen", "--metrics-fd", "--anchor", "--worker")


class ChildMetrics(Protocol):
    """How the children serve /metrics: extra flags and inherited descriptors per child,
    and a call once they are all started."""

    def child_args(self, i: int) -> list[str]: ...

    def pass_fds(self) -> tuple[int, ...]: ...

    def started(self) -> None: ...


def part_of(total: int, i: int, n: int) -> int:
    """Worker i's part of ``total`` split over n: equal parts, the first ones take the remainder."""
    return total // n + (1 if i < total % n else 0)


def check_split(r: ReplayerConfig, n: int) -> None:
    """Refuse a concurrency cap that n workers cannot share (each needs at least one)."""
    caps = [("replayer.concurrency", r.concurrency)] + [
        (f"replayer.targets.{name}.concurrency", getattr(r.targets, name).concurrency)
        for name in TARGET_NAMES if getattr(r.targets, name).concurrency
    ]
    for key, cap in caps:
        if cap < n:
            raise ConfigError(f"{key} = {cap} cannot be split over {n} workers (each needs at least 1 "
                              f"request in flight): raise --concurrency or lower --workers")


def worker_share(r: ReplayerConfig, worker: str) -> ReplayerConfig:
    """``r`` as child ``I`` of ``N`` (``worker`` is "I/N") runs it: its share of the rate and
    of every concurrency cap."""
    try:
        i, n = (int(x) for x in worker.split("/"))
    except ValueError:
        i = n = -1
    if not 0 <= i < n:
        raise ConfigError(f"--worker: I/N with 0 <= I < N, got {worker!r}")
    check_split(r, n)
    targets = {name: dataclasses.replace(getattr(r.targets, name),
                                         concurrency=part_of(getattr(r.targets, name).concurrency, i, n))
               for name in TARGET_NAMES}
    return dataclasses.replace(r, rate=r.rate / n, concurrency=part_of(r.concurrency, i, n),
                               targets=dataclasses.replace(r.targets, **targets))


def child_argv(argv: Sequence[str], i: int, n: int, metrics_args: Sequence[str], anchor: str = "bus") -> list[str]:
    """The command line of child ``i``: the parent's, with its anchor mode, ``--worker i/n``
    (its share of the rate and concurrency) and ``metrics_args`` (how it serves /metrics)."""
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
    out += ["--workers", "1", "--anchor", anchor, "--worker", f"{i}/{n}", *metrics_args]
    return out


def run_workers(cfg: Config, argv: Sequence[str], metrics: ChildMetrics | None = None) -> int:
    """Run ``cfg.replayer.workers`` children; their highest exit status is returned."""
    n = cfg.replayer.workers
    check_split(cfg.replayer, n)
    mode = "bus"
    if cfg.replayer.anchor != "bus":
        kind = "kafka" if cfg.bus.url.startswith("kafka://") else "sqlite"
        bus = open_bus(cfg.bus.url, cfg.bus.partitions)
        try:
            bus.ensure_topic(cfg.bus.requests_topic, cfg.bus.partitions)
            bus.ensure_topic(cfg.bus.results_topic, cfg.bus.partitions)
            if ensure_anchor(bus, cfg.bus.requests_topic, cfg.replayer,
                             lead_seconds=max(LEAD_SECONDS[kind], cfg.replayer.lead_seconds)) is None:
                mode = "auto"
        finally:
            bus.close()
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "shadowreplay.cli",
             *child_argv(argv, i, n, metrics.child_args(i) if metrics else ["--metrics-listen", "127.0.0.1:0"], mode)],
            pass_fds=metrics.pass_fds() if metrics else (),
        )
        for i in range(n)
    ]
    if metrics is not None:
        metrics.started()
    log.info("started %d replayer workers: pids %s; each takes 1/%d of the rate and of the concurrency cap",
             n, [c.pid for c in children], n)

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
