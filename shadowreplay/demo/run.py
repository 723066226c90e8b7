"""The demo: two local backends, the bundled access log fed over the forward protocol,
replayed at 10× through collector → bus → replayer → comparer, and a divergence table.

The stages are built by ``app.Pipeline``, as ``shadowreplay run`` builds them; the demo
reads their public counters (``compared``, ``replayed``, ``summary_table()``) and imports
no stage module itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import orjson
from fluent import sender

from shadowreplay.app import Pipeline
from shadowreplay.contract.config import Config
from shadowreplay.demo.backends import Backend, expected_divergence
from shadowreplay.contract.errors import ListenError, ShadowError

log = logging.getLogger(__name__)

SAMPLE_LOG = Path(__file__).with_name("sample_access.jsonl")
TAG = "nginx.access"


@dataclass(frozen=True)
class DemoOutcome:
    fed: int
    replayable: int
    compared: int
    diverged: int
    expected_diverged: int
    duplicates: int
    seconds: float


def load_sample(path: Path = SAMPLE_LOG) -> list[dict[str, str]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def msec_to_ns(msec: str) -> int:
    """nginx ``$msec`` ("1795600800.097") → integer nanoseconds, exactly."""
    return int(Decimal(msec) * 1_000_000_000)


def feed(lines: list[dict[str, str]], host: str, port: int) -> int:
    """Send ``lines`` with fluent-logger (EventTime, nanosecond precision). Returns the count sent."""
    fluent = sender.FluentSender(TAG, host=host, port=port, nanosecond_precision=True, timeout=10.0)
    try:
        for rec in lines:
            ts = sender.EventTime.from_unix_nano(msec_to_ns(rec["msec"]))
            if not fluent.emit_with_time(None, ts, rec):
                raise ShadowError(f"forward-protocol send to {host}:{port} failed: {fluent.last_error}")
    finally:
        fluent.close()
    return len(lines)


#: The demo's wait beyond the replay itself: feeding, start-up, the last results' round trip.
DEMO_MARGIN_SECONDS = 60.0


def demo_timeout_seconds(lines: list[dict[str, str]], speed: float) -> float:
    """How long the demo waits for every result: the log's span replayed at ``speed``,
    half as long again (a loaded machine), plus ``DEMO_MARGIN_SECONDS``."""
    times = [msec_to_ns(line["msec"]) for line in lines]
    span = (max(times) - min(times)) / 1e9 if times else 0.0
    return 1.5 * span / speed + DEMO_MARGIN_SECONDS


async def run_demo(
    *,
    speed: float = 10.0,
    metrics_listen: str = "127.0.0.1:9464",
    keep_serving: bool = True,
    log_path: Path = SAMPLE_LOG,
    workdir: Path | None = None,
    out: TextIO = sys.stdout,
    timeout_seconds: float | None = None,
) -> DemoOutcome:
    """Run the demo. ``timeout_seconds`` bounds the wait for every result to be compared;
    by default the replay's own length (the log's span / ``speed``) plus a margin."""
    if not speed > 0:
        raise ShadowError(f"demo --speed: must be > 0, got {speed:g}")
    lines = load_sample(log_path)
    if timeout_seconds is None:
        timeout_seconds = demo_timeout_seconds(lines, speed)
    cfg0 = Config()
    replayable = sum(1 for r in lines if r["request_method"].upper() in cfg0.replayer.methods)
    expected = sum(
        1
        for r in lines
        if r["request_method"].upper() in cfg0.replayer.methods
        and expected_divergence(r["request_method"], r["request_uri"])
    )
    current, candidate = Backend(candidate=False), Backend(candidate=True)
    baseline_url, candidate_url = await current.start(), await candidate.start()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="shadowreplay-demo-")
        workdir = Path(tmp.name)
    cfg = dataclasses.replace(
        cfg0,
        bus=dataclasses.replace(cfg0.bus, url=f"sqlite:///{workdir / 'demo.db'}"),
        collector=dataclasses.replace(cfg0.collector, listen="127.0.0.1:0"),
        replayer=dataclasses.replace(cfg0.replayer, candidate=candidate_url, baseline=baseline_url, speed=speed),
        metrics=dataclasses.replace(cfg0.metrics, listen=metrics_listen),
    )
    try:
        pipeline = Pipeline(cfg)
        try:
            await pipeline.start()
        except ListenError as exc:  # the metrics port is taken: fall back to any free port
            await pipeline.stop()
            log.warning("%s; using a free port instead", exc)
            cfg = dataclasses.replace(cfg, metrics=dataclasses.replace(cfg.metrics, listen="127.0.0.1:0"))
            pipeline = Pipeline(cfg)
            await pipeline.start()
        try:
            return await _drive(pipeline, lines, replayable, expected, current, candidate, out, keep_serving, timeout_seconds)
        finally:
            await pipeline.stop()
    finally:
        await current.stop()
        await candidate.stop()
        if tmp is not None:
            tmp.cleanup()


async def _drive(
    pipeline: Pipeline,
    lines: list[dict[str, str]],
    replayable: int,
    expected: int,
    current: Backend,
    candidate: Backend,
    out: TextIO,
    keep_serving: bool,
    timeout_seconds: float,
) -> DemoOutcome:
    assert pipeline.collector is not None and pipeline.comparer is not None and pipeline.replayer is not None
    first = msec_to_ns(lines[0]["msec"])
    span = (msec_to_ns(lines[-1]["msec"]) - first) / 1e9
    speed = pipeline.cfg.replayer.speed
    metrics_url = f"http://127.0.0.1:{pipeline.metrics_server.port}/metrics"
    page = pipeline.page
    page_port = (page.port or pipeline.metrics_server.port) if page is not None else 0
    page_line = f"\n  page      http://127.0.0.1:{page_port}/  (divergences, live)" if page_port else ""
    print(
        f"shadowreplay demo: {len(lines)} logged requests over {span:.0f} s, replaying {replayable} "
        f"(GET/HEAD/OPTIONS) at {speed:g}x speed (about {span / speed:.0f} s)\n"
        f"  baseline  {pipeline.cfg.replayer.baseline}  (current release)\n"
        f"  candidate {pipeline.cfg.replayer.candidate}  (changed price field, 500 on cart, slower search)\n"
        f"  metrics   {metrics_url}{page_line}",
        file=out,
        flush=True,
    )
    started = time.monotonic()
    feeding = asyncio.create_task(asyncio.to_thread(feed, lines, "127.0.0.1", pipeline.collector.port))
    comparer, replayer = pipeline.comparer, pipeline.replayer
    live = out.isatty()
    deadline = started + timeout_seconds
    while comparer.compared + comparer.skipped < replayable:
        if feeding.done() and feeding.exception() is not None:
            raise feeding.exception()  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise ShadowError(
                f"demo timed out after {timeout_seconds:.0f} s: compared {comparer.compared} of {replayable}"
            )
        status = (
            f"  fed {'all' if feeding.done() else '...'} · replayed {replayer.replayed}/{replayable} · "
            f"compared {comparer.compared} · diverged {comparer.diverged} · {time.monotonic() - started:4.1f} s"
        )
        if live:
            print("\r" + status, end="", file=out, flush=True)
        elif int(time.monotonic() - started) % 5 == 0:
            print(status, file=out, flush=True)
        await asyncio.sleep(0.25 if live else 1.0)
    fed = await feeding
    elapsed = time.monotonic() - started
    duplicates = sum(n - 1 for n in candidate.seen.values() if n > 1)
    if live:
        print(file=out)
    print(f"\nreplayed {replayer.replayed} requests in {elapsed:.1f} s; per-endpoint verdict:\n", file=out)
    print(comparer.summary_table(), file=out)
    print(
        f"\n{comparer.diverged} of {comparer.compared} replayed requests diverged "
        f"(the candidate was built to diverge on {expected}); duplicates sent: {duplicates}",
        file=out,
        flush=True,
    )
    outcome = DemoOutcome(fed, replayable, comparer.compared, comparer.diverged, expected, duplicates, elapsed)
    if keep_serving:
        print(f"\n/metrics stays up at {metrics_url}{page_line} — press Ctrl-C to stop.", file=out, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    return outcome
