"""`shadowreplay demo` as a user runs it (faster speed to keep the suite quick)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from shadowreplay.demo.run import load_sample, run_demo

pytestmark = pytest.mark.integration


def test_demo_command_runs_and_reports_the_built_in_regressions() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shadowreplay.cli", "demo", "--no-wait", "--speed", "40", "--metrics-listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout
    assert "GET /api/users/{id}/cart" in out
    assert "$.price" in out
    assert "diverged (the candidate was built to diverge on" in out
    assert "duplicates sent: 0" in out


async def test_demo_at_recorded_speed_waits_for_the_whole_replay(tmp_path: Path) -> None:
    """--speed 1 on a 6-second slice of the sample: the demo waits the whole replay out."""
    lines = load_sample()
    first = float(lines[0]["msec"])
    part = [r for r in lines if float(r["msec"]) - first <= 6.0]
    log = tmp_path / "slice.jsonl"
    log.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in part))
    out = io.StringIO()
    outcome = await run_demo(speed=1.0, metrics_listen="127.0.0.1:0", keep_serving=False, log_path=log,
                             workdir=tmp_path, out=out)
    assert outcome.compared == outcome.replayable > 0, out.getvalue()
    assert outcome.seconds >= 5.0, "replayed at recorded speed"
