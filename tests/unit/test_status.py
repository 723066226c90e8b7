"""The live status line: figures read from a registry, a redrawn line on a terminal, logs otherwise."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from shadowreplay.status import CLEAR_LINE, Snapshot, StatusLine, format_status, snapshot
from waiting import until


def registry_with_traffic() -> tuple[CollectorRegistry, Counter, Counter, Counter]:
    registry = CollectorRegistry()
    received = Counter("shadow_collector_records_total", "", registry=registry)
    replayed = Counter("shadow_replay_records_total", "", registry=registry)
    compared = Counter("shadow_compare_compared_total", "", ["endpoint"], registry=registry)
    matched = Counter("shadow_compare_matched_total", "", ["endpoint"], registry=registry)
    Gauge("shadow_replay_bus_lag_seconds", "", registry=registry).set(0.25)
    compared.labels(endpoint="GET /a").inc(30)
    compared.labels(endpoint="GET /b").inc(10)
    matched.labels(endpoint="GET /a").inc(30)
    matched.labels(endpoint="GET /b").inc(6)
    return registry, received, replayed, compared


def test_snapshot_sums_over_labels() -> None:
    registry, received, _, _ = registry_with_traffic()
    received.inc(7)
    snap = snapshot(registry, at=1.0)
    assert snap == Snapshot(at=1.0, received=7, behind=0.25, compared=40, matched=36)


def test_format_status_rates_lag_and_divergence() -> None:
    prev = Snapshot(at=10.0, received=100, replayed=50, due=60, compared=10, matched=10)
    cur = Snapshot(at=12.0, received=300, replayed=150, due=170, behind=1.5, inflight=3, compared=40, matched=36)
    line = format_status(prev, cur)
    assert line == (
        "in 100.0/s · replay 50.0/s of 55.0/s due · behind 1.50s · inflight 3 · compared 40 · diverged 4 (10.0%)"
    )
    assert "rejected" not in line
    assert "rejected 2" in format_status(prev, Snapshot(at=12.0, rejected=2))
    assert "diverged 0 (-)" in format_status(prev, Snapshot(at=12.0))


def test_each_stage_shows_only_its_own_figures() -> None:
    prev = Snapshot(at=10.0, received=100, replayed=50, due=60)
    cur = Snapshot(at=12.0, received=300, rejected=3, replayed=150, due=170, behind=1.5, inflight=3,
                   compared=40, matched=36, unread=12)
    assert format_status(prev, cur, ("collect",)) == "in 100.0/s · rejected 3"
    assert format_status(prev, cur, ("replay",)) == "replay 50.0/s of 55.0/s due · behind 1.50s · inflight 3"
    assert format_status(prev, cur, ("compare",)) == "compared 40 · diverged 4 (10.0%) · unread 12"
    everything = format_status(prev, cur, ("collect", "replay", "compare"))
    assert everything.startswith("in 100.0/s · rejected 3 · replay 50.0/s") and "unread" not in everything


def test_counter_resets_do_not_show_negative_rates() -> None:
    assert format_status(Snapshot(at=0.0, received=50), Snapshot(at=1.0)).startswith("in 0.0/s")


async def test_terminal_gets_one_redrawn_line() -> None:
    registry, received, _, _ = registry_with_traffic()
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(StatusLine(registry, out, tty=True, interval_seconds=0.05).run(stop))
    for n in range(1, 4):
        received.inc(5)
        await until(lambda n=n: out.getvalue().count(CLEAR_LINE) >= n, f"redraw {n}")
    stop.set()
    await asyncio.wait_for(task, 5)
    text = out.getvalue()
    assert text.count(CLEAR_LINE) >= 2
    assert text.endswith("\n") and text.count("\n") == 1, "one line, redrawn in place"
    assert "diverged 4 (10.0%)" in text


async def test_log_lines_erase_the_status_line_first(caplog: pytest.LogCaptureFixture) -> None:
    registry, *_ = registry_with_traffic()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(StatusLine(registry, out, tty=True, interval_seconds=0.05).run(stop))
        await until(lambda: "diverged" in out.getvalue(), "the status line drawn")
        logging.getLogger("shadowreplay.test").warning("something happened")
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    before, _, _ = text.partition("something happened")
    assert before.endswith(CLEAR_LINE), "the status line is erased before the log line prints"


async def test_not_a_terminal_logs_instead(caplog: pytest.LogCaptureFixture) -> None:
    registry, *_ = registry_with_traffic()
    out = io.StringIO()
    caplog.set_level(logging.INFO, logger="shadowreplay.status")
    stop = asyncio.Event()
    status = StatusLine(registry, out, log_every_seconds=0.05)
    assert status.tty is False  # StringIO is not a terminal
    task = asyncio.create_task(status.run(stop))

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "shadowreplay.status"]

    await until(lambda: len(logged()) >= 2, "two status lines logged")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert out.getvalue() == ""
    lines = logged()
    assert len(lines) >= 2 and all(m.startswith("status: in ") for m in lines)


def test_records_not_sent_on_time_or_at_all_are_on_the_line() -> None:
    """Late sends, drops and skips show, not only in /metrics (they were invisible)."""
    registry = CollectorRegistry()
    Counter("shadow_replay_late_total", "", registry=registry).inc(5)
    Counter("shadow_replay_dropped_total", "", registry=registry).inc(3)
    skipped = Counter("shadow_replay_skipped_total", "", ["reason"], registry=registry)
    skipped.labels(reason="outside_window").inc(4)
    skipped.labels(reason="bad_record").inc(1)
    line = format_status(Snapshot(at=0.0), snapshot(registry, at=1.0))
    assert "inflight 0 · late 5 · dropped 3 · skipped 5 · compared" in line, line  # with what the replayer does
    assert "dropped" not in format_status(Snapshot(at=0.0), Snapshot(at=1.0))
