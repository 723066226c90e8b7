"""Operations: /healthz, /readyz (bus and targets) and a clean SIGTERM of `shadowreplay run`.

The SIGTERM test runs the real command in a subprocess on the embedded bus against the
demo backends, terminates it mid-replay and then reads the bus: every request the
replayer committed has its result on the bus, the requests not yet due stay
uncommitted for the next run, and the comparer read and committed every result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from shadowreplay.app import Pipeline
from shadowreplay.contract.bus.sqlite import SqliteBus
from shadowreplay.demo.backends import Backend
from shadowreplay.contract.config import Config
from shadowreplay.demo.run import feed, load_sample
from tests.conftest import free_port, loopback_config
from waiting import read_to_end, until

pytestmark = pytest.mark.integration

REPLAYABLE = ("GET", "HEAD", "OPTIONS")


async def get_json(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backend, Backend]]:
    candidate, baseline = Backend(candidate=True), Backend(candidate=False)
    await candidate.start()
    await baseline.start()
    try:
        yield candidate, baseline
    finally:
        await candidate.stop()
        await baseline.stop()


async def test_healthz_and_readyz_follow_targets_and_bus(tmp_path: Path, backends: tuple[Backend, Backend]) -> None:
    candidate, baseline = backends
    cfg = loopback_config(
        tmp_path / "bus.db", candidate=f"http://127.0.0.1:{candidate.port}", baseline=f"http://127.0.0.1:{baseline.port}"
    )
    async with Pipeline(cfg) as pipeline:
        base = f"http://127.0.0.1:{pipeline.metrics_server.port}"
        assert await get_json(f"{base}/healthz") == (200, {"status": "ok"})
        deadline = time.monotonic() + 10
        status, body = await get_json(f"{base}/readyz")
        while status != 200 and time.monotonic() < deadline:  # ready once the consumer groups dealt partitions
            await asyncio.sleep(0.05)
            status, body = await get_json(f"{base}/readyz")
        assert status == 200, body
        assert body == {
            "status": "ready",
            "checks": {"pipeline": "ok", "bus": "ok", "bus group": "ok", "target:candidate": "ok",
                       "target:baseline": "ok"},
        }
        await baseline.stop()  # the baseline goes away: not ready, and /readyz says why
        status, body = await get_json(f"{base}/readyz")
        assert status == 503 and body["status"] == "not ready", body
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert checks["target:candidate"] == "ok" and checks["bus"] == "ok"
        assert f"127.0.0.1:{baseline.port} unreachable" in str(checks["target:baseline"])
        assert await get_json(f"{base}/healthz") == (200, {"status": "ok"})  # alive all the same
        os.remove(tmp_path / "bus.db")  # the bus file vanishes: the bus check fails
        status, body = await get_json(f"{base}/readyz")
        assert status == 503 and "sqlite" in str(body["checks"]["bus"]), body  # type: ignore[index]


@dataclasses.dataclass
class GatedBackend(Backend):
    """A demo backend that holds every replayed request until ``gate`` is set."""

    gate: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = super().app()

        @web.middleware
        async def hold(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.headers.get("X-Shadow-Replay"):
                await self.gate.wait()
            return await handler(request)

        app.middlewares.append(hold)
        return app


async def test_consumer_lag_of_both_groups_and_process_metrics_on_metrics(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    """The replayer's backlog shows while the candidate holds every request, both groups
    reach 0 once everything is compared, and /metrics carries them with the process metrics."""
    _, baseline = backends
    candidate = GatedBackend(candidate=True)
    await candidate.start()
    cfg = loopback_config(tmp_path / "bus.db", candidate=f"http://127.0.0.1:{candidate.port}",
                          baseline=f"http://127.0.0.1:{baseline.port}", speed=1000.0, timeout_seconds=120.0)
    lines = load_sample()[:120]
    replayable = sum(1 for r in lines if r["request_method"] in REPLAYABLE)
    try:
        async with Pipeline(cfg) as pipeline:
            assert pipeline.collector is not None and pipeline.comparer is not None
            await asyncio.to_thread(feed, lines, "127.0.0.1", pipeline.collector.port)
            replayer_lag, comparer_lag = pipeline.lag["replayer"], pipeline.lag["comparer"]
            assert await replayer_lag.sample()
            await asyncio.sleep(1.0)  # not a synchronisation: the lag must grow by at least this much
            assert await replayer_lag.sample()
            assert replayer_lag.records is not None and 0 < replayer_lag.records <= len(lines)
            assert replayer_lag.seconds >= 1.0, "waiting since the first sample at least"
            candidate.gate.set()
            comparer = pipeline.comparer
            await until(lambda: comparer.compared >= replayable, "every replayable record compared")
            assert comparer.compared == replayable

            async def caught_up() -> bool:
                return (await replayer_lag.sample() and await comparer_lag.sample()
                        and replayer_lag.records == 0 and comparer_lag.records == 0)

            await until(caught_up, "both groups to catch up")
            assert replayer_lag.seconds == 0 and comparer_lag.seconds == 0
            status, text = await get_text(f"http://127.0.0.1:{pipeline.metrics_server.port}/metrics")
    finally:
        candidate.gate.set()
        await candidate.stop()
    assert status == 200
    for line in ('shadow_replay_consumer_lag_records{group="shadow-replayer"} 0.0',
                 'shadow_compare_consumer_lag_records{group="shadow-comparer"} 0.0',
                 'shadow_replay_consumer_lag_seconds{group="shadow-replayer"} 0.0'):
        assert line in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert f"\n{name} " in text, name


async def get_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as resp:
            return resp.status, await resp.text()


async def test_only_the_collectors_flushes_wait_for_fsync(tmp_path: Path, backends: tuple[Backend, Backend]) -> None:
    """The collector acks on the strength of a flush, so its producer is power-safe; the
    replayer's results can be replayed again, so its producer is not (see Bus.producer)."""
    candidate, _ = backends
    cfg = loopback_config(tmp_path / "bus.db", candidate=f"http://127.0.0.1:{candidate.port}")
    for stages, want in ((("collect",), [True]), (("replay",), [False]), (("collect", "replay"), [False, True])):
        async with Pipeline(cfg, stages) as pipeline:
            assert sorted(p.power_safe for p in pipeline._producers) == want, stages


