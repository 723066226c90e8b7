"""The group's schedule: ``replay start``, and what each replayer process does about it.

``start_anchor`` computes an anchor (log time: ``--from``, else the smallest timestamp
the group has next; wall time: ``--at``, else now plus a lead) and sets it on the
control topic (see ``replayer/anchors.py``). ``GroupSchedule.open`` is what a replayer
process runs before it joins its group, per ``replayer.anchor``:

* ``auto`` (default): the anchor in force, if it was set by ``replay start`` or is a
  claim still in use; otherwise none yet, and the replayer claims one once its first
  records arrive (``GroupSchedule.claim``: the earliest claim wins, so every process
  of the group ends up on one anchor without a ``replay start``);
* ``bus``: the anchor in force (waiting up to ``BUS_ANCHOR_WAIT_SECONDS`` for one),
  never a claim of its own;
* ``local``: this process anchors itself and shares nothing.

A claim is stale, and replaced by the next claim, when under it even the most advanced
of the group's partitions has its next record due more than ``STALE_ANCHOR_SECONDS``
ago: the group that used it is gone (a replay of another day, say). A group still at
work keeps its claim, so a process that joins or restarts takes the running schedule.

Every read of the bus here uses ``Bus.reader``: none joins a consumer group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from shadowreplay.replayer.anchors import AnchorStore, GroupAnchor
from shadowreplay.replayer.schedule import STALE_ANCHOR_SECONDS, Anchor
from shadowreplay.replayer.window import parse_time, parse_window
from shadowreplay.contract.bus import read_to_end
from shadowreplay.contract.bus.base import Bus, Reader
from shadowreplay.contract.config import ReplayerConfig
from shadowreplay.contract.errors import ConfigError

log = logging.getLogger(__name__)

BUS_ANCHOR_WAIT_SECONDS = 30.0
BUS_ANCHOR_POLL_SECONDS = 1.0
# Records read per partition to find where the group stands (the smallest time among
# them anchors the schedule: records out of order a little are not late at the start).
PEEK_RECORDS = 200


@dataclass(frozen=True)
class Heads:
    """Where a group stands on a topic: over every partition's next records."""

    first_ts: int  # the smallest timestamp among them (what a new schedule anchors on)
    last_head_ts: int  # the latest partition's next record (how far the group has come)


def peek_heads(bus: Bus, topic: str, group: str, *, window_from: int | None = None,
               window_to: int | None = None, lateness_ns: int = 0) -> Heads | None:
    """The group's next records on ``topic`` (from its committed offsets, or from the
    window's start), read without joining the group: None when it has none."""
    seek = None if window_from is None else window_from - lateness_ns
    reader = bus.reader([topic], group=group, from_ns=seek)
    heads: dict[tuple[str, int], int] = {}
    counts: dict[tuple[str, int], int] = {}
    lowest: int | None = None
    try:
        for batch in read_to_end(reader):
            for m in batch:
                tp = (m.topic, m.partition)
                counts[tp] = counts.get(tp, 0) + 1
                ts = m.timestamp_ns
                if (window_from is not None and ts < window_from) or (window_to is not None and ts >= window_to):
                    continue
                heads.setdefault(tp, ts)
                lowest = ts if lowest is None else min(lowest, ts)
            ends = reader.ends()
            if all(counts.get(tp, 0) >= PEEK_RECORDS for tp in ends):
                break  # enough of every partition: where each stands is known
    finally:
        reader.close()
    if lowest is None:
        return None
    return Heads(first_ts=lowest, last_head_ts=max(heads.values()))


