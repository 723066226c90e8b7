"""`shadowreplay demo` as a user runs it (faster speed to keep the suite quick)."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
