"""``replay --workers N`` behind one metrics port, scraped by Debian's real Prometheus.

The parent serves every child's metrics, labelled ``worker``, on ``--metrics-listen``;
its children listen on sockets it bound on free loopback ports, so the port after the
parent's (where children used to go, and where the comparer's default sits) can be taken
by anything. Prometheus, with the shipped scrape config pointed at the parent, sees both
workers' counters and process metrics, and their sum is every record replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from http_backends import serve
from shadowreplay.contract.bus import open_bus
from shadowreplay.contract.record import RequestRecord, encode_request
from tests.conftest import free_port
from tests.integration.test_dashboards import PrometheusProcess, prometheus_config, query, wait_until

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000_000
RECORDS = 200


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


def _publish(bus_url: str, n: int) -> None:
    bus = open_bus(bus_url, 4)
    try:
        bus.ensure_topic("shadow.requests", 4)
        producer = bus.producer()
        for i in range(n):
            record = RequestRecord(id=f"r{i:04d}", ts=T0 + i * 1_000_000, method="GET", target=f"/i/{i}",
                                   client=f"10.0.{i % 5}.{i % 13}")
            producer.publish("shadow.requests", encode_request(record), key=record.partition_key(),
                             timestamp_ns=record.ts)
        producer.flush()
        producer.close()
    finally:
        bus.close()


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as resp:
            return resp.status, await resp.text()


async def test_workers_share_one_metrics_port_that_prometheus_scrapes(tmp_path: Path, taken_port: int) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    url, runner = await serve(ok)
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    _publish(bus_url, RECORDS)
    # The parent on P with P + 1 taken: before, worker 1 would have crashed on it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):  # if something listens there already, as good for this test
        blocker.bind(("127.0.0.1", port + 1))
        blocker.listen(1)
    log_path = tmp_path / "replay.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shadowreplay.cli", "replay", "--bus", bus_url, "--candidate", url,
             "--workers", "2", "--speed", "1000", "--metrics-listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log, env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
    prom: PrometheusProcess | None = None
    try:
        base = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            assert proc.poll() is None, f"replay --workers exited: {log_path.read_text()[-3000:]}"
            try:
                return (await _get(f"{base}/readyz"))[0] == 200
            except aiohttp.ClientError:
                return False

        await wait_until("the workers to be ready", ready, 60)
        status, body = await _get(f"{base}/readyz")
        assert orjson.loads(body)["checks"] == {"worker:0": "ok", "worker:1": "ok"}, body
        status, text = await _get(f"{base}/metrics")
        assert status == 200
        assert 'shadow_replay_workers_expected 2.0' in text and 'shadow_replay_workers_up 2.0' in text
        for worker in ("0", "1"):
            assert f'process_resident_memory_bytes{{worker="{worker}"}}' in text
        assert 'process_resident_memory_bytes{worker="parent"}' in text
        assert text.count("# TYPE shadow_replay_records_total counter") == 1, "one family, not one per worker"

        prom = PrometheusProcess(prometheus_config(port, tmp_path), tmp_path)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def prometheus_ready() -> bool:
                try:
                    async with session.get(f"{prom.url}/-/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until("prometheus to be ready", prometheus_ready, 30, prom)

            async def all_replayed() -> bool:
                body = await query(session, prom, 'sum(shadow_replay_records_total{job="shadow-replayer"})')
                result = body.get("data", {}).get("result", [])
                return bool(result) and float(result[0]["value"][1]) == RECORDS

            await wait_until("Prometheus to count every record replayed", all_replayed, 90, prom)
            body = await query(session, prom, 'shadow_replay_records_total{job="shadow-replayer"} > 0')
            workers = sorted(r["metric"]["worker"] for r in body["data"]["result"])
            assert workers == ["0", "1"], body
            body = await query(session, prom, 'process_open_fds{job="shadow-replayer"}')
            assert sorted(r["metric"]["worker"] for r in body["data"]["result"]) == ["0", "1", "parent"]
            body = await query(session, prom, 'up{job="shadow-replayer"}')
            assert [r["value"][1] for r in body["data"]["result"]] == ["1"]

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0, log_path.read_text()[-3000:]
    finally:
        if prom is not None:
            prom.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        blocker.close()
        await runner.cleanup()


def test_workers_parent_port_in_use_is_one_line_and_status_2(tmp_path: Path, taken_port: int) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "shadowreplay.cli", "replay", "--bus", f"sqlite:///{tmp_path / 'bus.db'}",
         "--candidate", f"http://127.0.0.1:{free_port()}", "--workers", "2",
         "--metrics-listen", f"127.0.0.1:{taken_port}"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [
        f"shadowreplay: error: --metrics-listen (metrics.listen) 127.0.0.1:{taken_port}: address already in use "
        "(another process listens there: stop it or choose another port)"
    ]
