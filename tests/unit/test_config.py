"""Config: strict keys, typed values, flags override the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowreplay.contract import config as configmod
from shadowreplay.commands.config import EXAMPLE_CONFIG
from shadowreplay.cli import build_parser
from shadowreplay.commands.common import config_from_args
from shadowreplay.contract.config import Config
from shadowreplay.contract.errors import ConfigError


def test_example_config_is_valid_and_matches_defaults() -> None:
    cfg = configmod.load(EXAMPLE_CONFIG)
    assert cfg == Config()


@pytest.mark.parametrize(
    "text, key",
    [
        ("[bus]\nurll = 'x'\n", "bus.urll"),
        ("[nope]\n", "nope"),
        ("[collector.fields]\nmethodd = 'm'\n", "collector.fields.methodd"),
        ("[replayer]\nspeed = 'fast'\n", "replayer.speed"),
        ("[replayer]\nspeed = 0\n", "replayer.speed"),
        ("[replayer]\nmethods = 'GET'\n", "replayer.methods"),
        ("[replayer]\nconcurrency = true\n", "replayer.concurrency"),
        ("[bus]\nurl = 'redis://x'\n", "bus.url"),
        ("[collector]\nlisten = 'nowhere'\n", "collector.listen"),
        ("[replayer]\ncandidate = 'ftp://x'\n", "replayer.candidate"),
        ("[replayer]\ncandidate = 'http://'\n", "replayer.candidate"),
        ("[replayer]\nbaseline = 'http://[::1'\n", "replayer.baseline"),
        ("[replayer]\nhttp_client = 'curl'\n", "replayer.http_client"),
        ("[replayer]\nhttp_client = 'aiohttp'\n", "replayer.http_client"),
        ("[replayer.streams]\nwindow_seconds = 0\n", "replayer.streams.window_seconds"),
        ("[replayer.streams]\nchunked_after_seconds = -1\n", "replayer.streams.chunked_after_seconds"),
        ("[replayer.streams]\nwindow_bytes = 99999999\n", "replayer.streams.window_bytes"),
        ("[[replayer.streams.endpoints]]\nmethod = 'GET'\n", "replayer.streams.endpoints[0].path"),
        ("[[replayer.streams.endpoints]]\npath = '(('\n", "replayer.streams.endpoints[0].path"),
        ("[[replayer.streams.endpoints]]\npath = '/x'\nwindow_bytes = -1\n", "replayer.streams.endpoints[0].window_bytes"),
        ("[[replayer.streams.endpoints]]\npath = '/x'\nwindw_seconds = 1\n", "replayer.streams.endpoints[0].windw_seconds"),
        ("[collector.redact]\nkeep_headers = ['X-Unknown']\n", "collector.redact.keep_headers[0]"),
        ("[collector.redact]\nextra_body_fields = [' pin']\n", "collector.redact.extra_body_fields[0]"),
        ("[collector.redact]\nkeep_query_params = ['token', 'nope']\n", "collector.redact.keep_query_params[1]"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        configmod.load(f)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        configmod.load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[bus\n")
    with pytest.raises(ConfigError, match="TOML"):
        configmod.load(bad)


def test_flags_override_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[replayer]\ncandidate = 'http://127.0.0.1:1'\nspeed = 2.0\n[bus]\nurl = 'sqlite:///a.db'\n")
    args = build_parser().parse_args(
        ["replay", "--config", str(f), "--speed", "5", "--bus", "kafka://127.0.0.1:9092", "--group", "g2"]
    )
    cfg = config_from_args(args)
    assert cfg.replayer.speed == 5.0
    assert cfg.replayer.candidate == "http://127.0.0.1:1"
    assert cfg.replayer.group == "g2"
    assert cfg.bus.url == "kafka://127.0.0.1:9092"


def test_bad_flag_value_is_rejected() -> None:
    args = build_parser().parse_args(["replay", "--candidate", "http://127.0.0.1:1", "--speed", "-1"])
    with pytest.raises(ConfigError, match="replayer.speed"):
        config_from_args(args)


def test_redaction_lists_extend_and_shrink_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        "[collector.redact]\nextra_headers = ['X-Internal-Key']\nkeep_headers = ['cookie']\n"
        "keep_query_params = ['sig']\nextra_body_fields = ['pin']\n"
    )
    r = configmod.load(f).collector.redact
    headers = r.effective("headers")
    assert "x-internal-key" in headers and "cookie" not in headers and "authorization" in headers
    assert "sig" not in r.effective("query_params") and "x-amz-signature" in r.effective("query_params")
    assert {"pin", "password"} <= r.effective("body_fields")


@pytest.mark.parametrize(
    "kind, name, refused",
    [
        ("set_header", "Host", True),
        ("set_header", "x-forwarded-for", True),
        ("set_header", "Connection", True),
        ("set_header", "Proxy-Authorization", True),
        ("remove_header", "Host", True),
        ("set_header", "X-Env", False),
        ("remove_header", "Cookie", False),
        ("remove_header", "Connection", False),  # dropped anyway: the rule holds
    ],
)
def test_a_rule_on_a_header_the_replayer_manages_is_refused(tmp_path: Path, kind: str, name: str,
                                                            refused: bool) -> None:
    """set_header Host was silently ignored (the replayer sends the target's Host)."""
    f = tmp_path / "c.toml"
    f.write_text(f"[[replayer.rules]]\nkind = '{kind}'\nname = '{name}'\nvalue = 'v'\n")
    if refused:
        with pytest.raises(ConfigError, match=r"replayer\.rules\[0\]: " + kind + " .*cannot take effect"):
            configmod.load(f)
    else:
        configmod.load(f)


def test_config_check_refuses_set_header_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shadowreplay.cli import main

    f = tmp_path / "c.toml"
    f.write_text("[[replayer.rules]]\nkind = 'set_header'\nname = 'Host'\nvalue = 'staging.example.com'\n")
    assert main(["config", "check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "set_header 'Host' cannot take effect" in err and "keep_host" in err


def test_lateness_has_a_default_of_minutes_and_must_not_be_negative(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[replayer]\nlateness_seconds = -1\n")
    with pytest.raises(ConfigError, match=r"replayer\.lateness_seconds"):
        configmod.load(f)
    assert configmod.Config().replayer.lateness_seconds == 300.0
