"""--from / --to parsing."""

from __future__ import annotations

import pytest

from shadowreplay.replayer.window import parse_time, parse_window
from shadowreplay.contract.errors import ConfigError

NOW = 1_800_000_000_000_000_000
S = 10**9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-1h", NOW - 3600 * S),
        ("-1h30m", NOW - 5400 * S),
        ("-90s", NOW - 90 * S),
        ("-250ms", NOW - 250_000_000),
        ("+10m", NOW + 600 * S),
        ("-1.5d", NOW - 129_600 * S),
        ("1700000000", 1_700_000_000 * S),
        ("1700000000.123456789", 1_700_000_000_123_456_789),
        ("2023-11-14T22:13:20Z", 1_700_000_000 * S),
        ("2023-11-14T23:13:20.5+01:00", 1_700_000_000 * S + S // 2),
        ("2023-11-14 22:13:20", 1_700_000_000 * S),  # naive: UTC
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, "k", now_ns=NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "-1y", "1h", "--1h"])
def test_bad_times_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match="replayer.window_from"):
        parse_time(text, "replayer.window_from", now_ns=NOW)


def test_window_order() -> None:
    assert parse_window("", "", NOW) == (None, None)
    assert parse_window("-2h", "-1h", NOW) == (NOW - 7200 * S, NOW - 3600 * S)
    with pytest.raises(ConfigError, match="window_to"):
        parse_window("-1h", "-2h", NOW)
