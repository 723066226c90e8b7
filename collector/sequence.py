"""The ingest sequence: each record leaves the collector stamped with ``seq``, the
collector's ingest clock, so records whose logged times are equal keep the order they
were logged in (the replayer sends equal times in ``seq`` order, see RequestRecord.seq).

The clock is ``time.time_ns()`` made strictly increasing: within one collector it is the
order records were decoded in (per connection, the order they were sent); across
collectors it is as good as their clocks agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

BusItem = tuple[bytes, bytes, int]


class IngestClock:
    """Strictly increasing nanoseconds since the epoch."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now = time.time_ns()
        self._last = now if now > self._last else self._last + 1
        return self._last


ToBus = Callable[[str, int, dict[Any, Any], bytes, int], BusItem]


def stamping(to_bus: ToBus, clock: IngestClock) -> ToBus:
    """``to_bus`` whose encoded record also carries ``"seq"``. The encoding is a JSON
    object (orjson output, no trailing space): the field is spliced in before its
    closing brace instead of encoding the record again. The splice also leaves each
    value in a bytes object of its own size: orjson's output keeps a 4 KiB allocation
    however short it is, which would make a batch of small records take many times the
    memory the collector's budget counts."""
    tick = clock.next

    def stamped(tag: str, time_ns: int, rec: dict[Any, Any], frame: bytes, index: int) -> BusItem:
        key, value, ts = to_bus(tag, time_ns, rec, frame, index)
        return key, b'%s,"seq":%d}' % (value[:-1], tick()), ts

    return stamped
