"""Lint of dashboards/: the Grafana JSON is importable anywhere and every panel is complete.

The integration test (tests/integration/test_dashboards.py) proves the queries return
data from a real Prometheus; this one is fast and checks the shape: unique panel ids,
the data source only through ``${datasource}``, title, description, unit and
thresholds on every panel, no overlapping panels, and every metric a query names is
defined by a component's metrics module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
METRIC_MODULES = [ROOT / "collector" / "metrics.py", ROOT / "replayer" / "metrics.py", ROOT / "comparer" / "metrics.py"]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROMQL_FUNCTIONS_AND_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / "shadow-replay.json").read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    yield from walk(dashboard["panels"])


def content_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def test_dashboard_header(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, "an exported id would clash on import"
    assert "__inputs" not in dashboard, "the data source is a template variable, not an import input"


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in all_panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"


def test_rows_cover_health_verdict_latency_and_operations(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Pipeline health", "Verdict", "Latency", "Operations"]


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) >= {"datasource", "instance", "endpoint"}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("instance", "endpoint"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE
        assert var["includeAll"] and var["allValue"] == ".*", f"{name}: 'All' must match every series"


def _datasource_refs(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield where, value
            yield from _datasource_refs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _datasource_refs(value, f"{where}[{i}]")


def test_no_hard_coded_datasource(dashboard: dict[str, Any]) -> None:
    refs = list(_datasource_refs(dashboard))
    assert refs
    for where, ref in refs:
        if where.startswith(".annotations"):
            assert ref == {"type": "grafana", "uid": "-- Grafana --"}, where  # Grafana's built-in
            continue
        assert ref == DATASOURCE, f"{where}: datasource must be {DATASOURCE}, got {ref!r}"


def test_every_panel_is_complete(dashboard: dict[str, Any]) -> None:
    panels = content_panels(dashboard)
    assert len(panels) >= 15
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique"
    for p in panels:
        name = p.get("title") or f"panel {p['id']}"
        assert p.get("title", "").strip(), f"panel {p['id']}: no title"
        assert len(p.get("description", "")) >= 40, f"{name}: description missing or too short"
        defaults = p["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{name}: no unit"
        steps = defaults["thresholds"]["steps"]
        assert steps and steps[0]["value"] is None, f"{name}: thresholds need a base step"
        values = [s["value"] for s in steps[1:]]
        assert values == sorted(values), f"{name}: threshold steps out of order"
        assert p["targets"], f"{name}: no query"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{name}: duplicate refId"
        for t in p["targets"]:
            assert t["expr"].strip(), f"{name}: empty query"
            assert t.get("legendFormat"), f"{name} [{t['refId']}]: no legend"


def test_rates_and_ratios_have_fitting_units(dashboard: dict[str, Any]) -> None:
    for p in content_panels(dashboard):
        unit = p["fieldConfig"]["defaults"]["unit"]
        title = p["title"].lower()
        if "rate" in title and "divergence" in title or "share" in title:
            assert unit == "percentunit", p["title"]
        if "latency" in title and "ratio" not in title or "lag" in title:
            assert unit == "s", p["title"]


def test_verdict_panels_with_thresholds_that_mean_something(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in content_panels(dashboard)}
    steps = by_title["Divergence rate"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.01, 0.05]
    lag = by_title["Bus lag (behind schedule)"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert len(lag) >= 2


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels(dashboard):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{p['title']}: outside the 24-column grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def _defined_metrics() -> set[str]:
    names: set[str] = set()
    for module in METRIC_MODULES:
        names.update(re.findall(r'"(shadow_[a-z0-9_]+)"', module.read_text(encoding="utf-8")))
    return names


def _base_name(metric: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        if metric.endswith(suffix):
            return metric[: -len(suffix)]
    return metric


def test_every_queried_metric_is_defined_by_a_component(dashboard: dict[str, Any]) -> None:
    defined = _defined_metrics()
    exprs = [t["expr"] for p in content_panels(dashboard) for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    exprs.append((DASHBOARDS / "alerts.yml").read_text(encoding="utf-8"))
    # Recorded series (level:metric:operations) are not component metrics: skip a:b:c names.
    used = {_base_name(m) for e in exprs for m in re.findall(r"(?<![:\w])shadow_[a-z0-9_]+(?![\w:])", e)}
    assert used
    missing = sorted(m for m in used if m not in defined and m.removesuffix("_total") not in defined)
    assert not missing, f"queried but defined by no metrics module: {missing}"


def test_alerts_are_labelled_and_explained() -> None:
    text = (DASHBOARDS / "alerts.yml").read_text(encoding="utf-8")
    blocks = re.split(r"\n\s*- alert: ", text)[1:]
    assert len(blocks) >= 4
    for block in blocks:
        name = block.split()[0]
        assert re.search(r"severity: (warning|critical)", block), f"{name}: no severity"
        assert "summary:" in block and "description:" in block, f"{name}: summary and description"
        assert re.search(r"\bfor: \d+m", block), f"{name}: no `for` duration (one bad scrape would page)"


def test_provisioning_and_scrape_config_are_shipped() -> None:
    ds = (DASHBOARDS / "provisioning" / "datasources" / "shadowreplay.yml").read_text(encoding="utf-8")
    assert "apiVersion: 1" in ds and "type: prometheus" in ds
    provider = (DASHBOARDS / "provisioning" / "dashboards" / "shadowreplay.yml").read_text(encoding="utf-8")
    assert "apiVersion: 1" in provider and "type: file" in provider
    scrape = (DASHBOARDS / "prometheus.yml").read_text(encoding="utf-8")
    for job in ("shadow-collector", "shadow-replayer", "shadow-comparer"):
        assert f"job_name: {job}" in scrape


@pytest.mark.parametrize(("stage", "command", "port"), [("collector", "collect", 9464), ("replayer", "replay", 9465), ("comparer", "compare", 9466)])
def test_systemd_units_match_the_scrape_config(stage: str, command: str, port: int) -> None:
    from shadowreplay.app import DRAIN_MAX_SECONDS, STAGE_STOP_SECONDS

    unit = (DASHBOARDS / "deploy" / "systemd" / f"shadowreplay-{stage}.service").read_text(encoding="utf-8")
    assert re.search(rf"^ExecStart=\S+/shadowreplay {command} --config \S+ --metrics-listen 0\.0\.0\.0:{port}$", unit, re.M)
    assert "KillSignal=SIGTERM" in unit
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))  # type: ignore[union-attr]
    assert stop > STAGE_STOP_SECONDS + DRAIN_MAX_SECONDS, "systemd must not SIGKILL a clean stop"
    scrape = (DASHBOARDS / "prometheus.yml").read_text(encoding="utf-8")
    job = {"collector": "shadow-collector", "replayer": "shadow-replayer", "comparer": "shadow-comparer"}[stage]
    assert re.search(rf"job_name: {job}\n\s+static_configs:\n\s+- targets: \[\"127\.0\.0\.1:{port}\"\]", scrape)
