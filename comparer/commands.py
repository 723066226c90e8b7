"""The comparer's offline commands over the divergence store: ``diffs``, ``report``, ``compare --rediff``.

Each returns the text to print; the CLI prints it and picks the exit code.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from comparer.rediff import make_differ, rediff
from comparer.report import render_html, render_markdown, render_terminal
from comparer.store import StoreReader, resolve_store_path
from comparer.web import parse_since
from shadowreplay.config import Config
from shadowreplay.errors import ShadowError


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
    return rediff(path, make_differ(cfg.comparer)).format() + "\n"
