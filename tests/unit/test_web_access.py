"""Who may see the page, and what its API accepts: credentials, Host, loopback, parameters."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from shadowreplay.comparer.web import DivergencePage, WebAuth, host_allowed, parse_since, peer_is_loopback, read_secret
from shadowreplay.contract import config as configmod
from shadowreplay.cli import main
from shadowreplay.contract.config import Config, WebConfig, is_loopback_host
from shadowreplay.contract.errors import ConfigError, ShadowError

NOW = 1_800_000_000 * 10**9


@pytest.mark.parametrize(
    "value, expected",
    [
        ("30m", NOW - 1800 * 10**9),
        ("1.5h", NOW - 5400 * 10**9),
        ("1700000000", 1_700_000_000 * 10**9),
        ("2025-01-01T00:00:00Z", 1_735_689_600 * 10**9),
        ("2025-01-01T01:00:00+01:00", 1_735_689_600 * 10**9),
    ],
)
def test_since_forms(value: str, expected: int) -> None:
    assert parse_since(value, NOW) == expected


@pytest.mark.parametrize(
    "value",
    ["inf", "-inf", "nan", "NaN", "1e400", "-5", "99999999999999999999d", "1e30", "someday", "10000-01-01",
     "2263-01-01T00:00:00Z", "٣٠m", "\x00", "30 m"],
)
def test_since_rejects_what_is_not_a_time(value: str) -> None:
    with pytest.raises(ShadowError, match="since"):
        parse_since(value, NOW)


@pytest.mark.parametrize(
    "host, ok",
    [
        ("127.0.0.1:9464", True), ("127.0.0.1", True), ("[::1]:9464", True), ("localhost:9464", True),
        ("LOCALHOST.", True), ("app.localhost", True), ("10.0.0.7:9464", True), ("[fe80::1]", True),
        ("evil.example:9464", False), ("evil.example", False), ("127.0.0.1.nip.io", False),
        ("diffs.example.com", True), ("diffs.example.com:443", True), ("other.example.com", False), ("", False),
    ],
)
def test_host_header(host: str, ok: bool) -> None:
    assert host_allowed(host, frozenset({"diffs.example.com"})) is ok


def test_peer_and_bind_addresses() -> None:
    assert peer_is_loopback("127.0.0.1") and peer_is_loopback("::1") and peer_is_loopback("::ffff:127.0.0.5")
    assert not peer_is_loopback("10.0.0.5") and not peer_is_loopback(None) and not peer_is_loopback("garbage")
    assert is_loopback_host("127.0.0.1") and is_loopback_host("[::1]") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("::") and not is_loopback_host("example.com")


def test_credentials(tmp_path: Path) -> None:
    secret = tmp_path / "basic"
    secret.write_text("ops:s3cr3t:with:colons\n")
    web = WebConfig(bearer_token_env="PAGE_TOKEN", basic_auth_file=str(secret))
    auth = WebAuth.from_config(web, {"PAGE_TOKEN": "tok-123"})
    basic = "Basic " + base64.b64encode(b"ops:s3cr3t:with:colons").decode()
    assert auth.accepts("Bearer tok-123") and auth.accepts("bearer  tok-123 ") and auth.accepts(basic)
    for bad in (None, "", "Bearer tok-12", "Bearer tok-1234", "Basic " + base64.b64encode(b"ops:nope").decode(),
                "Basic !!!", "Token tok-123", "tok-123"):
        assert not auth.accepts(bad), bad
    assert auth.challenges() == ['Basic realm="shadowreplay", charset="UTF-8"', 'Bearer realm="shadowreplay"']
    with pytest.raises(ConfigError, match="comparer.web.bearer_token_env: environment variable PAGE_TOKEN"):
        WebAuth.from_config(web, {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="basic_auth_file: .* is empty"):
        read_secret(str(tmp_path / "empty"), "", "comparer.web.basic_auth", {})
    (tmp_path / "nouser").write_text(":pw")
    with pytest.raises(ConfigError, match="user:password"):
        WebAuth.from_config(WebConfig(basic_auth_file=str(tmp_path / "nouser")), {})
    assert not WebAuth.from_config(WebConfig(), {}).configured


def with_web(**web: object) -> Config:
    c = Config()
    return dataclasses.replace(c, comparer=dataclasses.replace(c.comparer, web=dataclasses.replace(c.comparer.web, **web)))


def test_a_non_loopback_page_without_a_credential_is_a_config_error(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:9470", "[::]:9470", "10.1.2.3:9470", "diffs.example.com:9470"):
        with pytest.raises(ConfigError, match="comparer.web.listen: .* no credential is configured"):
            configmod.validate(with_web(listen=listen))
    for listen in ("127.0.0.1:9470", "localhost:9470", "[::1]:9470", ""):
        configmod.validate(with_web(listen=listen))
    configmod.validate(with_web(listen="0.0.0.0:9470", basic_auth_env="SHADOWREPLAY_PAGE_AUTH"))
    with pytest.raises(ConfigError, match="bearer_token_file: set bearer_token_file or bearer_token_env, not both"):
        configmod.validate(with_web(bearer_token_file=__file__, bearer_token_env="X"))
    with pytest.raises(ConfigError, match="basic_auth_file: no such file"):
        configmod.validate(with_web(basic_auth_file=str(tmp_path / "absent")))
    with pytest.raises(ConfigError, match="allowed_hosts\\[0\\]"):
        configmod.validate(with_web(allowed_hosts=("http://x/",)))
    with pytest.raises(ConfigError, match="query_timeout_seconds"):
        configmod.validate(with_web(query_timeout_seconds=0.0))


def test_config_check_catches_an_open_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[comparer.web]\nlisten = "0.0.0.0:9470"\n')
    assert main(["config", "check", str(cfg)]) == 2
    assert "comparer.web.listen: 0.0.0.0:9470 is not a loopback address" in capsys.readouterr().err
    cfg.write_text('[comparer.web]\nlisten = "0.0.0.0:9470"\nbearer_token_env = "SHADOWREPLAY_PAGE_TOKEN"\n')
    monkeypatch.delenv("SHADOWREPLAY_PAGE_TOKEN", raising=False)
    assert main(["config", "check", str(cfg)]) == 2  # as start, it reads the credential
    assert "comparer.web.bearer_token_env: environment variable SHADOWREPLAY_PAGE_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("SHADOWREPLAY_PAGE_TOKEN", "s3cret")
    assert main(["config", "check", str(cfg)]) == 0


async def test_without_a_credential_only_loopback_clients_are_served(tmp_path: Path) -> None:
    page = DivergencePage(str(tmp_path / "absent.db"), WebConfig(), environ={})
    try:
        for remote, status in (("10.0.0.9", 403), ("192.168.1.4", 403), ("127.0.0.1", None), ("::1", None)):
            req = make_mocked_request("GET", "/api/totals", headers={"Host": "127.0.0.1:9464"})
            req._transport_peername = (remote, 50000)  # what aiohttp reads request.remote from
            refusal = page._refusal(req)
            assert (refusal.status if refusal is not None else None) == status, remote
        assert page.refused == {"remote": 2}
    finally:
        await page.stop()
