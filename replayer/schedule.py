"""When each record is due: recorded gaps divided by the speed, from one (log, wall) anchor.

Pure arithmetic, no asyncio. Every due time is computed from the anchor, never by
adding up sleeps, so error does not accumulate over a long replay. Wall time is
``time.time_ns()`` so several replayer processes given the same anchor agree.

Two layers:

* ``Anchor`` maps a log time to a wall time (speed, and optionally ``follow``: once the
  replay has caught up with the present, it follows real time ``follow_delay`` behind).
  It is a pure function of its fields, which is what several processes share.
* ``Pacer`` is applied in dispatch order on top of it: ``--rate`` (open model: request
  i is due ``i / rate`` after the previous pacing base, never earlier than the speed
  schedule allows) and ``--max-gap-seconds`` (an idle gap longer than the cap is cut to
  the cap; the cut shifts every later due time by the same amount).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shadowreplay.errors import ConfigError

# A timer that fires earlier than this before the due time is slept on again.
EARLY_TOLERANCE_NS = 200_000
# Default head start given to a replay anchored "now", so the first records are not late.
DEFAULT_LEAD_SECONDS = 0.05


@dataclass(frozen=True)
class Anchor:
    """Log time ``log_t0_ns`` is replayed at wall time ``wall_t0_ns``; gaps shrink by ``speed``.

    ``follow_delay_ns`` (optional, speed > 1): once the
    speed schedule reaches the present minus that delay, a record logged at ``ts`` is due
    at ``ts + follow_delay_ns`` (live replay follows real time).
    """

    log_t0_ns: int
    wall_t0_ns: int
    speed: float
    follow_delay_ns: int | None = None

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ConfigError(f"replayer.speed: must be > 0, got {self.speed!r}")
        # speed is a float; its exact integer ratio keeps the arithmetic in integers
        # (no float rounding however far the record is from the anchor).
        object.__setattr__(self, "_ratio", float(self.speed).as_integer_ratio())
        if self.follow_delay_ns is not None and self.follow_delay_ns < 0:
            raise ConfigError("replayer.follow_delay_seconds: must be >= 0")

    def due_ns(self, ts_ns: int) -> int:
        """The wall time (ns since epoch) at which the record logged at ``ts_ns`` is due."""
        num, den = self._ratio  # type: ignore[attr-defined]
        delta = ts_ns - self.log_t0_ns
        due = self.wall_t0_ns + (2 * delta * den + num) // (2 * num)
        if self.follow_delay_ns is not None and self.speed > 1:
            live = ts_ns + self.follow_delay_ns
            if live > due:  # the speed schedule has caught up with the present
                return live
        return due

    def to_wire(self) -> dict[str, object]:
        return {
            "log_t0": self.log_t0_ns,
            "wall_t0": self.wall_t0_ns,
            "speed": self.speed,
            "follow_delay": self.follow_delay_ns,
        }

    @classmethod
    def from_wire(cls, obj: dict[str, object]) -> Anchor:
        try:
            follow = obj.get("follow_delay")
            return cls(
                log_t0_ns=int(obj["log_t0"]),  # type: ignore[call-overload]
                wall_t0_ns=int(obj["wall_t0"]),  # type: ignore[call-overload]
                speed=float(obj["speed"]),  # type: ignore[arg-type]
                follow_delay_ns=None if follow is None else int(follow),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed anchor {obj!r}: {exc}") from exc

    @classmethod
    def starting_now(
        cls,
        first_ts_ns: int,
        speed: float,
        lead_seconds: float = DEFAULT_LEAD_SECONDS,
        now_ns: int | None = None,
        follow_delay_ns: int | None = None,
    ) -> Anchor:
        """Anchor the record logged at ``first_ts_ns`` to ``lead_seconds`` from now."""
        now = time.time_ns() if now_ns is None else now_ns
        return cls(
            log_t0_ns=first_ts_ns,
            wall_t0_ns=now + int(lead_seconds * 1e9),
            speed=speed,
            follow_delay_ns=follow_delay_ns,
        )


class Pacer:
    """Rate pacing and gap capping, applied to speed-schedule due times in dispatch order.

    ``peek(base)`` says when the next record (whose speed-schedule due time is ``base``)
    is due without changing anything; ``take(base)`` says the same and advances. With
    neither a rate nor a gap cap both return ``base``. ``ceiling=False`` (a rate without
    a speed): the speed schedule only orders the records, the rate alone times them.
    """

    def __init__(
        self,
        *,
        rate: float = 0.0,
        max_gap_ns: int = 0,
        rate_t0_ns: int | None = None,
        ceiling: bool = True,
    ) -> None:
        if not ceiling and rate <= 0:
            raise ConfigError("replayer.speed: 0 (no speed ceiling) needs a rate")
        if rate < 0:
            raise ConfigError("replayer.rate: must be >= 0")
        if max_gap_ns < 0:
            raise ConfigError("replayer.max_gap_seconds: must be >= 0")
        self.rate = rate
        self.max_gap_ns = max_gap_ns
        self.ceiling = ceiling
        self.shift_ns = 0  # total idle time cut so far
        self._last_due: int | None = None
        # Rate pacing: the k-th record after the base is due at base + k / rate (absolute).
        self._rate_base: int | None = rate_t0_ns
        self._rate_count = 0

    def _compute(self, base_ns: int) -> tuple[int, int, int | None, int]:
        """(due, shift, rate base, rate count of the record after this one)."""
        shift = self.shift_ns
        if not self.ceiling:
            first = base_ns if self._rate_base is None else self._rate_base
            count = self._rate_count
            return first + round(count * 1e9 / self.rate), shift, first, count + 1
        due = base_ns - shift
        if self.max_gap_ns and self._last_due is not None and due - self._last_due > self.max_gap_ns:
            cut = due - self._last_due - self.max_gap_ns
            shift += cut
            due -= cut
        rate_base, count = self._rate_base, self._rate_count
        if self.rate > 0:
            paced = due if rate_base is None else rate_base + round(count * 1e9 / self.rate)
            if rate_base is None or paced < due:
                # the first record, or the speed ceiling binds: pacing restarts from here
                rate_base, count, paced = due, 0, due
            due = paced
            count += 1
        return due, shift, rate_base, count

    @property
    def trivial(self) -> bool:
        """Neither a rate nor a gap cap: every due time is the speed schedule's."""
        return self.rate <= 0 and not self.max_gap_ns

    def peek(self, base_ns: int) -> int:
        return self._compute(base_ns)[0]

    def take(self, base_ns: int) -> int:
        due, self.shift_ns, self._rate_base, self._rate_count = self._compute(base_ns)
        self._last_due = due
        return due
