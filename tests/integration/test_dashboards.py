"""Every dashboard panel and every recording rule returns data from a real Prometheus.

The pipeline runs in this process on the embedded bus with the demo backends (which
diverge in known ways), fed the bundled access log and nothing malformed: on a healthy
pipeline every panel must show data (the reject, error and skip counters are exported at
0 from the start), never "No data". Debian's ``prometheus`` scrapes it with the shipped ``prometheus.yml`` (targets
rewritten to this run's port, 1 s interval) and loads the shipped ``alerts.yml``.
Each panel query, with its template variables set to concrete values, must parse and
return at least one series: renaming a metric a panel uses fails this test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from shadowreplay.app import Pipeline
from shadowreplay.demo.backends import Backend
from shadowreplay.demo.run import feed, load_sample
from tests.conftest import free_port, loopback_config
from waiting import DEADLINE_SECONDS, until

pytestmark = pytest.mark.integration

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
INSTALL_HINT = "install Debian's prometheus package (`apt-get install prometheus`, or run `make system-deps`)"
JOBS = ("shadow-collector", "shadow-replayer", "shadow-comparer")
FEED_LINES = 600
SPEED = 20.0


def regex_escape(value: str) -> str:
    """Escape for a PromQL ``=~"..."`` matcher (RE2 syntax inside a double-quoted string)."""
    escaped = re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value)
    return escaped.replace("\\", "\\\\")


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title + refId, expr) for every target of every panel, rows included."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for panel in walk(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"{panel['title']} [{target['refId']}]", target["expr"]


def variable_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The series selector inside each ``label_values(selector, label)`` variable query."""
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
        assert m, f"variable {var['name']}: unexpected query {query!r}"
        yield f"variable {var['name']}", m.group(1)


def substitute(expr: str, values: dict[str, str]) -> str:
    out = expr
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        out = out.replace("${" + name + "}", value).replace("$" + name, value)
    leftover = re.findall(r"\$\{?\w+", out)
    assert not leftover, f"unsubstituted variables {leftover} in {expr!r}"
    return out


def prometheus_config(port: int, workdir: Path) -> Path:
    """The shipped prometheus.yml with this run's target, 1 s intervals and absolute rule paths."""
    text = (DASHBOARDS / "prometheus.yml").read_text(encoding="utf-8")
    text, n = re.subn(r'targets: \[[^\]]*\]', f'targets: ["127.0.0.1:{port}"]', text)
    assert n == len(JOBS), f"expected {len(JOBS)} target lists in prometheus.yml, found {n}"
    text = re.sub(r"(scrape|evaluation)_interval: \S+", r"\1_interval: 1s", text)
    text = text.replace("  - alerts.yml", f"  - {DASHBOARDS / 'alerts.yml'}")
    path = workdir / "prometheus.yml"
    path.write_text(text, encoding="utf-8")
    return path


