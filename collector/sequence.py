"""The ingest sequence: each record leaves the collector stamped with ``seq``, the
collector's ingest clock (``make_format(seq=IngestClock().next)``), so records whose
logged times are equal keep the order they were logged in (the replayer sends equal
times in ``seq`` order, see RequestRecord.seq).

The clock is ``time.time_ns()`` made strictly increasing: within one collector it is the
order records were decoded in (per connection, the order they were sent); across
collectors it is as good as their clocks agree.
"""

from __future__ import annotations

import time


class IngestClock:
    """Strictly increasing nanoseconds since the epoch."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now = time.time_ns()
        self._last = now if now > self._last else self._last + 1
        return self._last
