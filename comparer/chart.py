"""A small inline SVG chart of how two bodies arrived. Pure, no I/O.

:func:`arrival_svg` draws the baseline's and the candidate's timelines (``[[seconds,
bytes], ...]`` as the replayer records them) as cumulative steps over one time axis,
from the send to the last byte of either. The vertical axis is the share of each side's
own body, so a gzip candidate (fewer wire bytes) and an identity baseline are drawn on
the same scale; the legend gives each side's bytes and first-byte time. A buffered
candidate shows as a flat line that jumps at the end, where the baseline climbs steadily.

The result is a self-contained ``<svg>`` element (no script, no external reference,
every text escaped) that a page can place as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

Timeline = Sequence[Sequence[float]]

WIDTH = 360
HEIGHT = 160
_LEFT, _RIGHT, _TOP, _BOTTOM = 36, 8, 32, 20
BASELINE_COLOUR = "#1f77b4"
CANDIDATE_COLOUR = "#d62728"


def arrival_svg(
    baseline: Timeline,
    candidate: Timeline,
    *,
    labels: tuple[str, str] = ("baseline", "candidate"),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """Both timelines as one inline SVG chart (see the module docstring)."""
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    end = max([_last_time(baseline), _last_time(candidate)]) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(_aria(labels, baseline, candidate))}">',
        f"<title>{escape(_aria(labels, baseline, candidate))}</title>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
        _text(_LEFT - 4, _TOP + 4, "100%", "end"),
        _text(_LEFT - 4, _TOP + plot_h, "0", "end"),
        _text(_LEFT, height - 6, "0 s", "start"),
        _text(_LEFT + plot_w, height - 6, _duration(end), "end"),
    ]
    for i, (timeline, colour, label) in enumerate(
        ((baseline, BASELINE_COLOUR, labels[0]), (candidate, CANDIDATE_COLOUR, labels[1]))
    ):
        points = _steps(timeline, end, plot_w, plot_h)
        dash = ' stroke-dasharray="4 3"' if i else ""
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{points}"/>'
        )
        y = 8 + 12 * i  # one legend row per side
        parts.append(f'<line x1="{_LEFT}" y1="{y}" x2="{_LEFT + 14}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/>')
        parts.append(_text(_LEFT + 18, y + 4, f"{label}: {_legend(timeline)}", "start"))
    parts.append("</svg>")
    return "".join(parts)


def _last_time(timeline: Timeline) -> float:
    return float(timeline[-1][0]) if timeline else 0.0


def _steps(timeline: Timeline, end: float, plot_w: int, plot_h: int) -> str:
    """Cumulative steps in plot coordinates: flat at 0 until the first byte, a step up at
    each point, flat to the right edge after the last one."""

    def xy(t: float, share: float) -> str:
        x = _LEFT + plot_w * min(max(t / end, 0.0), 1.0)
        y = _TOP + plot_h * (1.0 - min(max(share, 0.0), 1.0))
        return f"{x:.1f},{y:.1f}"

    total = float(timeline[-1][1]) if timeline else 0.0
    out = [xy(0.0, 0.0)]
    share = 0.0
    for t, n in timeline:
        out.append(xy(float(t), share))
        share = float(n) / total if total > 0 else 0.0
        out.append(xy(float(t), share))
    out.append(xy(end, share))
    return " ".join(out)


def _legend(timeline: Timeline) -> str:
    if not timeline or timeline[-1][1] <= 0:
        return "no body"
    return f"{_size(int(timeline[-1][1]))}, first byte {_duration(float(timeline[0][0]))}"


def _aria(labels: tuple[str, str], baseline: Timeline, candidate: Timeline) -> str:
    return (
        f"Body arrival over time. {labels[0]}: {_legend(baseline)}, last byte {_duration(_last_time(baseline))}. "
        f"{labels[1]}: {_legend(candidate)}, last byte {_duration(_last_time(candidate))}."
    )


def _text(x: float, y: float, text: str, anchor: str) -> str:
    return (
        f'<text x="{x}" y="{y}" font-size="10" font-family="sans-serif" text-anchor="{anchor}">'
        f"{escape(text)}</text>"
    )


def _duration(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"
