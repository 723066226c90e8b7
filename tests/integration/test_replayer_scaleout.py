"""Scale-out: replayer processes in one consumer group share one anchor from the bus."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from http_backends import serve
from shadowreplay.bus import open_bus
from shadowreplay.bus.base import Bus
from shadowreplay.record import RequestRecord, decode_result, encode_request

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


async def _backend(hits: list[tuple[str, int]]) -> tuple[str, web.AppRunner]:
    async def handle(request: web.Request) -> web.Response:
        hits.append((request.headers.get("X-Shadow-Replay", ""), time.time_ns()))
        return web.Response(text="ok")

    return await serve(handle)


def _config(path: Path, bus_url: str, requests: str, results: str, group: str, candidate: str) -> Path:
    cfg = path / "replay.toml"
    cfg.write_text(
        f'[bus]\nurl = "{bus_url}"\nrequests_topic = "{requests}"\nresults_topic = "{results}"\npartitions = 4\n'
        f'[replayer]\ncandidate = "{candidate}"\ngroup = "{group}"\ncontrol_topic = "{group}.control"\n'
        f'concurrency = 32\n[metrics]\nlisten = "127.0.0.1:0"\n'
    )
    return cfg


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shadowreplay.cli", *args]


def _records(n: int, gap_ns: int) -> list[RequestRecord]:
    return [RequestRecord(id=f"r{i:05d}", ts=T0 + i * gap_ns, method="GET", target=f"/i/{i}",
                          client=f"10.0.{i % 7}.{i % 11}") for i in range(n)]


def _publish(bus: Bus, topic: str, records: list[RequestRecord]) -> None:
    p = bus.producer()
    for r in records:
        p.publish(topic, encode_request(r), key=r.partition_key(), timestamp_ns=r.ts)
    p.flush()
    p.close()


async def _wait_for(hits: list[tuple[str, int]], n: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while len(hits) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a duplicate would arrive now


def _stop(procs: list[subprocess.Popen[bytes]]) -> list[str]:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    logs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        logs.append(err.decode(errors="replace"))
    return logs


def _replayed(log: str) -> int:
    m = re.search(r"replayer stopped: (\d+) records replayed", log)
    assert m, log[-3000:]
    return int(m.group(1))


async def test_two_processes_one_group_one_schedule(
    kafka_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    hits: list[tuple[str, int]] = []
    url, runner = await _backend(hits)
    requests, results, group = unique("req"), unique("res"), unique("rep")
    bus = open_bus(kafka_url, 4)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bus.ensure_topic(requests, 4)
        bus.ensure_topic(results, 4)
        n, gap, speed = 400, 10 * MS, 2.0  # 4 s of log in 2 s, on 4 partitions
        records = _records(n, gap)
        _publish(bus, requests, records)
        cfg = _config(tmp_path, kafka_url, requests, results, group, url)
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        # The group's anchor, on the bus: T0 is replayed 20 s from now (time to start and join).
        start = await asyncio.to_thread(
            subprocess.run, _cli("replay", "start", "--config", str(cfg), "--speed", str(speed),
                                 "--from", str(T0 / 1e9), "--at", "+20s"),
            capture_output=True, timeout=60, env=env,
        )
        assert start.returncode == 0, start.stderr.decode()[-2000:]
        anchor = orjson.loads(start.stdout)
        assert anchor["log_t0"] == T0 and anchor["speed"] == speed
        procs = [
            subprocess.Popen(_cli("replay", "--config", str(cfg), "--anchor", "bus"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            for _ in range(2)
        ]
        wait = (anchor["wall_t0"] - time.time_ns()) / 1e9 + n * gap / speed / 1e9 + 10
        await _wait_for(hits, n, wait)
        logs = _stop(procs)

        counts = Counter(i for i, _ in hits)
        assert counts == Counter(r.id for r in records), f"{len(hits)} hits, {len(counts)} distinct"
        replayed = [_replayed(log) for log in logs]
        assert sum(replayed) == n and min(replayed) > 0, replayed  # the work was split
        for log in logs:
            assert "using group" in log  # both took the bus anchor
        # one schedule: arrival minus due, due from the shared anchor
        due = {r.id: anchor["wall_t0"] + round((r.ts - T0) / speed) for r in records}
        lags = sorted((t - due[i]) / 1e9 for i, t in hits)
        assert lags[0] > -0.001, lags[:5]
        assert lags[int(0.99 * len(lags))] < 0.025, lags[-10:]
        # exactly one result per request on the results topic
        consumer = bus.consumer([results], unique("check"))
        got: list[str] = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            got += [decode_result(m.value).id for m in consumer.poll(500, 0.5)]
        consumer.close()
        assert Counter(got) == Counter(r.id for r in records)
    finally:
        _stop(procs)
        bus.close()
        await runner.cleanup()


async def test_workers_flag_runs_processes_in_one_group(tmp_path: Path) -> None:
    hits: list[tuple[str, int]] = []
    url, runner = await _backend(hits)
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    bus = open_bus(bus_url, 4)
    try:
        bus.ensure_topic("req", 4)
        n = 300
        records = _records(n, 5 * MS)
        _publish(bus, "req", records)
        cfg = _config(tmp_path, bus_url, "req", "res", "g", url)
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        proc = await asyncio.to_thread(
            subprocess.run,
            _cli("replay", "--config", str(cfg), "--workers", "2", "--speed", "2", "--idle-exit", "2"),
            capture_output=True, timeout=60, env=env,
        )
        log = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, log[-3000:]
        assert Counter(i for i, _ in hits) == Counter(r.id for r in records)
        replayed = [int(x) for x in re.findall(r"replayer stopped: (\d+) records replayed", log)]
        assert len(replayed) == 2 and sum(replayed) == n and min(replayed) > 0, replayed
        assert log.count("using group g's anchor") == 2
    finally:
        bus.close()
        await runner.cleanup()


async def test_workers_share_one_concurrency_cap(tmp_path: Path) -> None:
    """--concurrency is what the target sees, whatever --workers is: 2 workers with a cap of
    3 get 2 and 1, never 3 each."""
    inflight = peak = 0
    seen: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        try:
            await asyncio.sleep(0.04)
        finally:
            inflight -= 1
        seen.append(request.headers.get("X-Shadow-Replay", ""))
        return web.Response(text="ok")

    url, runner = await serve(slow)
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    bus = open_bus(bus_url, 4)
    try:
        bus.ensure_topic("req", 4)
        records = _records(80, MS)
        _publish(bus, "req", records)
        cfg = _config(tmp_path, bus_url, "req", "res", "g", url)
        proc = await asyncio.to_thread(
            subprocess.run,
            _cli("replay", "--config", str(cfg), "--workers", "2", "--concurrency", "3", "--speed", "1000",
                 "--idle-exit", "2"),
            capture_output=True, timeout=60,
        )
        log = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, log[-3000:]
        assert sorted(seen) == sorted(r.id for r in records)
        replayed = [int(x) for x in re.findall(r"replayer stopped: (\d+) records replayed", log)]
        assert len(replayed) == 2 and min(replayed) > 0, replayed
        assert 2 <= peak <= 3, peak
        refused = await asyncio.to_thread(
            subprocess.run, _cli("replay", "--config", str(cfg), "--workers", "4", "--concurrency", "3"),
            capture_output=True, timeout=60,
        )
        assert refused.returncode != 0
        assert b"replayer.concurrency = 3 cannot be split over 4 workers" in refused.stderr
    finally:
        bus.close()
        await runner.cleanup()