def drain(bus: SqliteBus, topic: str, group: str) -> list[dict[str, object]]:
    """Every message ``group`` has not committed yet on ``topic`` (read to the end of every
    partition, without committing)."""
    consumer = bus.consumer([topic], group)
    try:
        return [orjson.loads(m.value) for m in read_to_end(consumer, partitions=Config().bus.partitions)]
    finally:
        consumer.close()


async def test_sigterm_stops_run_in_pipeline_order_without_losing_work(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    candidate, baseline = backends
    db = tmp_path / "bus.db"
    listen, metrics = free_port(), free_port()
    lines = load_sample()[:600]  # about 48 s of log at recorded speed: SIGTERM lands mid-replay
    stderr_path = tmp_path / "run.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "shadowreplay.cli", "run",
                "--bus", f"sqlite:///{db}",
                "--listen", f"127.0.0.1:{listen}",
                "--metrics-listen", f"127.0.0.1:{metrics}",
                "--candidate", f"http://127.0.0.1:{candidate.port}",
                "--baseline", f"http://127.0.0.1:{baseline.port}",
                "--speed", "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        async def scrape(name: str) -> float:
            assert proc.poll() is None, f"shadowreplay run exited: {stderr_path.read_text()[-3000:]}"
            _, text = await get_text(f"http://127.0.0.1:{metrics}/metrics")
            return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name + "{"))

        async def ready() -> bool:
            assert proc.poll() is None, f"shadowreplay run exited: {stderr_path.read_text()[-3000:]}"
            try:
                return (await get_json(f"http://127.0.0.1:{metrics}/readyz"))[0] == 200
            except aiohttp.ClientError:
                return False

        await until(ready, f"shadowreplay run to be ready ({stderr_path})", interval_seconds=0.1)
        await asyncio.to_thread(feed, lines, "127.0.0.1", listen)  # returns once all are acked
        # Replaying now: once a result was compared, its request was committed with it (one
        # SQLite transaction); the last records are not due for most of a minute.
        async def compared() -> bool:
            return await scrape("shadow_compare_compared_total") >= 1

        await until(compared, "a first result compared")
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(proc.wait, 45)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = stderr_path.read_text()
    assert returncode == 0, log[-3000:]
    order = [log.find(f"{stage} stopped") for stage in ("collector", "replayer", "comparer")]
    assert "comparer stopped: every result on its partitions compared" in log, log[-3000:]
    assert -1 not in order and order == sorted(order), f"stop order {order}:\n{log[-3000:]}"
    assert "status:" in log, "not on a terminal, the status goes to the log"

    bus = SqliteBus(f"sqlite:///{db}", str(db))
    try:
        group = f"check-{uuid.uuid4().hex[:8]}"
        requests = drain(bus, "shadow.requests", group)
        results = drain(bus, "shadow.results", group)
        left_for_replayer = drain(bus, "shadow.requests", "shadow-replayer")
        left_for_comparer = drain(bus, "shadow.results", "shadow-comparer")
    finally:
        bus.close()
    assert len(requests) == len(lines), "every acknowledged record is on the bus"
    left_ids = {r["id"] for r in left_for_replayer}
    result_ids = {r["id"] for r in results}
    committed = [r for r in requests if r["id"] not in left_ids]
    replayed = [r for r in committed if r["method"] in REPLAYABLE]
    assert replayed, "some records were replayed before SIGTERM"
    assert left_ids, "SIGTERM came mid-replay: records not yet due stay uncommitted"
    missing = [r["id"] for r in replayed if r["id"] not in result_ids]
    assert not missing, f"committed without a result: {missing[:5]}"
    assert left_for_comparer == [], "the comparer read and committed every result before exiting"
    assert len(results) == len(set(result_ids)), "no result published twice"
