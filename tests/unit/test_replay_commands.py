"""Replayer CLI surface: flags into config, --workers child command lines, validation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shadowreplay.workers import child_argv, part_of, worker_share
from shadowreplay.contract import config as configmod
from shadowreplay.cli import build_parser
from shadowreplay.commands.common import config_from_args
from shadowreplay.contract.config import ReplayerConfig
from shadowreplay.contract.errors import ConfigError


def _cfg(*argv: str) -> configmod.Config:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_replay_flags_reach_the_config() -> None:
    cfg = _cfg("replay", "--candidate", "http://c", "--secondary", "http://s", "--rate", "500",
               "--concurrency", "8", "--from=-1h", "--to", "now", "--follow", "--max-gap-seconds", "2",
               "--late-policy", "drop", "--anchor", "bus", "--methods", "get,post", "--insecure", "--workers", "3")
    r = cfg.replayer
    assert (r.secondary, r.rate, r.concurrency, r.window_from, r.window_to) == ("http://s", 500.0, 8, "-1h", "now")
    assert r.follow and r.max_gap_seconds == 2.0 and r.late_policy == "drop" and r.anchor == "bus"
    assert r.methods == ("GET", "POST") and r.workers == 3
    assert r.speed == 0.0  # --rate alone: no speed ceiling
    assert not r.targets.candidate.tls_verify and not r.targets.secondary.tls_verify
    assert _cfg("replay", "--candidate", "http://c", "--rate", "5", "--speed", "2").replayer.speed == 2.0


def test_replay_start_parses_without_a_candidate() -> None:
    args = build_parser().parse_args(["replay", "start", "--group", "g", "--speed", "3", "--from=-1h", "--at", "+5s"])
    cfg = config_from_args(args)
    assert args.replay_command == "start" and args.at == "+5s"
    assert (cfg.replayer.group, cfg.replayer.speed, cfg.replayer.window_from) == ("g", 3.0, "-1h")


def test_child_argv_gets_the_bus_anchor_its_share_and_its_metrics_flags() -> None:
    argv = ["--log-level", "INFO", "replay", "--candidate", "http://c", "--workers", "3", "--rate=900",
            "--metrics-listen", "127.0.0.1:9500", "--anchor", "auto"]
    child = child_argv(argv, 2, 3, ["--metrics-fd", "7"])
    assert child[:6] == ["--log-level", "INFO", "replay", "--candidate", "http://c", "--rate=900"]
    assert child[6:] == ["--workers", "1", "--anchor", "bus", "--worker", "2/3", "--metrics-fd", "7"]
    args = build_parser().parse_args(child)
    assert args.metrics_fd == 7
    r = config_from_args(args).replayer
    assert (r.rate, r.speed, r.workers, r.anchor) == (300.0, 0.0, 1, "bus")


def test_parts_add_up_to_the_total() -> None:
    for n in range(1, 6):
        for total in range(n, 40):
            parts = [part_of(total, i, n) for i in range(n)]
            assert sum(parts) == total and min(parts) >= 1 and max(parts) - min(parts) <= 1, (total, n, parts)


def test_each_worker_takes_its_share_of_rate_and_every_concurrency_cap(tmp_path: Path) -> None:
    # rate in the config file only, no --speed: a child keeps the speed ceiling (speed 1),
    # as --workers 1 would; it used to get "--rate R/N" on its command line, which read as
    # "--rate alone" and dropped the ceiling.
    toml = tmp_path / "r.toml"
    toml.write_text('[replayer]\ncandidate = "http://c"\nrate = 100.0\nconcurrency = 7\n'
                    "[replayer.targets.baseline]\nconcurrency = 3\n")
    shares = [_cfg("replay", "--config", str(toml), "--baseline", "http://b", "--worker", f"{i}/3").replayer
              for i in range(3)]
    assert [r.rate for r in shares] == pytest.approx([100 / 3] * 3)
    assert [r.speed for r in shares] == [1.0, 1.0, 1.0]
    assert [r.concurrency for r in shares] == [3, 2, 2]
    assert [r.targets.baseline.concurrency for r in shares] == [1, 1, 1]
    assert [r.targets.candidate.concurrency for r in shares] == [0, 0, 0]  # no override: still none
    with pytest.raises(ConfigError, match=r"replayer.targets.baseline.concurrency = 3 cannot be split over 4"):
        worker_share(_cfg("replay", "--config", str(toml)).replayer, "0/4")
    with pytest.raises(ConfigError, match=r"replayer.concurrency = 2 cannot be split over 3 workers"):
        _cfg("replay", "--candidate", "http://c", "--concurrency", "2", "--worker", "0/3")
    with pytest.raises(ConfigError, match="--worker: I/N"):
        _cfg("replay", "--candidate", "http://c", "--worker", "3/3")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"late_policy": "maybe"}, "late_policy"),
        ({"anchor": "x"}, "replayer.anchor"),
        ({"speed": 0.0}, "replayer.speed"),
        ({"rules": [{"kind": "nope"}]}, r"replayer.rules\[0\].kind"),
        ({"rules": [{"kind": "exclude_path", "pattern": "("}]}, r"replayer.rules\[0\].pattern"),
        ({"rules": [{"kind": "sample", "bogus": 1}]}, "bogus"),
        ({"secondary": "ftp://x"}, "replayer.secondary"),
        ({"targets": {"baseline": {"concurrency": -1}}}, "replayer.targets.baseline"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_replayer_config_names_the_key(raw: dict[str, object], message: str) -> None:
    from shadowreplay.app import check

    with pytest.raises(ConfigError, match=message):
        check(configmod.from_dict({"replayer": raw}), ("replay",))


def test_rules_and_targets_load_from_toml(tmp_path: object) -> None:
    cfg = configmod.from_dict({"replayer": {
        "rate": 10.0, "speed": 0.0,
        "rules": [{"kind": "sample", "percent": 5.0, "key": "query:uid"}, {"kind": "set_header", "name": "A", "value": "b"}],
        "targets": {"candidate": {"timeout_seconds": 2.0, "concurrency": 4, "tls_verify": False}},
    }})
    configmod.validate(cfg)
    assert [r.kind for r in cfg.replayer.rules] == ["sample", "set_header"]
    assert cfg.replayer.targets.candidate == configmod.TargetOptions(2.0, 4, False)


@pytest.mark.parametrize(
    ("argv", "expect_uvloop"),
    [
        (["replay", "--candidate", "http://c"], True),  # the default for replay, when installed
        (["replay", "--candidate", "http://c", "--no-uvloop"], False),
        (["run", "--candidate", "http://c"], False),  # run hosts every stage: opt-in only
        (["run", "--candidate", "http://c", "--uvloop"], True),
    ],
)
def test_uvloop_is_the_replay_default(argv: list[str], expect_uvloop: bool) -> None:
    import asyncio

    import uvloop

    from shadowreplay.commands.replay import use_uvloop_if_asked

    before = asyncio.get_event_loop_policy()
    try:
        asyncio.set_event_loop_policy(None)
        use_uvloop_if_asked(build_parser().parse_args(argv))
        assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy) is expect_uvloop
    finally:
        asyncio.set_event_loop_policy(before)


def test_follow_without_a_speed_above_one_is_explained(caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry

    from shadowreplay.replayer.loop import Replayer
    from shadowreplay.replayer.metrics import ReplayerMetrics

    caplog.set_level(logging.WARNING, logger="shadowreplay.replayer.loop")
    for speed, warned in ((1.0, True), (0.0, True), (2.0, False)):
        caplog.clear()
        cfg = ReplayerConfig(candidate="http://127.0.0.1:1", follow=True, speed=speed, rate=100.0)
        # the consumer and producer are only stored by the constructor
        Replayer(cfg, None, None, "results", ReplayerMetrics(CollectorRegistry()))  # type: ignore[arg-type]
        messages = [r.getMessage() for r in caplog.records if "follow has no effect" in r.getMessage()]
        assert bool(messages) is warned, (speed, messages)
        if warned:
            assert "--from now --at +1s" in messages[0]