def start_anchor(
    bus: Bus,
    requests_topic: str,
    cfg: ReplayerConfig,
    *,
    at: str = "",
    lead_seconds: float | None = None,
) -> Anchor:
    """Compute the group's anchor, set it on the control topic and return it."""
    now = time.time_ns()
    window_from, window_to = parse_window(cfg.window_from, cfg.window_to, now)
    log_t0 = window_from
    if log_t0 is None:
        heads = peek_heads(bus, requests_topic, cfg.group, window_to=window_to)
        if heads is None:
            raise ConfigError(
                f"replay start: topic {requests_topic!r} has nothing for group {cfg.group!r} to anchor on; "
                "give --from TIME"
            )
        log_t0 = heads.first_ts
    lead = cfg.lead_seconds if lead_seconds is None else lead_seconds
    wall_t0 = parse_time(at, "--at", time.time_ns()) if at else time.time_ns() + int(lead * 1e9)
    anchor = _anchor(cfg, log_t0, wall_t0)
    AnchorStore(bus, cfg.control_topic).publish(cfg.group, anchor, rate=cfg.rate, from_ns=window_from)
    log.info("anchor for group %s set on %s: %s", cfg.group, cfg.control_topic, anchor)
    return anchor


def ensure_anchor(bus: Bus, requests_topic: str, cfg: ReplayerConfig, *, lead_seconds: float) -> Anchor | None:
    """Before starting processes of ``cfg.group`` (``replay --workers``): the anchor in
    force if it is still in use, else a claim ``lead_seconds`` ahead (time for them to
    join) on the group's next records (or the window's start). None when the group has
    nothing to replay yet: then its first process to get records claims one."""
    store = AnchorStore(bus, cfg.control_topic)
    current = store.current(cfg.group)
    heads = _heads(bus, cfg, requests_topic)
    if current is not None and not _stale(current, heads):
        return current.anchor
    window_from, _ = parse_window(cfg.window_from, cfg.window_to)
    first = window_from if heads is None else heads.first_ts
    if first is None:
        return None
    candidate = _anchor(cfg, first, time.time_ns() + int(lead_seconds * 1e9))
    won = store.claim(cfg.group, candidate, replaces=None if current is None else current.offset, rate=cfg.rate)
    log.info("group %s's anchor on %s: %s", cfg.group, cfg.control_topic, won.anchor)
    return won.anchor


def clear_anchor(bus: Bus, cfg: ReplayerConfig) -> None:
    """Withdraw the group's anchor: its replayers claim a new one (auto)."""
    AnchorStore(bus, cfg.control_topic).publish(cfg.group, None)


def _anchor(cfg: ReplayerConfig, log_t0: int, wall_t0: int) -> Anchor:
    follow = int(cfg.follow_delay_seconds * 1e9) if cfg.follow else None
    return Anchor(log_t0, wall_t0, cfg.speed if cfg.speed > 0 else 1.0, follow)


