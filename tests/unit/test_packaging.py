"""Dockerfile, compose.yaml and pyproject.toml checked against the code.

No Docker engine runs here, so the image and the compose deployment are never built in
this suite; instead every port, path, command and metric name they name is compared
with what the code and the shipped Prometheus/Grafana files say.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowreplay.cli import build_parser
from shadowreplay.commands.common import config_from_args
from shadowreplay.contract.config import METRICS_PORTS, Config, parse_hostport

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
STAGE_OF = {"collector": "collect", "replayer": "replay", "comparer": "compare"}
JOB_OF = {"collector": "shadow-collector", "replayer": "shadow-replayer", "comparer": "shadow-comparer"}
EXAMPLE_ENV = {"SHADOWREPLAY_CANDIDATE": "http://staging.internal:8080", "SHADOWREPLAY_BASELINE": "",
               "SHADOWREPLAY_SPEED": "1", "SHADOWREPLAY_REDACT_KEY": "", "GRAFANA_ADMIN_PASSWORD": "admin"}


def interpolate(value: str) -> str:
    """compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with EXAMPLE_ENV."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        assert name in EXAMPLE_ENV, f"compose.yaml uses ${{{name}}}: document it and add it here"
        value = EXAMPLE_ENV[name]
        if not value and m.group(2) == ":-":
            value = m.group(3) or ""
        return value

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def published(service: dict[str, Any]) -> dict[int, str]:
    """container port -> where it is published on the host ("24224" or "127.0.0.1:9464")."""
    out = {}
    for spec in service.get("ports", []):
        host, _, container = str(spec).rpartition(":")
        out[int(container)] = host
    return out


@pytest.mark.parametrize("service", sorted(STAGE_OF))
def test_each_stage_service_runs_a_valid_command_on_its_documented_ports(compose: dict[str, Any], service: str) -> None:
    spec = compose["services"][service]
    argv = [interpolate(a) for a in spec["command"]]
    args = build_parser().parse_args(argv)
    assert args.command == STAGE_OF[service]
    cfg = config_from_args(args)
    host, port = parse_hostport(cfg.metrics.listen, "metrics.listen")
    assert (host, port) == ("0.0.0.0", METRICS_PORTS[STAGE_OF[service]]), "in a container, on every interface"
    ports = published(spec)
    assert ports[port].startswith("127.0.0.1:"), "metrics (and the page) published on loopback only"
    assert cfg.bus.url == "kafka://kafka:9092" and "kafka" in compose["services"]
    assert spec["depends_on"]["kafka"]["condition"] == "service_healthy"
    if service == "collector":
        forward_host, forward_port = parse_hostport(cfg.collector.listen, "collector.listen")
        assert forward_host == "0.0.0.0"
        assert forward_port == parse_hostport(Config().collector.listen, "collector.listen")[1] == 24224
        assert ports[forward_port] == "24224", "the forward port is what log shippers connect to"
    if service == "replayer":
        assert cfg.replayer.candidate == EXAMPLE_ENV["SHADOWREPLAY_CANDIDATE"] and cfg.replayer.baseline == ""
    if service == "comparer":
        (volume,) = spec["volumes"]
        assert volume.split(":")[1] == dockerfile_value("WORKDIR"), "the divergence store lives in the workdir"
        assert Config().comparer.store.path == "", "default store: ./shadowreplay-diffs.db in the workdir"


