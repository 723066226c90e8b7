"""``shadowreplay report`` and ``shadowreplay diffs``: the store summarised as text.

* :func:`render_html` — one self-contained HTML file (inline CSS, no script, no external
  resources) for a release ticket; every value is HTML-escaped.
* :func:`render_markdown` — the same as Markdown (tables, values in code spans).
* :func:`render_terminal` — the ``diffs`` table for a terminal.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from shadowreplay.comparer.latency import LatencyVerdict
from shadowreplay.comparer.store import EndpointView, FieldView, StoreReader
from shadowreplay.comparer.streams import describe_stored
from shadowreplay.comparer.verdict import FIRST_PATHS

TOP_FIELDS = 10
EXAMPLES_PER_ENDPOINT = 3


def _when(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(x: float) -> str:
    return f"{100.0 * x:.3f}%" if 0 < x < 0.001 else f"{100.0 * x:.1f}%"


def _value(v: Any, limit: int = 120) -> str:
    text = v if isinstance(v, str) else orjson.dumps(v, default=str).decode()
    return text if len(text) <= limit else text[:limit] + "…"


def _examples(reader: StoreReader, view: EndpointView, since_ns: int | None) -> list[dict[str, Any]]:
    rows = reader.samples(view.endpoint, limit=EXAMPLES_PER_ENDPOINT)
    return [r for r in rows if not since_ns or r["ts_ns"] >= since_ns]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def latency_text(lat: LatencyVerdict) -> str:
    """``p50 1.2 → 61.5 ms, p95 2.0 → 63.1 ms`` (baseline → candidate), plus the verdict."""
    if lat.baseline_p50_ms is None or lat.candidate_p50_ms is None:
        return "no latency compared"
    text = (
        f"p50 {_ms(lat.baseline_p50_ms)} → {_ms(lat.candidate_p50_ms)} ms, "
        f"p95 {_ms(lat.baseline_p95_ms)} → {_ms(lat.candidate_p95_ms)} ms"
    )
    if lat.regression and lat.quantile is not None:
        text += f" — REGRESSION: at p{lat.quantile * 100:g} slower by at least {_ms(lat.slower_ms)} ms"
    return text


def not_compared_text(by_target: dict[str, dict[str, int]]) -> str:
    return ", ".join(
        f"{target} {reason} {n}" for target, reasons in by_target.items() for reason, n in reasons.items()
    )


def field_line(f: FieldView) -> str:
    counts = f"raw {f.raw}" + (f", noise {f.noise}" if f.noise else "") + (f", twin {f.twin}" if f.twin else "")
    if f.real:
        counts += f", diverged {f.diverged}, stored {f.stored}"
    return f"{f.path}  [{', '.join(f.kinds) or '-'}]  {f.state}  {counts}"


def _printable(text: str) -> str:
    """``text`` with control characters as escapes: a logged target may hold any byte,
    and a terminal must not take one for a command."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def latest_line(f: FieldView) -> str | None:
    """``#12 GET /deploys/7/log: buffering: first byte 2.0 → 2015.0 ms, …``: a stream
    field's newest stored difference, worded with its delays in ms; None for other fields."""
    if f.latest is None or not f.latest.get("text"):
        return None
    return _printable(f"#{f.latest['id']} {f.latest['method']} {f.latest['target']}: {f.latest['text']}")


def render_terminal(views: Sequence[EndpointView], top_fields: int = 5) -> str:
    """Endpoints by real divergence rate, each followed by its fields (status first, then
    the real ones), its latency in ms and what was not compared. A stream field is
    followed by its newest stored difference with its delays in ms."""
    if not views:
        return "no divergences stored and nothing compared yet"
    header = ("endpoint", "compared", "diverged", "rate", "noise", "stored")
    rows = [(v.endpoint, str(v.compared), str(v.diverged), _pct(v.rate), str(v.noise), str(v.stored)) for v in views]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))])

    out = [line(header)]
    for v, r in zip(views, rows, strict=True):
        out.append(line(r))
        out.append(f"    latency  {latency_text(v.latency)}")
        if v.not_compared:
            out.append(f"    not compared  {not_compared_text(v.not_compared)}")
        shown = [f for f in v.fields if f.real or f.path in FIRST_PATHS][:top_fields]
        shown += [f for f in v.fields if f not in shown][: max(0, top_fields - len(shown))]
        for f in shown:
            out.append(f"    {field_line(f)}")
            if (latest := latest_line(f)) is not None:
                out.append(f"      {latest}")
        rest = [f for f in v.fields if f not in shown]
        if rest:
            real = sum(1 for f in rest if f.real)
            out.append(f"    … {len(rest)} more fields ({real} real)")
    return "\n".join(out)