class GroupSchedule:
    """One replayer process's view of its group's schedule (see the module docstring).

    ``anchor`` is the anchor to start with (None: not known yet; the replayer claims or
    makes one once its first records arrive), ``window_from_ns`` the start of the window
    an explicit anchor set (``replay start --from``)."""

    def __init__(self, bus: Bus, cfg: ReplayerConfig, requests_topic: str, store: AnchorStore | None,
                 start: GroupAnchor | None) -> None:
        self._bus = bus
        self._cfg = cfg
        self._topic = requests_topic
        self._store = store
        self.anchor: Anchor | None = None if start is None else start.anchor
        self.window_from_ns: int | None = None if start is None else start.from_ns

    @property
    def claims(self) -> bool:
        """Whether this process may claim the group's anchor (``auto``)."""
        return self._store is not None and self._cfg.anchor == "auto"

    @classmethod
    async def open(cls, bus: Bus, cfg: ReplayerConfig, requests_topic: str) -> GroupSchedule:
        if cfg.anchor == "local":
            return cls(bus, cfg, requests_topic, None, None)
        store = await asyncio.to_thread(AnchorStore, bus, cfg.control_topic)
        deadline = time.monotonic() + BUS_ANCHOR_WAIT_SECONDS
        while True:
            current = await asyncio.to_thread(store.current, cfg.group)
            if current is not None and (current.explicit or cfg.anchor == "bus"):
                break
            if current is not None:  # auto, a claim: still in use?
                heads = await asyncio.to_thread(_heads, bus, cfg, requests_topic)
                if not _stale(current, heads):
                    break
                log.info("group %s's anchor on %s (claimed %s) is stale: its next records are long overdue "
                         "under it; the first records replayed now claim a new one",
                         cfg.group, cfg.control_topic, _ago(current.set_at_ns))
                current = None
            if cfg.anchor == "auto":
                log.info("no anchor in force for group %s on %s: the first records replayed claim one",
                         cfg.group, cfg.control_topic)
                return cls(bus, cfg, requests_topic, store, None)
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"replayer.anchor = bus: no anchor for group {cfg.group!r} on {cfg.control_topic!r} "
                    f"after {BUS_ANCHOR_WAIT_SECONDS:.0f}s (run `shadowreplay replay start` first)"
                )
            await asyncio.sleep(BUS_ANCHOR_POLL_SECONDS)
        _check_speed(current.anchor, cfg)
        log.info("using group %s's anchor from %s (%s %s): %s", cfg.group, cfg.control_topic,
                 "set by replay start" if current.explicit else "claimed by a replayer", _ago(current.set_at_ns),
                 current.anchor)
        return cls(bus, cfg, requests_topic, store, current)

    async def claim(self, local_first_ts: int) -> Anchor:
        """The group's anchor once this process has its first records (``claims`` only):
        the one in force if still in use, else a new claim, anchored on the earliest of
        the group's next records and this process's first ones, ``lead_seconds`` from now."""
        assert self._store is not None
        return await asyncio.to_thread(self._claim, self._store, local_first_ts)

    def _claim(self, store: AnchorStore, local_first_ts: int) -> Anchor:
        cfg = self._cfg
        current = store.current(cfg.group)
        heads = _heads(self._bus, cfg, self._topic)
        if current is not None and (current.explicit or not _stale(current, heads)):
            how = "set by replay start" if current.explicit else "claimed by another replayer"
            log.info("using group %s's anchor (%s %s): %s", cfg.group, how, _ago(current.set_at_ns), current.anchor)
            _check_speed(current.anchor, cfg)
            return current.anchor
        first = local_first_ts if heads is None else min(local_first_ts, heads.first_ts)
        candidate = _anchor(cfg, first, time.time_ns() + int(cfg.lead_seconds * 1e9))
        won = store.claim(cfg.group, candidate, replaces=None if current is None else current.offset, rate=cfg.rate)
        if won.anchor == candidate:
            log.info("claimed group %s's anchor on %s: %s", cfg.group, cfg.control_topic, candidate)
        else:
            log.info("another replayer claimed group %s's anchor first; using it: %s", cfg.group, won.anchor)
            _check_speed(won.anchor, cfg)
        return won.anchor

    def timeline(self, from_ns: int) -> Reader:
        """A reader of every partition of the requests topic from ``from_ns`` (the gap
        cutter reads the whole group's timestamps through it)."""
        return self._bus.reader([self._topic], from_ns=from_ns)


def _heads(bus: Bus, cfg: ReplayerConfig, topic: str) -> Heads | None:
    lo, hi = parse_window(cfg.window_from, cfg.window_to)
    return peek_heads(bus, topic, cfg.group, window_from=lo, window_to=hi,
                      lateness_ns=int(cfg.lateness_seconds * 1e9))


def _stale(current: GroupAnchor, heads: Heads | None) -> bool:
    if current.explicit or heads is None:
        return False
    return current.anchor.due_ns(heads.last_head_ts) < time.time_ns() - int(STALE_ANCHOR_SECONDS * 1e9)


def _check_speed(anchor: Anchor, cfg: ReplayerConfig) -> None:
    if anchor.speed != (cfg.speed if cfg.speed > 0 else 1.0):
        log.warning("the group's anchor has speed %s, this process was given %s: the anchor wins",
                    anchor.speed, cfg.speed)


def _ago(ns: int) -> str:
    seconds = max(0.0, (time.time_ns() - ns) / 1e9)
    return f"{seconds:.0f}s ago" if seconds < 7200 else f"{seconds / 3600:.1f}h ago"
