"""``--max-gap-seconds`` on the group's schedule: the idle gaps of the whole log, cut.

A gap is a stretch of log time in which no partition of the topic has a record. One
replayer process sees only its own partitions, so a gap in its records may be busy
time in another's; cutting it there sent that process's records early on the group's
schedule. So every process reads the timestamps of every partition (``Bus.reader``,
no group) and computes the same cuts from the same log:

* the points of the schedule are the anchor's log time and every record's time from
  there on (before the window's end, if any);
* a gap between consecutive points longer than ``max_gap`` (in replay time, i.e. log
  time / speed) is cut to ``max_gap``; every record after it is due that much sooner
  (``Anchor.due_ns(ts, shift)``).

Records may be out of time order by up to the lateness, so a stretch of log time is
settled only once every partition has been read past its end plus the lateness (or to
its current end). Times are kept per bucket (the smallest and largest time seen in each
``max_gap``-wide bucket): no gap longer than ``max_gap`` fits inside one bucket, so the
gaps between buckets are all there is to cut, with bounded memory. Pure code.

At the live edge a record that arrives later than the lateness, in a stretch already
settled, can no longer change a cut; two processes that settled the stretch at different
moments could then disagree. Replays of recorded logs are settled by what is stored.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from shadowreplay.replayer.schedule import Anchor

TP = tuple[str, int]
_INF = float("inf")


class Timeline:
    """The cuts of one anchor's schedule, learned as the log is read (see module docstring)."""

    def __init__(self, anchor: Anchor, max_gap_ns: int, lateness_ns: int, until_ns: int | None = None) -> None:
        if max_gap_ns <= 0:
            raise ValueError("max_gap_ns must be > 0")
        self._anchor = anchor
        self._max_gap_ns = max_gap_ns
        # The longest log stretch that replays within max_gap: the bucket width.
        self._width = max(1, int(max_gap_ns * anchor.speed))
        self._lateness = lateness_ns
        self._until = until_ns
        self._t0 = anchor.log_t0_ns
        self._buckets: dict[int, list[int]] = {}  # bucket -> [smallest, largest time]
        self._settled = 0  # buckets below this index are settled
        self._last_point = anchor.log_t0_ns  # the latest point of the settled buckets
        self._cut_at: list[int] = []  # log time of each cut's first record, increasing
        self._shift_after: list[int] = []  # total cut up to and including that cut (wall ns)
        self._seen: dict[TP, int] = {}  # largest time read per partition
        self.horizon: float = anchor.log_t0_ns  # every cut before this log time is known

    def add(self, partition: TP, ts: int) -> None:
        """A record at ``ts`` was read from ``partition``."""
        if ts > self._seen.get(partition, -1):
            self._seen[partition] = ts
        if ts < self._t0 or (self._until is not None and ts >= self._until):
            return
        k = (ts - self._t0) // self._width
        if k < self._settled:
            return  # later than the lateness, in a stretch already settled (see module docstring)
        bucket = self._buckets.get(k)
        if bucket is None:
            self._buckets[k] = [ts, ts]
        elif ts < bucket[0]:
            bucket[0] = ts
        elif ts > bucket[1]:
            bucket[1] = ts

    def settle(self, partitions: Iterable[TP], caught_up: Iterable[TP]) -> None:
        """Settle what can be: every partition of ``partitions`` has been read up to its
        largest time seen minus the lateness, those of ``caught_up`` to their end."""
        ends = set(caught_up)
        watermark: float = _INF
        for tp in partitions:
            if tp in ends:
                continue
            seen = self._seen.get(tp)
            if seen is None:
                watermark = -_INF  # nothing read from it yet: anything may come
                break
            watermark = min(watermark, seen - self._lateness)
        if watermark == _INF:
            upto = (max(self._buckets) + 1) if self._buckets else self._settled
        elif watermark <= self._t0:
            return
        else:
            upto = int((watermark - self._t0) // self._width)
        if upto > self._settled:
            for k in sorted(b for b in self._buckets if b < upto):
                low, high = self._buckets.pop(k)
                self._point(low, high)
            self._settled = upto
        self.horizon = _INF if watermark == _INF else self._t0 + self._settled * self._width

    def _point(self, low: int, high: int) -> None:
        gap = self._anchor.wall_delta_ns(low - self._last_point)
        if gap > self._max_gap_ns:
            total = (self._shift_after[-1] if self._shift_after else 0) + gap - self._max_gap_ns
            self._cut_at.append(low)
            self._shift_after.append(total)
        self._last_point = max(self._last_point, high)

    def shift(self, ts: int) -> int | None:
        """Wall ns cut from the schedule before the record at ``ts``; None while the
        stretch up to ``ts`` is not settled."""
        if ts >= self.horizon:
            return None
        i = bisect.bisect_right(self._cut_at, ts)
        return self._shift_after[i - 1] if i else 0
