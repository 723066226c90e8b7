"""Helpers for tests that check timing (pacing, lag) inside the pytest process."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from shadowreplay.runtime import tune_gc


@contextlib.contextmanager
def production_gc() -> Iterator[None]:
    """Run the block under the garbage-collector settings of the long-running commands
    (``shadowreplay.runtime.tune_gc``), then restore the defaults. The pytest process
    holds a large heap (hypothesis, every imported test module); with the default
    thresholds a full collection of it can stall the event loop for tens of milliseconds
    in the middle of a timed replay, which a ``shadowreplay replay`` process does not see."""
    before = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
