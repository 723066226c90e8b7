"""Kafka with a plain URL (``kafka://host:port``, no options), as a user writes it, against
the Kafka-protocol test broker: readiness, bus dump, anchors, a group anchored at the
present, and what the Kafka client prints."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from conftest import free_port
from http_backends import start_backend
from shadowreplay.contract.bus import open_bus
from shadowreplay.contract.bus.base import Bus
from shadowreplay.contract.record import RequestRecord, encode_request

pytestmark = pytest.mark.integration

S = 10**9
ENV = os.environ | {"PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shadowreplay.cli", *args]


def _config(tmp_path: Path, bus_url: str, requests: str, results: str, group: str, candidate: str) -> Path:
    cfg = tmp_path / f"{group}.toml"
    cfg.write_text(
        f'[bus]\nurl = "{bus_url}"\nrequests_topic = "{requests}"\nresults_topic = "{results}"\npartitions = 4\n'
        f'[replayer]\ncandidate = "{candidate}"\ngroup = "{group}"\ncontrol_topic = "{group}.control"\n'
    )
    return cfg


def _publish(bus: Bus, topic: str, records: list[RequestRecord]) -> None:
    p = bus.producer()
    for r in records:
        p.publish(topic, encode_request(r), key=r.partition_key(), timestamp_ns=r.ts)
    p.flush()
    p.close()


def _records(prefix: str, stamps: list[int]) -> list[RequestRecord]:
    return [RequestRecord(id=f"{prefix}{i:04d}", ts=ts, method="GET", target=f"/k/{i}", client=f"10.2.{i % 9}.{i % 5}")
            for i, ts in enumerate(stamps)]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode(errors="replace")


async def test_readyz_says_ready_only_once_the_group_has_dealt_the_partitions(
    kafka_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    backend, runner = await start_backend("candidate")
    requests, results, group = unique("req"), unique("res"), unique("rep")
    port = free_port()
    cfg = _config(tmp_path, kafka_url, requests, results, group, backend.url)
    proc = subprocess.Popen(_cli("replay", "--config", str(cfg), "--metrics-listen", f"127.0.0.1:{port}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        answers: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
            if status:
                answers.append((status, body))
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert answers and answers[-1][0] == 200, answers[-3:]
        # before: not ready while the pipeline started, then while the group formed
        joining = [orjson.loads(b)["checks"].get("bus group", "") for s, b in answers if s == 503]
        assert any(j.startswith(f"still joining consumer group {group}") for j in joining), answers[:5]
        # ready means owning: the replayer's own count of its partitions follows at once
        owned = 0.0
        while owned != 4 and time.monotonic() < deadline:
            _, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            owned = next((float(line.split()[-1]) for line in text.decode().splitlines()
                          if line.startswith("shadow_replay_assigned_partitions ")), 0.0)
            await asyncio.sleep(0.1)
        assert owned == 4
    finally:
        log = _stop(proc)
        await runner.cleanup()
    assert " kafka." not in log, log[-3000:]  # kafka-python stays below WARNING: none of its lines


def test_bus_dump_reads_a_topic_at_once_without_joining_a_group(kafka_url: str, unique: Callable[[str], str]) -> None:
    topic = unique("dump")
    bus = open_bus(kafka_url, 4)
    try:
        bus.ensure_topic(topic, 4)
        _publish(bus, topic, _records("d", [1_700_000_000 * S + i for i in range(200)]))
    finally:
        bus.close()
    done = subprocess.run(_cli("bus", "dump", "--bus", kafka_url, "--topic", topic, "--meta"),
                          capture_output=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert sorted(line["value"]["id"] for line in lines) == [f"d{i:04d}" for i in range(200)]
    assert done.stderr.decode().strip().splitlines()[-1] == "200 messages"


def test_a_dead_kafka_address_is_one_clear_line(unused_port: int) -> None:
    done = subprocess.run(
        _cli("bus", "dump", "--bus", f"kafka://127.0.0.1:{unused_port}?bootstrap_timeout_ms=3000", "--topic", "x"),
        capture_output=True, timeout=60, env=ENV,
    )
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1 and "no Kafka broker answered" in lines[0], lines


async def test_a_group_anchored_at_the_present_replays_what_comes_not_the_backlog(
    kafka_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    """`replay start --from now` then a new group's replayer: the backlog (an hour of it,
    some of it within the lateness before the anchor) is not burst at staging; what is
    logged from then on is replayed, each record once."""
    backend, runner = await start_backend("candidate")
    requests, results, group = unique("req"), unique("res"), unique("rep")
    bus = open_bus(kafka_url, 4)
    proc: subprocess.Popen[bytes] | None = None
    try:
        bus.ensure_topic(requests, 4)
        bus.ensure_topic(results, 4)
        now = time.time_ns()
        backlog = _records("old", [now - 3600 * S + i * 12 * S for i in range(300)])  # the last hour
        _publish(bus, requests, backlog)
        cfg = _config(tmp_path, kafka_url, requests, results, group, backend.url)
        start = await asyncio.to_thread(
            subprocess.run, _cli("replay", "start", "--config", str(cfg), "--speed", "1", "--from", "now", "--at", "+1s"),
            capture_output=True, timeout=60, env=ENV)
        assert start.returncode == 0, start.stderr.decode()[-2000:]
        port = free_port()
        proc = subprocess.Popen(_cli("replay", "--config", str(cfg), "--metrics-listen", f"127.0.0.1:{port}"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
        deadline = time.monotonic() + 60
        while (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz"))[0] != 200:
            assert time.monotonic() < deadline and proc.poll() is None
            await asyncio.sleep(0.2)
        fresh = _records("new", [time.time_ns() + i * S // 10 for i in range(20)])  # logged from now on
        _publish(bus, requests, fresh)
        while len(backend.hits) < len(fresh) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        log = _stop(proc) if proc is not None else ""
        bus.close()
        await runner.cleanup()
    assert sorted(h.id for h in backend.hits) == [r.id for r in fresh], log[-3000:]
    # What the process itself sent, all of it (the stop waits for what is in flight): a stray
    # backlog request or a repeat, at the backend or not yet, would count here.
    assert f"replayer stopped: {len(fresh)} records replayed" in log, log[-3000:]
    assert "set by replay start" in log  # the anchor read found it: no local anchor of its own
    assert "skipped" in log and "outside_window" in log  # the backlog within the lateness: read, told, skipped
