"""Setting and finding the group's anchor: ``replay start`` and what a replayer does at start.

``start_anchor`` computes an anchor (log time: ``--from``, else the smallest timestamp
at the head of the group's partitions; wall time: ``--at``, else now plus a lead) and
publishes it on the control topic. ``resolve_anchor`` is what each replayer process runs
before it starts: per ``replayer.anchor`` it takes the group's anchor from the bus
(``auto``/``bus``) or anchors itself (``local``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from replayer.anchors import AnchorStore
from replayer.schedule import Anchor
from replayer.window import parse_time, parse_window
from shadowreplay.bus.base import Bus
from shadowreplay.config import ReplayerConfig
from shadowreplay.errors import ConfigError

log = logging.getLogger(__name__)

BUS_ANCHOR_WAIT_SECONDS = 30.0
PEEK_SECONDS = 20.0


def peek_min_ts(bus: Bus, topic: str, group: str, from_ns: int | None = None) -> int | None:
    """The smallest timestamp among the next records of every partition of ``topic`` for
    ``group`` (or at ``from_ns``), read by joining the group briefly; nothing is committed.

    Run it before the group's replayers start: joining makes a running group rebalance.
    """
    consumer = bus.consumer([topic], group)
    firsts: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + PEEK_SECONDS
    empty = 0
    try:
        if from_ns is not None:
            consumer.seek_to_time(from_ns)  # partitions assigned later start there too
        while time.monotonic() < deadline:
            batch = consumer.poll(500, 0.3)
            for m in batch:
                tp = (m.topic, m.partition)
                if tp not in firsts:
                    firsts[tp] = m.timestamp_ns
                else:
                    firsts[tp] = min(firsts[tp], m.timestamp_ns)
            assigned = set(consumer.assignment())
            if assigned and assigned <= set(firsts):
                break
            empty = 0 if batch else empty + 1
            if assigned and empty >= 3:
                break
    finally:
        consumer.close()
    return min(firsts.values()) if firsts else None


def start_anchor(
    bus: Bus,
    requests_topic: str,
    cfg: ReplayerConfig,
    *,
    at: str = "",
    lead_seconds: float | None = None,
) -> Anchor:
    """Compute the group's anchor, publish it on the control topic and return it."""
    now = time.time_ns()
    window_from, _ = parse_window(cfg.window_from, cfg.window_to, now)
    log_t0 = window_from
    if log_t0 is None:
        log_t0 = peek_min_ts(bus, requests_topic, cfg.group)
        if log_t0 is None:
            raise ConfigError(
                f"replay start: topic {requests_topic!r} has nothing for group {cfg.group!r} to anchor on; "
                "give --from TIME"
            )
    lead = cfg.lead_seconds if lead_seconds is None else lead_seconds
    wall_t0 = parse_time(at, "--at", time.time_ns()) if at else time.time_ns() + int(lead * 1e9)
    follow = int(cfg.follow_delay_seconds * 1e9) if cfg.follow else None
    anchor = Anchor(log_t0, wall_t0, cfg.speed if cfg.speed > 0 else 1.0, follow)
    AnchorStore(bus, cfg.control_topic).publish(cfg.group, anchor, rate=cfg.rate)
    log.info("anchor for group %s published on %s: %s", cfg.group, cfg.control_topic, anchor)
    return anchor


def clear_anchor(bus: Bus, cfg: ReplayerConfig) -> None:
    """Withdraw the group's anchor: its replayers anchor themselves again (auto)."""
    AnchorStore(bus, cfg.control_topic).publish(cfg.group, None)


async def resolve_anchor(bus: Bus, cfg: ReplayerConfig) -> Anchor | None:
    """The anchor this replayer process uses: the group's from the bus, or None (local)."""
    if cfg.anchor == "local":
        return None
    store = await asyncio.to_thread(AnchorStore, bus, cfg.control_topic)
    deadline = time.monotonic() + BUS_ANCHOR_WAIT_SECONDS
    while True:
        found = await asyncio.to_thread(store.latest, cfg.group)
        if found is not None:
            anchor, _ = found
            if anchor.speed != (cfg.speed if cfg.speed > 0 else 1.0):
                log.warning("the group's anchor has speed %s, this process was given %s: the anchor wins",
                            anchor.speed, cfg.speed)
            log.info("using group %s's anchor from %s: %s", cfg.group, cfg.control_topic, anchor)
            return anchor
        if cfg.anchor == "auto":
            log.info("no anchor for group %s on %s: anchoring locally", cfg.group, cfg.control_topic)
            return None
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"replayer.anchor = bus: no anchor for group {cfg.group!r} on {cfg.control_topic!r} "
                f"after {BUS_ANCHOR_WAIT_SECONDS:.0f}s (run `shadowreplay replay start` first)"
            )
        await asyncio.sleep(1.0)
