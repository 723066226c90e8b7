"""Process-wide settings for the long-running stages (``run``, ``collect``, ``replay``,
``compare``, ``demo``).

Each request or event allocates a few dozen short-lived containers (aiohttp's request
and response objects, records, results); with CPython's default collector thresholds a
young-generation collection then runs every ten or so requests and a full one, which
walks every object the process holds (imported modules, aiohttp, kafka-python), every
few thousand. ``tune_gc`` moves what start-up created out of the collector's sight
(``gc.freeze``) and collects the young generation ten times less often. Cycles are
still collected; memory grows by at most a few thousand young objects. Measured with
bench/replayer.py: about 10 % less CPU per replayed request.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # CPython's default is 700


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