class PrometheusProcess:
    def __init__(self, config: Path, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(f"prometheus not found: {INSTALL_HINT}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


async def query(session: aiohttp.ClientSession, prom: PrometheusProcess, expr: str) -> dict[str, Any]:
    async with session.get(f"{prom.url}/api/v1/query", params={"query": expr}) as resp:
        body: dict[str, Any] = await resp.json(content_type=None)
    return body


async def wait_until(what: str, check: Any, seconds: float = DEADLINE_SECONDS,
                     prom: PrometheusProcess | None = None) -> None:
    """``waiting.until``, failing at once with Prometheus's log if it exits meanwhile."""

    async def done() -> bool:
        if prom is not None and prom.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {prom.proc.returncode}: {prom.log_tail()}")
        return bool(await check())

    try:
        await until(done, what, timeout_seconds=seconds, interval_seconds=0.25)
    except AssertionError as exc:
        tail = f"\nprometheus log: {prom.log_tail()}" if prom is not None else ""
        pytest.fail(f"{exc}{tail}")


class NoisyBackend(Backend):
    """A demo backend whose JSON objects also carry a random ``served_by``: baseline and
    secondary differ there too, so the comparer cancels it as noise."""

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(_add_noise)
        return app


@web.middleware
async def _add_noise(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    resp = await handler(request)
    if isinstance(resp, web.Response) and resp.content_type == "application/json" and resp.body:
        body = orjson.loads(resp.body)  # type: ignore[arg-type]
        if isinstance(body, dict):
            body["served_by"] = uuid.uuid4().hex
            return web.json_response(body, status=resp.status, dumps=lambda v: orjson.dumps(v).decode())
    return resp


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    backends = [NoisyBackend(candidate=True), NoisyBackend(candidate=False), NoisyBackend(candidate=False)]
    candidate, baseline, secondary = [await b.start() for b in backends]
    cfg = loopback_config(tmp_path / "bus.db", candidate=candidate, baseline=baseline, secondary=secondary, speed=SPEED)
    try:
        async with Pipeline(cfg) as p:
            yield p
    finally:
        for b in backends:
            await b.stop()


async def test_every_panel_and_recording_rule_returns_data(pipeline: Pipeline, tmp_path: Path) -> None:
    assert pipeline.collector is not None and pipeline.comparer is not None
    lines = load_sample()[:FEED_LINES]
    replayable = sum(1 for r in lines if r["request_method"] in ("GET", "HEAD", "OPTIONS"))
    await asyncio.to_thread(feed, lines, "127.0.0.1", pipeline.collector.port)
    comparer = pipeline.comparer

    async def some_compared() -> bool:
        return comparer.compared >= replayable // 4

    await wait_until("results to be compared", some_compared)

    prom = PrometheusProcess(prometheus_config(pipeline.metrics_server.port, tmp_path), tmp_path)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"{prom.url}/-/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until("prometheus to be ready", ready, prom=prom)

            async def scraped_twice() -> bool:
                body = await query(session, prom, 'count_over_time(up{job=~"shadow-.*"}[1m]) >= 2')
                return len(body.get("data", {}).get("result", [])) == len(JOBS)

            await wait_until("two scrapes of every job", scraped_twice, prom=prom)
            up = await query(session, prom, 'up{job=~"shadow-.*"} == 1')
            assert sorted(r["metric"]["job"] for r in up["data"]["result"]) == sorted(JOBS), up

            dashboard = json.loads((DASHBOARDS / "shadow-replay.json").read_text(encoding="utf-8"))
            endpoints = await query(session, prom, "max by (endpoint) (shadow_compare_diverged_total)")
            diverging = sorted(r["metric"]["endpoint"] for r in endpoints["data"]["result"])
            assert diverging, "the demo candidate diverges: some endpoint must show it"
            values = {
                "instance": regex_escape(f"127.0.0.1:{pipeline.metrics_server.port}"),
                "endpoint": regex_escape(diverging[0]),
                "datasource": "prometheus",
                "__rate_interval": "30s",
                "__interval": "5s",
                "__range": "5m",
            }
            checks = [*panel_queries(dashboard), *variable_queries(dashboard)]
            assert len(checks) >= 20, "the dashboard lost its panels"

            # Rules: all loaded and healthy, and each recording rule's query returns data.
            async def rules_evaluated() -> bool:
                async with session.get(f"{prom.url}/api/v1/rules") as resp:
                    body = await resp.json(content_type=None)
                rules = [r for g in body["data"]["groups"] for r in g["rules"]]
                return bool(rules) and all(r["health"] != "unknown" for r in rules)

            await wait_until("every rule to be evaluated once", rules_evaluated, prom=prom)
            async with session.get(f"{prom.url}/api/v1/rules") as resp:
                groups = (await resp.json(content_type=None))["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            shipped = (DASHBOARDS / "alerts.yml").read_text(encoding="utf-8")
            assert len(rules) == len(re.findall(r"^\s*- (record|alert):", shipped, re.M)), rules
            for rule in rules:
                assert rule["health"] == "ok", rule
                if rule["type"] == "recording":
                    checks.append((f"recording rule {rule['name']}", rule["query"]))
                    checks.append((f"recorded series {rule['name']}", rule["name"]))

            # A recording rule's first evaluations may precede the second scrape: the
            # recorded series is waited for (evaluated every second).
            failures: list[str] = []
            for name, expr in checks:
                concrete = substitute(expr, values)
                body = await query(session, prom, concrete)

                async def answered(concrete: str = concrete) -> bool:
                    nonlocal body
                    body = await query(session, prom, concrete)
                    return body.get("status") != "success" or bool(body["data"]["result"])

                if name.startswith("recorded series") and not await answered():
                    with contextlib.suppress(AssertionError):  # counted as a failure below
                        await until(answered, name, interval_seconds=0.5)
                if body.get("status") != "success":
                    failures.append(f"{name}: {body.get('error')}\n    {concrete}")
                elif not body["data"]["result"]:
                    failures.append(f"{name}: no series\n    {concrete}")
            assert not failures, "queries that returned nothing:\n  " + "\n  ".join(failures)
    finally:
        prom.stop()


def test_promtool_check_config_and_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(f"promtool not found: {INSTALL_HINT}")
    for args in (
        ["check", "config", str(DASHBOARDS / "prometheus.yml")],
        ["check", "rules", str(DASHBOARDS / "alerts.yml")],
    ):
        run = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"promtool {' '.join(args)}:\n{run.stdout}\n{run.stderr}"


def test_stages_up_shows_up_against_expected_and_is_not_green_when_one_is_down(tmp_path: Path) -> None:
    """The "Stages up" query, as the dashboard has it, on 2 of 3 replayers and 1 of 1 collector."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(f"promtool not found: {INSTALL_HINT}")
    dashboard = json.loads((DASHBOARDS / "shadow-replay.json").read_text(encoding="utf-8"))
    panel = next(p for p in dashboard["panels"] if p["title"] == "Stages up")
    (target,) = panel["targets"]
    assert target["legendFormat"] == "{{job}}: {{up}} of {{expected}} up"
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [{"color": "red", "value": None}, {"color": "green", "value": 1}], "green only at 100 %"
    expr = substitute(target["expr"], {"instance": ".*"})
    (tmp_path / "none.yml").write_text("groups: []\n", encoding="utf-8")
    tests = {
        "rule_files": ["none.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'up{job="shadow-replayer", instance="r1:9465"}', "values": "1x5"},
                {"series": 'up{job="shadow-replayer", instance="r2:9465"}', "values": "1x5"},
                {"series": 'up{job="shadow-replayer", instance="r3:9465"}', "values": "0x5"},
                {"series": 'up{job="shadow-collector", instance="c1:9464"}', "values": "1x5"},
                {"series": 'up{job="node", instance="n:9100"}', "values": "0x5"},
            ],
            "promql_expr_test": [{
                "expr": expr,
                "eval_time": "2m",
                "exp_samples": [
                    {"labels": '{job="shadow-replayer", up="2", expected="3"}', "value": 2 / 3},
                    {"labels": '{job="shadow-collector", up="1", expected="1"}', "value": 1},
                ],
            }],
        }],
    }
    (tmp_path / "stages.test.yml").write_text(json.dumps(tests), encoding="utf-8")  # JSON is YAML
    run = subprocess.run([promtool, "test", "rules", "stages.test.yml"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert run.returncode == 0, f"promtool test rules:\n{run.stdout}\n{run.stderr}"


def test_promtool_test_rules_cover_every_alert() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(f"promtool not found: {INSTALL_HINT}")
    run = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DASHBOARDS,
    )
    assert run.returncode == 0, f"promtool test rules:\n{run.stdout}\n{run.stderr}"
    alerts = set(re.findall(r"^\s*- alert: (\w+)", (DASHBOARDS / "alerts.yml").read_text(), re.M))
    tests = (DASHBOARDS / "alerts.test.yml").read_text()
    for alert in sorted(alerts):
        cases = re.findall(rf"alertname: {alert}\n\s*exp_alerts:(.*)", tests)
        assert any(c.strip() == "[]" for c in cases), f"{alert}: no case where it must not fire"
        assert any(c.strip() == "" for c in cases), f"{alert}: no case where it fires"