def test_kafka_is_a_single_kraft_node_the_stages_can_reach(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    (volume,) = kafka["volumes"]
    assert volume.split(":")[1] == env["KAFKA_LOG_DIRS"]


def scrape_jobs(path: Path) -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_compose_prometheus_scrapes_the_stage_services_as_the_shipped_config_does(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    mounts = {m.split(":")[1]: ROOT / m.split(":")[0] for m in prom["volumes"] if m.startswith("./")}
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    compose_config = mounts[config_path]
    shipped, ours = scrape_jobs(DASHBOARDS / "prometheus.yml"), scrape_jobs(compose_config)
    assert set(shipped) == set(ours) == set(JOB_OF.values())
    for service, job in JOB_OF.items():
        (targets,) = [c["targets"] for c in ours[job]["static_configs"]]
        assert targets == [f"{service}:{METRICS_PORTS[STAGE_OF[service]]}"]
        assert {k: v for k, v in ours[job].items() if k != "static_configs"} == \
            {k: v for k, v in shipped[job].items() if k != "static_configs"}, f"{job}: differs from the shipped one"
    rules = yaml.safe_load(compose_config.read_text(encoding="utf-8"))["rule_files"]
    assert rules == ["alerts.yml"] and mounts[str(Path(config_path).parent / "alerts.yml")] == DASHBOARDS / "alerts.yml"
    for source in mounts.values():
        assert source.is_file(), source


def test_every_metric_the_dashboards_and_alerts_read_is_kept_by_some_job(compose: dict[str, Any]) -> None:
    jobs = scrape_jobs(DASHBOARDS / "compose" / "prometheus.yml")
    keeps = [re.compile(relabel["regex"]) for job in jobs.values() for relabel in job["metric_relabel_configs"]
             if relabel["action"] == "keep"]
    dashboard = (DASHBOARDS / "shadow-replay.json").read_text(encoding="utf-8")
    exprs = [t["expr"] for p in json.loads(dashboard)["panels"] for t in p.get("targets", [])]
    exprs.append((DASHBOARDS / "alerts.yml").read_text(encoding="utf-8"))
    used = {m for e in exprs for m in re.findall(r"(?<![:\w])((?:shadow|process)_[a-z0-9_]+)(?![\w:])", e)}
    assert any(name.startswith("process_") for name in used)
    dropped = sorted(m for m in used if not any(k.fullmatch(m) for k in keeps))
    assert not dropped, f"read by a panel or rule but dropped by every scrape job: {dropped}"


def test_grafana_is_provisioned_with_the_dashboard_and_the_compose_prometheus(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {m.split(":")[1]: ROOT / m.split(":")[0] for m in grafana["volumes"] if m.startswith("./")}
    for source in mounts.values():
        assert source.is_file(), source
    datasource = next(s for t, s in mounts.items() if "/provisioning/datasources/" in t)
    (ds,) = yaml.safe_load(datasource.read_text(encoding="utf-8"))["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in compose["services"]["prometheus"]["ports"]
    provider_file = next(s for t, s in mounts.items() if "/provisioning/dashboards/" in t)
    (provider,) = yaml.safe_load(provider_file.read_text(encoding="utf-8"))["providers"]
    dashboards = [t for t, s in mounts.items() if s == DASHBOARDS / "shadow-replay.json"]
    assert dashboards == [f"{provider['options']['path']}/shadow-replay.json"]


def dockerfile_value(instruction: str) -> str:
    """The last value of ``instruction`` in the Dockerfile (the final stage's)."""
    values = re.findall(rf"^{instruction}\s+(.+)$", (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.M)
    assert values, f"Dockerfile has no {instruction}"
    return values[-1].strip()


def package_sources(pyproject: dict[str, Any]) -> set[str]:
    """The top-level folders of the tree the listed packages are built from, symlinks
    followed (shadowreplay/collector is ../collector)."""
    tool = pyproject["tool"]["setuptools"]
    dirs = {ROOT / tool.get("package-dir", {}).get(p, p.replace(".", "/")) for p in tool["packages"]}
    return {d.resolve().relative_to(ROOT).parts[0] for d in dirs}


def test_dockerfile_installs_every_package_and_exposes_the_ports(pyproject: dict[str, Any]) -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = {part.rstrip("/").removeprefix("./") for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M)
              for part in line.split()[:-1]}
    package_dirs = package_sources(pyproject)
    assert {"shadowreplay", "collector", "replayer", "comparer", "dashboards"} <= package_dirs
    assert package_dirs <= copied, f"packages not copied into the image: {package_dirs - copied}"
    assert {"pyproject.toml", "README.md", "LICENSE"} <= copied
    assert set(map(int, dockerfile_value("EXPOSE").split())) == {24224, *METRICS_PORTS.values()}
    assert json.loads(dockerfile_value("ENTRYPOINT")) == list(pyproject["project"]["scripts"])
    version = re.search(r"^FROM python:(\d+)\.(\d+)", text, re.M)
    assert version and (int(version.group(1)), int(version.group(2))) >= (3, 11)
    assert pyproject["project"]["requires-python"] == ">=3.11"
    assert dockerfile_value("USER") != "root"


STAGES = ("collector", "replayer", "comparer")


def test_the_stages_are_subpackages_of_shadowreplay_through_relative_symlinks() -> None:
    """One top-level name: shadowreplay/<stage> links to the stage's own folder, relatively
    (so a clone anywhere, the sdist and the image resolve it)."""
    for stage in STAGES:
        link = ROOT / "shadowreplay" / stage
        assert link.is_symlink() and os.readlink(link) == f"../{stage}", link
        assert link.resolve() == (ROOT / stage).resolve() and (ROOT / stage / "__init__.py").is_file()


def test_the_package_list_matches_the_tree(pyproject: dict[str, Any]) -> None:
    """pyproject lists packages (so dashboards/ can be mapped in): none may be forgotten,
    and every one is under the one top-level name."""
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    assert {p.split(".")[0] for p in listed} == {"shadowreplay"}
    found = {
        ".".join(Path(folder).relative_to(ROOT).parts)
        for folder, _, files in os.walk(ROOT / "shadowreplay", followlinks=True)
        if "__init__.py" in files and "__pycache__" not in folder
    }
    assert found == listed - {"shadowreplay.dashboards"}
    skip = {".venv", "tests", "bench", "build", "dist", "shadowreplay", *STAGES}
    stray = [init for init in ROOT.rglob("__init__.py") if not skip & set(init.relative_to(ROOT).parts)]
    assert not stray, f"packages outside shadowreplay/ and the stages' folders: {stray}"
    assert pyproject["tool"]["setuptools"]["package-dir"] == {"shadowreplay.dashboards": "dashboards"}
    data = pyproject["tool"]["setuptools"]["package-data"]["shadowreplay.dashboards"]
    shipped = {p.relative_to(DASHBOARDS).as_posix() for pattern in data for p in DASHBOARDS.glob(pattern)}
    wanted = {p.relative_to(DASHBOARDS).as_posix() for p in DASHBOARDS.rglob("*")
              if p.is_file() and p.parent.name != "compose"}
    assert shipped == wanted, "every file of dashboards/ (but the compose ones) is package data"


def test_license_is_the_apache_2_0_text(pyproject: dict[str, Any]) -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 11000


def test_the_documented_host_install_makes_what_the_systemd_units_run() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    block = re.search(r"## Installing on a host for the systemd units.*?```sh\n(.*?)```", docs, re.S)
    assert block, "docs/operations.md lost its install commands"
    commands = block.group(1)
    assert "python3 -m venv /opt/shadowreplay/.venv\n" in commands
    written = re.search(r"shadowreplay deploy write (\S+)", commands)
    assert written
    copied = re.search(r"sudo cp (\S+)/\*\.service /etc/systemd/system/", commands)
    assert copied and copied.group(1) == f"{written.group(1)}/deploy/systemd"
    for unit in sorted((DASHBOARDS / "deploy" / "systemd").glob("*.service")):
        text = unit.read_text(encoding="utf-8")
        exec_start = re.search(r"^ExecStart=(\S+) \w+ --config (\S+)", text, re.M)
        assert exec_start, unit
        assert exec_start.group(1) == "/opt/shadowreplay/.venv/bin/shadowreplay", unit
        assert "shadowreplay.toml" in exec_start.group(2) and exec_start.group(2) in commands, unit
        env_file = re.search(r"^EnvironmentFile=-?(\S+)$", text, re.M)
        assert env_file and env_file.group(1) in commands, unit
        assert unit.stem in commands.split("enable --now", 1)[1], f"{unit.stem} is not enabled"
