"""`config check` refuses what start would refuse, naming the key, and nothing else."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from shadowreplay.contract import config as configmod
from shadowreplay.app import Pipeline
from shadowreplay.commands.config import EXAMPLE_CONFIG
from shadowreplay.cli import main
from shadowreplay.contract.errors import ConfigError

UNSET = "SHADOWREPLAY_TEST_NEVER_SET"

# (config text, the key the error names). {tmp} is a directory holding the files below.
REFUSED = [
    # collector: log format, field map, TLS, forward secrets
    ("[collector]\nformat = 'w3c'\n", "collector.format"),
    ("[collector]\nescapes = 'json'\n", "collector.escapes"),
    ("[collector.fields]\ntime_format = 'unix'\n", "collector.fields.time_format"),
    ("[collector.fields]\nheaders = ['User-Agent']\n", "collector.fields.headers[0]"),
    ("[collector.tls]\ncert_file = '{tmp}/not-a-cert.pem'\nkey_file = '{tmp}/not-a-cert.pem'\n",
     "collector.tls.cert_file"),
    ("[collector.tls]\ncert_file = '{tmp}/absent.pem'\nkey_file = '{tmp}/absent.pem'\n", "collector.tls.cert_file"),
    ("[collector.security]\nshared_key_env = '" + UNSET + "'\n", "collector.security.shared_key_env"),
    ("[collector.security]\nshared_key_env = 'SHADOWREPLAY_TEST_KEY'\n"
     "users = [{{username = 'u', password_env = '" + UNSET + "'}}]\n", "collector.security.users[0].password_env"),
    # replayer: rules, stream endpoints, window, workers
    ("[[replayer.rules]]\nkind = 'nope'\n", "replayer.rules[0].kind"),
    ("[[replayer.rules]]\nkind = 'include_path'\npattern = '(('\n", "replayer.rules[0].pattern"),
    ("[[replayer.rules]]\nkind = 'set_header'\nvalue = 'x'\n", "replayer.rules[0].name"),
    ("[[replayer.rules]]\nkind = 'sample'\npercent = 200.0\n", "replayer.rules[0].percent"),
    ("[[replayer.rules]]\nkind = 'sample'\nkey = 'cookie'\n", "replayer.rules[0].key"),
    ("[[replayer.rules]]\nkind = 'rewrite_path'\npattern = '^/v1/'\nvalue = \"/v2/\\\\9\"\n", "replayer.rules[0].value"),
    ("[[replayer.streams.endpoints]]\npath = '(('\n", "replayer.streams.endpoints[0].path"),
    ("[replayer]\nwindow_from = 'last tuesday'\n", "replayer.window_from"),
    ("[replayer]\nwindow_from = '2024-05-01T15:00:00Z'\nwindow_to = '2024-05-01T14:00:00Z'\n", "replayer.window_to"),
    ("[replayer]\nworkers = 4\nconcurrency = 2\n", "replayer.concurrency"),
    ("[replayer]\nlate_policy = 'skip'\n", "replayer.late_policy"),
    # comparer: path patterns (also per endpoint), routes, the page's credentials
    ("[comparer]\nignore_paths = ['$.a[']\n", "comparer.ignore_paths"),
    ("[comparer]\nnoise_paths = ['$.items[*']\n", "comparer.noise_paths"),
    ("[comparer]\nunordered_paths = ['$.a[?(']\n", "comparer.unordered_paths"),
    ("[[comparer.endpoints]]\nmatch = 'GET /a'\nignore_paths = ['$[']\n", "comparer.endpoints[0].ignore_paths"),
    ("[[comparer.endpoints]]\nmatch = 'GET /a'\nunordered_paths = ['$..']\n", "comparer.endpoints[0].unordered_paths"),
    ("[comparer]\nroutes = ['~/users/(( => GET /users/{{id}}']\n", "comparer.routes"),
    ("[comparer]\nroutes = ['users']\n", "comparer.routes"),
    ("[comparer.web]\nbearer_token_file = '{tmp}/empty-token'\n", "comparer.web.bearer_token_file"),
    ("[comparer.web]\nbearer_token_env = '" + UNSET + "'\n", "comparer.web.bearer_token_env"),
    ("[comparer.web]\nbasic_auth_file = '{tmp}/no-colon'\n", "comparer.web.basic_auth"),
    # the bus URL and its options (checked without opening it)
    ("[bus]\nurl = 'sqlite:///{tmp}/absent-dir/bus.db'\n", "bus.url"),
    ("[bus]\nurl = 'sqlite:///{tmp}/bus.db?flush_ms=5'\n", "bus.url"),
    ("[bus]\nurl = 'sqlite:///{tmp}/bus.db?session_timeout_ms=100&rebalance_interval_ms=100'\n", "bus.url"),
    ("[bus]\nurl = 'kafka://broker'\n", "bus.url"),
]


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(UNSET, raising=False)
    monkeypatch.setenv("SHADOWREPLAY_TEST_KEY", "k")
    (tmp_path / "not-a-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    (tmp_path / "empty-token").write_text("\n")
    (tmp_path / "no-colon").write_text("just-a-user\n")
    return tmp_path


@pytest.mark.parametrize("text, key", REFUSED, ids=[key for _, key in REFUSED])
def test_config_check_refuses_what_start_refuses(
    files: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    path = files / "c.toml"
    path.write_text(text.format(tmp=files))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after a warning that the redaction key is not set
    assert err.startswith("shadowreplay: error: ") and key in err, err
    # start refuses it the same way, before it binds a port or opens the bus
    cfg = configmod.from_dict(tomllib.loads(path.read_text()))
    cfg = configmod.override(cfg, "replayer", candidate="http://127.0.0.1:1")
    with pytest.raises(ConfigError) as refused:
        Pipeline(cfg)
    assert key in str(refused.value)


def test_the_example_config_and_a_full_one_pass(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(EXAMPLE_CONFIG)]) == 0
    full = files / "full.toml"
    full.write_text(f"""
[bus]
url = "sqlite:///{files}/bus.db?session_timeout_ms=5000"
[collector]
format = "combined"
escapes = "keep"
[collector.fields]
time = "time_local"
time_format = "clf"
headers = ["User-Agent=ua"]
[collector.security]
shared_key_env = "SHADOWREPLAY_TEST_KEY"
[replayer]
candidate = "http://127.0.0.1:8081"
baseline = "https://127.0.0.1:8082"
window_from = "-1h"
workers = 2
[[replayer.rules]]
kind = "rewrite_path"
pattern = "^/v1/(.*)"
value = "/v2/\\\\1"
[[replayer.rules]]
kind = "sample"
percent = 10.0
key = "header:X-User"
[[replayer.streams.endpoints]]
path = "^/events"
[comparer]
ignore_paths = ["$.meta.ts", "$.items[*].id"]
unordered_paths = ["$.tags"]
routes = ["GET /users/{{id}}", "~^/v[0-9]+/orders/[^/]+$ => GET /orders/{{id}}"]
[[comparer.endpoints]]
match = "GET /users/*"
noise_paths = ["$.served_by"]
""")
    assert main(["config", "check", str(full)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{EXAMPLE_CONFIG}: ok", f"{full}: ok"]
