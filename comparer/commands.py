"""The comparer's offline commands over the divergence store: ``diffs``, ``report``,
``compare --rediff`` and ``gate``.

Each returns the text to print (``gate`` also its exit code); their command-line surface
is in the composition layer (shadowreplay/commands/), which prints it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from shadowreplay.comparer.rediff import make_differ, rediff
from shadowreplay.comparer.report import latency_text, not_compared_text, render_html, render_markdown, render_terminal
from shadowreplay.comparer.store import EndpointView, StoreReader, resolve_store_path
from shadowreplay.comparer.web import parse_since
from shadowreplay.contract.config import Config, GateConfig
from shadowreplay.contract.errors import ShadowError


def store_path(cfg: Config, override: str | None) -> str:
    """``--store`` if given, else ``comparer.store.path``, else beside the sqlite bus."""
    return override or resolve_store_path(cfg.comparer.store, cfg.bus.url)


def diffs(cfg: Config, *, store: str | None, endpoint: str | None, since: str | None, as_json: bool) -> str:
    """Endpoints by divergence rate with their diverging fields (a table, or JSON)."""
    path = store_path(cfg, store)
    if not Path(path).exists():
        raise ShadowError(f"no divergence store at {path} (run the comparer first, or pass --store FILE)")
    views = StoreReader(path).endpoints(endpoint=endpoint, since_ns=parse_since(since, time.time_ns()))
    if as_json:
        return orjson.dumps([v.to_json() for v in views], option=orjson.OPT_INDENT_2).decode() + "\n"
    return render_terminal(views) + "\n"


#: ``shadowreplay report --format``: HTML (the default) or Markdown.
REPORT_FORMATS = ("html", "md")


def report(
    cfg: Config, *, store: str | None, fmt: str | None, output: str | None, title: str, since: str | None
) -> tuple[str, str]:
    """The report text and its format (``html`` or ``md``; from ``--format``, else the output suffix)."""
    path = store_path(cfg, store)
    if not Path(path).exists():
        raise ShadowError(f"no divergence store at {path} (run the comparer first, or pass --store FILE)")
    if fmt is None:
        fmt = "md" if output and output.lower().endswith((".md", ".markdown")) else "html"
    reader = StoreReader(path)
    since_ns = parse_since(since, time.time_ns())
    if fmt == "md":
        return render_markdown(reader, title=title, since_ns=since_ns), fmt
    return render_html(reader, title=title, since_ns=since_ns), fmt


def rediff_store(cfg: Config, *, store: str | None) -> str:
    """Re-diff every stored divergence with the current comparer config; a before/after summary."""
    path = store_path(cfg, store)
    if not Path(path).exists():
        raise ShadowError(f"no divergence store at {path} (nothing to re-diff)")
    return rediff(path, make_differ(cfg.comparer), config=cfg.comparer).format() + "\n"


# -- gate --------------------------------------------------------------------------------

#: ``shadowreplay gate`` exit codes.
GATE_PASS, GATE_FAIL, GATE_NO_VERDICT = 0, 1, 2


@dataclass(frozen=True)
class GateOutcome:
    code: int
    text: str


def gate(cfg: Config, *, store: str | None) -> GateOutcome:
    """Judge the store against ``[comparer.gate]``: exit code and the reasons, per endpoint."""
    path = store_path(cfg, store)
    if not Path(path).exists():
        raise ShadowError(f"no divergence store at {path} (run the comparer first, or pass --store FILE)")
    reader = StoreReader(path)
    views = reader.endpoints()
    return judge_gate(views, cfg.comparer.gate, reader.rules().latency.share, reader.rules().latency.min_ms)


def judge_gate(views: list[EndpointView], g: GateConfig, share: float, min_ms: float) -> GateOutcome:
    compared = sum(v.compared for v in views)
    not_compared = sum(v.not_compared_total for v in views)
    lines: list[str] = []
    failed = 0
    for v in sorted(views, key=lambda v: v.endpoint):
        reasons = []
        if v.rate > g.max_divergence_rate:
            real = ", ".join(f"{f.path} ({f.diverged})" for f in v.fields if f.real)
            reasons.append(
                f"real divergence rate {100 * v.rate:.2f}% ({v.diverged} of {v.compared}) > "
                f"{100 * g.max_divergence_rate:.2f}%; fields: {real}"
            )
        if g.fail_on_latency_regression and v.latency.regression:
            reasons.append(
                f"latency regression (thresholds {100 * share:g}% and {min_ms:g} ms): {latency_text(v.latency)}"
            )
        if reasons:
            failed += 1
            lines.append(f"FAIL  {v.endpoint}: " + "; ".join(reasons))
        else:
            nc = f"; not compared: {not_compared_text(v.not_compared)}" if v.not_compared else ""
            lines.append(
                f"pass  {v.endpoint}: {v.diverged} of {v.compared} diverged ({100 * v.rate:.2f}%); "
                f"{latency_text(v.latency)}{nc}"
            )
    total = compared + not_compared
    share_nc = not_compared / total if total else 0.0
    if compared < g.min_compared:
        lines.append(f"gate: NO VERDICT: {compared} results compared, fewer than {g.min_compared} (an empty store never passes)")
        return GateOutcome(GATE_NO_VERDICT, "\n".join(lines) + "\n")
    if share_nc > g.max_not_compared_rate:
        lines.append(
            f"gate: NO VERDICT: {not_compared} of {total} results ({100 * share_nc:.2f}%) not compared because a "
            f"target was not reached (> {100 * g.max_not_compared_rate:.2f}%); replay that window again"
        )
        return GateOutcome(GATE_NO_VERDICT, "\n".join(lines) + "\n")
    if failed:
        lines.append(f"gate: FAILED on {failed} of {len(views)} endpoints")
        return GateOutcome(GATE_FAIL, "\n".join(lines) + "\n")
    lines.append(f"gate: passed ({compared} compared on {len(views)} endpoints)")
    return GateOutcome(GATE_PASS, "\n".join(lines) + "\n")