def _summary(reader: StoreReader, since_ns: int | None) -> tuple[dict[str, int], list[EndpointView]]:
    return reader.totals(), reader.endpoints(since_ns=since_ns)


def render_markdown(reader: StoreReader, *, title: str = "shadowreplay report", since_ns: int | None = None) -> str:
    """A Markdown summary of the store: totals, endpoints, fields and a few examples."""
    totals, views = _summary(reader, since_ns)

    def cell(v: Any) -> str:
        return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    def code(v: Any) -> str:
        text = cell(v).replace("`", "'")
        return f"`{text}`" if text else ""

    rate = _pct(totals["diverged"] / totals["compared"]) if totals["compared"] else "-"
    out = [
        f"# {cell(title)}",
        "",
        f"Generated {_when(time.time_ns())} from `{cell(reader.path)}`.",
        "",
        f"**{totals['compared']}** compared, **{totals['diverged']}** with a real divergence ({rate}); "
        f"**{totals['latency_regressions']}** latency regressions; {totals['not_compared']} not compared "
        f"(target not reached); {totals['stored']} divergences stored, {_when(totals['first_ns'])} to "
        f"{_when(totals['last_ns'])}.",
        "",
        "| endpoint | compared | diverged | rate | noise | latency (baseline → candidate) | not compared | real fields |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for v in views:
        top = ", ".join(code(f.path) for f in v.fields if f.real)
        out.append(
            f"| {code(v.endpoint)} | {v.compared} | {v.diverged} | {_pct(v.rate)} | {v.noise} | "
            f"{cell(latency_text(v.latency))} | {v.not_compared_total} | {top} |"
        )
    for v in views:
        if not v.fields and not v.stored:
            continue
        out += ["", f"## {code(v.endpoint)}", "", "| field | verdict | kinds | raw | noise | twin | diverged | stored |",
                "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for f in v.fields[:TOP_FIELDS]:
            out.append(
                f"| {code(f.path)} | {f.state} | {cell(', '.join(f.kinds))} | {f.raw} | {f.noise} | {f.twin} | "
                f"{f.diverged} | {f.stored} |"
            )
        streams = [f.latest for f in v.fields[:TOP_FIELDS] if f.latest is not None and f.latest.get("text")]
        if streams:
            out += ["", "Streams, newest stored difference:", ""]
            out += [f"- #{x['id']} {code(x['method'] + ' ' + x['target'])}: {cell(x['text'])}" for x in streams]
        examples = _examples(reader, v, since_ns)
        if examples:
            out += ["", "Examples:", ""]
            for ex in examples:
                out.append(f"- #{ex['id']} {code(ex['method'] + ' ' + ex['target'])} at {_when(ex['ts_ns'])}")
                for d in ex["diffs"][:5]:
                    if (text := describe_stored(d)) is not None:
                        out.append(f"  - {code(d['path'])}: {cell(text)}")
                    else:
                        out.append(f"  - {code(d['path'])} ({cell(d['kind'])}): {code(_value(d['left']))} → {code(_value(d['right']))}")
    return "\n".join(out) + "\n"


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#1d1f23;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #e3e6ea;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;background:#f3f4f6;padding:0 .25em;border-radius:3px;word-break:break-all}
.hi{color:#b3261e;font-weight:600}.muted{color:#6b7580}
"""


def render_html(reader: StoreReader, *, title: str = "shadowreplay report", since_ns: int | None = None) -> str:
    """A self-contained HTML summary (inline CSS, no script); every value escaped."""
    totals, views = _summary(reader, since_ns)
    e = html.escape

    def c(v: Any) -> str:
        return f"<code>{e(str(v))}</code>"

    rate = _pct(totals["diverged"] / totals["compared"]) if totals["compared"] else "-"
    parts: list[str] = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p class='muted'>Generated {e(_when(time.time_ns()))} from {c(reader.path)}.</p>",
        f"<p><b>{totals['compared']}</b> compared, <b>{totals['diverged']}</b> with a real divergence ({e(rate)}); "
        f"<b>{totals['latency_regressions']}</b> latency regressions; {totals['not_compared']} not compared "
        f"(target not reached); {totals['stored']} divergences stored, {e(_when(totals['first_ns']))} to "
        f"{e(_when(totals['last_ns']))}.</p>",
        "<table><tr><th>endpoint</th><th class='n'>compared</th><th class='n'>diverged</th>"
        "<th class='n'>rate</th><th class='n'>noise</th><th>latency (baseline → candidate)</th>"
        "<th class='n'>not compared</th><th>real fields</th></tr>",
    ]
    for v in views:
        cls = "n hi" if v.rate >= 0.05 else "n"
        lat_cls = " class='hi'" if v.latency.regression else ""
        top = ", ".join(c(f.path) for f in v.fields if f.real)
        parts.append(
            f"<tr><td>{c(v.endpoint)}</td><td class='n'>{v.compared}</td><td class='n'>{v.diverged}</td>"
            f"<td class='{cls}'>{e(_pct(v.rate))}</td><td class='n'>{v.noise}</td>"
            f"<td{lat_cls}>{e(latency_text(v.latency))}</td><td class='n'>{v.not_compared_total}</td><td>{top}</td></tr>"
        )
    parts.append("</table>")
    for v in views:
        if not v.fields and not v.stored:
            continue
        parts.append(f"<h2>{c(v.endpoint)}</h2><table><tr><th>field</th><th>verdict</th><th>kinds</th>"
                     "<th class='n'>raw</th><th class='n'>noise</th><th class='n'>twin</th>"
                     "<th class='n'>diverged</th><th class='n'>stored</th></tr>")
        for f in v.fields[:TOP_FIELDS]:
            state = f"<b class='hi'>{e(f.state)}</b>" if f.real else e(f.state)
            parts.append(
                f"<tr><td>{c(f.path)}</td><td>{state}</td><td>{e(', '.join(f.kinds))}</td><td class='n'>{f.raw}</td>"
                f"<td class='n'>{f.noise}</td><td class='n'>{f.twin}</td><td class='n'>{f.diverged}</td>"
                f"<td class='n'>{f.stored}</td></tr>"
            )
        parts.append("</table>")
        streams = [f.latest for f in v.fields[:TOP_FIELDS] if f.latest is not None and f.latest.get("text")]
        if streams:
            parts.append("<p>Streams, newest stored difference:</p><ul>")
            parts += [f"<li>#{e(str(x['id']))} {c(x['method'] + ' ' + x['target'])}: {e(x['text'])}</li>" for x in streams]
            parts.append("</ul>")
        examples = _examples(reader, v, since_ns)
        if examples:
            parts.append("<table><tr><th>example</th><th>field</th><th>kind</th><th>reference</th><th>candidate</th></tr>")
            for ex in examples:
                for i, d in enumerate(ex["diffs"][:5]):
                    head = f"#{ex['id']} {c(ex['method'] + ' ' + ex['target'])}<br><span class='muted'>{e(_when(ex['ts_ns']))}</span>" if i == 0 else ""
                    text = describe_stored(d)
                    values = (
                        f"<td colspan='2'>{e(text)}</td>" if text is not None
                        else f"<td>{c(_value(d['left']))}</td><td>{c(_value(d['right']))}</td>"
                    )
                    parts.append(f"<tr><td>{head}</td><td>{c(d['path'])}</td><td>{e(str(d['kind']))}</td>{values}</tr>")
            parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
