"""When each record is due: recorded gaps divided by the speed, from one (log, wall) anchor.

Pure arithmetic, no asyncio. Every due time is computed from the anchor, never by
adding up sleeps, so error does not accumulate over a long replay. Wall time is
``time.time_ns()`` so several replayer processes given the same anchor agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shadowreplay.errors import ConfigError

# A timer that fires earlier than this before the due time is slept on again.
EARLY_TOLERANCE_NS = 200_000
# A record dispatched more than this after its due time counts as late.
LATE_AFTER_NS = 10_000_000
# Default head start given to a replay anchored "now", so the first records are not late.
DEFAULT_LEAD_SECONDS = 0.05


@dataclass(frozen=True)
class Anchor:
    """Log time ``log_t0_ns`` is replayed at wall time ``wall_t0_ns``; gaps shrink by ``speed``."""

    log_t0_ns: int
    wall_t0_ns: int
    speed: float

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ConfigError(f"replayer.speed: must be > 0, got {self.speed!r}")

    def due_ns(self, ts_ns: int) -> int:
        """The wall time (ns since epoch) at which the record logged at ``ts_ns`` is due."""
        # speed is a float; its exact integer ratio keeps the arithmetic in integers
        # (no float rounding however far the record is from the anchor).
        num, den = float(self.speed).as_integer_ratio()
        delta = ts_ns - self.log_t0_ns
        return self.wall_t0_ns + (2 * delta * den + num) // (2 * num)

    @classmethod
    def starting_now(
        cls,
        first_ts_ns: int,
        speed: float,
        lead_seconds: float = DEFAULT_LEAD_SECONDS,
        now_ns: int | None = None,
    ) -> Anchor:
        """Anchor the record logged at ``first_ts_ns`` to ``lead_seconds`` from now."""
        now = time.time_ns() if now_ns is None else now_ns
        return cls(log_t0_ns=first_ts_ns, wall_t0_ns=now + int(lead_seconds * 1e9), speed=speed)


def remaining_ns(due_ns: int, now_ns: int | None = None) -> int:
    """Nanoseconds until ``due_ns`` (negative once it has passed)."""
    return due_ns - (time.time_ns() if now_ns is None else now_ns)


def is_late(due_ns: int, sent_ns: int) -> bool:
    """Whether a record sent at ``sent_ns`` missed its due time by more than the tolerance."""
    return sent_ns - due_ns > LATE_AFTER_NS
