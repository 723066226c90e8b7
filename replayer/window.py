"""``--from`` / ``--to`` values: ISO 8601 times, epoch seconds, ``now`` or durations
relative to now (``-1h``, ``-90s``, ``-1h30m``, ``+10m``). Pure code."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from shadowreplay.contract.errors import ConfigError

_UNITS = {"ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86_400 * 10**9}
_DURATION = re.compile(r"^([+-])((?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+)$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_time(value: str, key: str, now_ns: int | None = None) -> int:
    """Nanoseconds since the epoch for a window bound; ConfigError naming ``key`` if bad."""
    text = value.strip()
    now = time.time_ns() if now_ns is None else now_ns
    if text == "now":
        return now
    m = _DURATION.match(text)
    if m:
        total = sum(int(Decimal(n) * _UNITS[u]) for n, u in _PART.findall(m.group(2)))
        return now - total if m.group(1) == "-" else now + total
    if re.fullmatch(r"\d+(\.\d+)?", text):
        try:
            return int(Decimal(text) * 10**9)
        except InvalidOperation:  # pragma: no cover - the regex admits only decimals
            pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{key}: expected an ISO 8601 time, epoch seconds, 'now' or a duration like -1h, got {value!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def parse_window(window_from: str, window_to: str, now_ns: int | None = None) -> tuple[int | None, int | None]:
    """(from, to) in ns, None where not given; checks from < to."""
    now = time.time_ns() if now_ns is None else now_ns
    lo = parse_time(window_from, "replayer.window_from", now) if window_from else None
    hi = parse_time(window_to, "replayer.window_to", now) if window_to else None
    if lo is not None and hi is not None and hi <= lo:
        raise ConfigError("replayer.window_to: must be after window_from")
    return lo, hi
