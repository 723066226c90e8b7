"""The demo waits as long as its replay takes: any --speed N >= 1 finishes."""

from __future__ import annotations

import pytest

from shadowreplay.demo.run import DEMO_MARGIN_SECONDS, demo_timeout_seconds, load_sample, msec_to_ns, run_demo
from shadowreplay.contract.errors import ShadowError


def test_the_wait_scales_with_the_replay_length() -> None:
    lines = load_sample()
    times = [msec_to_ns(r["msec"]) for r in lines]
    span = (max(times) - min(times)) / 1e9
    assert span > 190, "the bundled sample spans about 200 s"
    for speed in (1.0, 1.5, 2.0, 10.0, 40.0, 1000.0):
        timeout = demo_timeout_seconds(lines, speed)
        assert timeout >= span / speed + DEMO_MARGIN_SECONDS, speed
    assert demo_timeout_seconds(lines, 1.0) > 200 + DEMO_MARGIN_SECONDS, "--speed 1 replays for 200 s"


async def test_a_speed_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ShadowError, match="--speed"):
        await run_demo(speed=0, keep_serving=False)
