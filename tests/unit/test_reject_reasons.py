"""The collector's reject reasons are listed once (collector/metrics.py) and used as listed."""

from __future__ import annotations

import ast
from pathlib import Path

from shadowreplay import collector
from shadowreplay.collector.metrics import DECODE_ERROR_REASONS, REJECT_REASONS


def _reasons_in_source() -> dict[str, str]:
    """Every reason literal the collector's code rejects with, and where: ``reason="x"``,
    ``LineError(msg, "x")``, ``_refused(obj, "x", msg)``, ``errors.append("x")`` and
    ``self._reject("x", ...)``. Not ``tail.py``: the tail counts the lines it cannot ship
    itself (with reasons such as ``missing_time``) and prints them; the collector never sees them."""
    found: dict[str, str] = {}
    for path in sorted(Path(collector.__file__).parent.glob("*.py")):
        if path.name == "tail.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            candidates = [k.value for k in node.keywords if k.arg == "reason"]
            if name == "LineError" and len(node.args) > 1:
                candidates.append(node.args[1])
            if name == "_refused" and len(node.args) > 1:
                candidates.append(node.args[1])
            if name in ("_reject", "append") and node.args and (
                name == "_reject" or isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "errors"
            ):
                candidates.append(node.args[0])
            for c in candidates:
                if isinstance(c, ast.Constant) and isinstance(c.value, str):
                    found.setdefault(c.value, f"{path.name}:{node.lineno}")
    return found


def test_every_reason_the_collector_uses_is_listed() -> None:
    found = _reasons_in_source()
    assert {"bad_method", "bad_json", "bad_time_field", "not_logs", "msgpack"} <= set(found)  # the scan sees them
    unlisted = {r: where for r, where in found.items() if r not in REJECT_REASONS + DECODE_ERROR_REASONS}
    assert not unlisted, f"reasons missing from shadowreplay.collector.metrics.REJECT_REASONS: {unlisted}"


def test_reasons_are_listed_once() -> None:
    assert len(set(REJECT_REASONS)) == len(REJECT_REASONS)
    assert len(set(DECODE_ERROR_REASONS)) == len(DECODE_ERROR_REASONS)
