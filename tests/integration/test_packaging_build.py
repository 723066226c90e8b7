"""The sdist and the wheel, built for real (``python -m build --no-isolation``, the wheel
from the sdist): both carry the LICENSE and the operations files, and the wheel's own
``shadowreplay deploy write`` writes them out, read from the installed package data. The
wheel installs one top-level name, ``shadowreplay`` (the stages are its subpackages), and
runs on its own: ``--version``, ``config check``, the stages importable from it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS_FILES = {
    "alerts.yml", "alerts.test.yml", "prometheus.yml", "shadow-replay.json",
    "provisioning/dashboards/shadowreplay.yml", "provisioning/datasources/shadowreplay.yml",
    "deploy/systemd/shadowreplay-collector.service", "deploy/systemd/shadowreplay-replayer.service",
    "deploy/systemd/shadowreplay-comparer.service",
}
STAGES = ("collector", "replayer", "comparer")
SKIP = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache",
                              ".pytest_cache", ".hypothesis", "build", "dist", "*.egg-info", "*.db*")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build from a copy of the tree, so no build/ or egg-info is left in the checkout."""
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    out = work / "dist"
    run = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                         capture_output=True, text=True, timeout=300, cwd=work)
    if run.returncode != 0 and "No module named build" in run.stderr:
        pytest.fail("the `build` package is missing: pip install -e '.[test]' (or make venv)")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_sdist_has_the_license_and_everything_to_build_and_deploy(dist: Path) -> None:
    (sdist,) = dist.glob("shadowreplay-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
    names = {m.name.split("/", 1)[1] for m in members if "/" in m.name}
    assert {"LICENSE", "Dockerfile", "compose.yaml", "pyproject.toml", "README.md"} <= names
    assert {f"dashboards/{f}" for f in OPERATIONS_FILES} <= names
    assert {"dashboards/compose/prometheus.yml", "dashboards/compose/grafana-datasource.yml"} <= names
    assert not [m.name for m in members if m.issym() or m.islnk()], "no links: the stages are plain files"
    for stage in STAGES:
        assert {f"shadowreplay/{stage}/__init__.py", f"{stage}/__init__.py"} <= names
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = {part.rstrip("/").removeprefix("./") for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M)
              for part in line.split()[:-1]}
    missing = {c for c in copied if c not in names and not any(n.startswith(c + "/") for n in names)}
    assert not missing, f"the Dockerfile copies what the sdist lacks: {missing}"
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_wheel_installs_only_the_shadowreplay_name(dist: Path) -> None:
    (wheel,) = dist.glob("shadowreplay-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top_level = z.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"shadowreplay"}
    assert top_level == ["shadowreplay"]
    for stage in STAGES:
        assert f"shadowreplay/{stage}/__init__.py" in names
    assert "shadowreplay/contract/record.py" in names and "shadowreplay/commands/replay.py" in names


def test_the_wheel_runs_on_its_own(dist: Path, tmp_path: Path) -> None:
    """From the wheel alone (this checkout and its editable install out of reach):
    --version, config check of the shipped example, every stage importable under
    shadowreplay and none under its old top-level name."""
    (wheel,) = dist.glob("shadowreplay-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    probe = (
        "import sys, importlib; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2])\n"
        "for name in ('shadowreplay.collector.server', 'shadowreplay.replayer.loop', 'shadowreplay.comparer.web',"
        " 'shadowreplay.app', 'shadowreplay.contract.record'):\n"
        "    assert importlib.import_module(name).__file__.startswith(sys.argv[1]), name\n"
        "for name in ('collector', 'replayer', 'comparer'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise AssertionError(name + ' is importable at the top level')\n"
        "from shadowreplay.cli import main\n"
        "sys.exit(main(sys.argv[3:]))\n"
    )
    purelib = sysconfig.get_paths()["purelib"]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-S", "-c", probe, str(site), purelib, *argv], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.split() == ["shadowreplay", "0.1.0"], version.stderr
    example = site / "shadowreplay" / "example.toml"
    checked = run("config", "check", str(example))
    assert checked.returncode == 0 and checked.stdout.strip() == f"{example}: ok", checked.stderr


def test_wheel_ships_the_operations_files_under_the_package_and_writes_them_out(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("shadowreplay-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    assert {f"shadowreplay/dashboards/{f}" for f in OPERATIONS_FILES} <= names
    assert not any(n.startswith("dashboards/") for n in names), "no top-level dashboards package"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text
    # Run the wheel's CLI with the wheel first on the path and without site's .pth files,
    # so neither this checkout nor its editable install can stand in for the wheel.
    out = tmp_path / "written"
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]);"
        "import shadowreplay.deploy as d; assert d.__file__.startswith(sys.argv[1]), d.__file__;"
        "from shadowreplay.cli import main; sys.exit(main(['deploy', 'write', sys.argv[3]]))"
    )
    run = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "site"), sysconfig.get_paths()["purelib"],
                          str(out)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == OPERATIONS_FILES
    for rel in OPERATIONS_FILES:
        assert (out / rel).read_bytes() == (ROOT / "dashboards" / rel).read_bytes(), rel
    again = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "site"),
                            sysconfig.get_paths()["purelib"], str(out)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr and "--force" in again.stderr


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's prometheus package (`make system-deps`)")
    shutil.copy(ROOT / "dashboards" / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "dashboards" / "alerts.yml", tmp_path / "alerts.yml")  # as compose.yaml mounts it
    run = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
