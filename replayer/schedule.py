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
  schedule allows).

``--max-gap-seconds`` is not a per-process matter: the cuts come from the whole group's
log (``replayer/gaps.py``) and enter here as the ``shift_ns`` of ``Anchor.due_ns``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shadowreplay.contract.errors import ConfigError

# A timer that fires earlier than this before the due time is slept on again.
EARLY_TOLERANCE_NS = 200_000
# Default head start given to a replay anchored "now", so the first records are not late.
DEFAULT_LEAD_SECONDS = 0.05
# Under an anchor, a first record due this long ago means the anchor is left over from
# an earlier replay (a claimed one is then replaced; see replayer/control.py).
STALE_ANCHOR_SECONDS = 60.0


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

    def due_ns(self, ts_ns: int, shift_ns: int = 0) -> int:
        """The wall time (ns since epoch) at which the record logged at ``ts_ns`` is due;
        ``shift_ns``: idle time cut from the schedule before it (``--max-gap-seconds``)."""
        due = self.wall_t0_ns + self.wall_delta_ns(ts_ns - self.log_t0_ns) - shift_ns
        if self.follow_delay_ns is not None and self.speed > 1:
            live = ts_ns + self.follow_delay_ns
            if live > due:  # the speed schedule has caught up with the present
                return live
        return due

    def wall_delta_ns(self, log_delta_ns: int) -> int:
        """How long ``log_delta_ns`` of log takes to replay (rounded to the ns, exactly)."""
        num, den = self._ratio  # type: ignore[attr-defined]
        return (2 * log_delta_ns * den + num) // (2 * num)

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
    """Rate pacing, applied to speed-schedule due times in dispatch order.

    ``peek(base)`` says when the next record (whose speed-schedule due time is ``base``)
    is due without changing anything; ``take(base)`` says the same and advances. Without
    a rate both return ``base``. ``ceiling=False`` (a rate without a speed): the speed
    schedule only orders the records, the rate alone times them.
    """

    def __init__(
        self,
        *,
        rate: float = 0.0,
        rate_t0_ns: int | None = None,
        ceiling: bool = True,
    ) -> None:
        if not ceiling and rate <= 0:
            raise ConfigError("replayer.speed: 0 (no speed ceiling) needs a rate")
        if rate < 0:
            raise ConfigError("replayer.rate: must be >= 0")
        self.rate = rate
        self.ceiling = ceiling
        # Rate pacing: the k-th record after the base is due at base + k / rate (absolute).
        self._rate_base: int | None = rate_t0_ns
        self._rate_count = 0

    def _compute(self, base_ns: int) -> tuple[int, int | None, int]:
        """(due, rate base, rate count of the record after this one)."""
        if not self.ceiling:
            first = base_ns if self._rate_base is None else self._rate_base
            count = self._rate_count
            return first + round(count * 1e9 / self.rate), first, count + 1
        due = base_ns
        rate_base, count = self._rate_base, self._rate_count
        if self.rate > 0:
            paced = due if rate_base is None else rate_base + round(count * 1e9 / self.rate)
            if rate_base is None or paced < due:
                # the first record, or the speed ceiling binds: pacing restarts from here
                rate_base, count, paced = due, 0, due
            due = paced
            count += 1
        return due, rate_base, count

    @property
    def trivial(self) -> bool:
        """No rate: every due time is the speed schedule's."""
        return self.rate <= 0

    def peek(self, base_ns: int) -> int:
        return self._compute(base_ns)[0]

    def take(self, base_ns: int) -> int:
        due, self._rate_base, self._rate_count = self._compute(base_ns)
        return due
