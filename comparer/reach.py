"""Targets that cannot be reached: "not compared", logged once when it starts and once
when it ends, with the time window to replay again.

A response whose error is one of ``shadowreplay.comparer.diff.UNREACHED_KINDS`` (connection refused
or failed, DNS, TLS, or the replayer's own client) never reached the application, so
the result says nothing about the release. The comparer counts it as not compared
(``shadow_compare_not_compared_total{target,reason}``) and :class:`ReachWatch` keeps,
per target, whether it is down now, since when, and the span of log times of the
requests that went unanswered — what to replay again once it is back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from shadowreplay.comparer.diff import unreached
from shadowreplay.comparer.endpoints import OVERFLOW
from shadowreplay.contract.config import TARGET_NAMES
from shadowreplay.contract.record import PROBE, ReplayResult

log = logging.getLogger(__name__)

#: Targets tracked by name (also the comparer's target labels); responses under any other
#: name are tracked as OVERFLOW ("other").
TARGETS = (*TARGET_NAMES, PROBE)


@dataclass
class Outage:
    reason: str
    since: float  # wall-clock seconds
    first_ts: int  # log times (ns) of the requests not answered
    last_ts: int
    results: int = 1

    def window(self) -> str:
        """``--from=… --to=…`` covering every request not answered (``--to`` is exclusive)."""
        return f"--from={_epoch(self.first_ts)} --to={_epoch(self.last_ts + 1)}"


def _epoch(ns: int) -> str:
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ReachWatch:
    """Per target: reached, or down since when and why. Not thread-safe (the comparer's loop)."""

    def __init__(self, group: str = "shadow-replayer") -> None:
        self._group = group
        self._down: dict[str, Outage] = {}

    def observe(self, result: ReplayResult) -> None:
        ts = result.request.ts
        for name, response in result.responses.items():
            target = name if name in TARGETS else OVERFLOW
            reason = unreached(response)
            outage = self._down.get(target)
            if reason is not None:
                if outage is None:
                    self._down[target] = Outage(reason, time.time(), ts, ts)
                    log.warning(
                        "%s not reached (%s): its results are not compared until it answers again "
                        "(counted in shadow_compare_not_compared_total)",
                        target, reason,
                    )
                else:
                    outage.results += 1
                    outage.first_ts = min(outage.first_ts, ts)
                    outage.last_ts = max(outage.last_ts, ts)
            elif outage is not None:
                del self._down[target]
                log.warning(
                    "%s answers again after %.0f s: %d results not compared (%s), requests logged from %s to %s. "
                    "To compare them, replay that window again with a new group: "
                    "shadowreplay replay --group %s-again %s ...",
                    target, time.time() - outage.since, outage.results, outage.reason,
                    _iso(outage.first_ts), _iso(outage.last_ts), self._group, outage.window(),
                )

    def down(self) -> dict[str, Outage]:
        """The targets not reached now."""
        return dict(self._down)
