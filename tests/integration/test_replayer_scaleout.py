"""Scale-out: replayer processes in one consumer group share one anchor from the bus."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from http_backends import serve
from waiting import until
from shadowreplay.replayer.anchors import AnchorStore
from shadowreplay.replayer.schedule import Anchor
from shadowreplay.contract.bus import open_bus
from shadowreplay.contract.bus.base import Bus, read_to_end
from shadowreplay.contract.record import RequestRecord, decode_request, decode_result, encode_request

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


def _committed_all(bus: Bus, topic: str, group: str) -> bool:
    """True once ``group`` has committed every message of ``topic``: a reader from the
    group's committed offsets (it joins nothing, so it moves no partition) finds none."""
    reader = bus.reader([topic], group=group)
    try:
        return not any(read_to_end(reader))
    finally:
        reader.close()


async def _until_done(hits: list[tuple[str, int]], ids: set[str], bus: Bus, topic: str, group: str) -> None:
    """Every id reached the backend and the group committed every request: nothing is left
    that anyone would send again, so the processes can be stopped and the hits counted."""
    await until(lambda: {i for i, _ in hits} >= ids, f"all {len(ids)} requests at the backend")
    await until(lambda: asyncio.to_thread(_committed_all, bus, topic, group), f"group {group} committed all")


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
        await _until_done(hits, {r.id for r in records}, bus, requests, group)
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


def assert_redone_only_in_flight(counts: Counter[str], log: str, cap: int) -> None:
    """Requests sent twice only when partitions moved while they were in flight (a worker
    logs "owns partitions" again), and no more than one worker's concurrency share."""
    redone = sum(n - 1 for n in counts.values())
    if redone:
        assert log.count("owns partitions") > 2, (redone, log[-3000:])
        assert redone <= cap, (redone, cap)


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
        counts = Counter(i for i, _ in hits)
        assert set(counts) == {r.id for r in records}  # every record, none lost
        # Exactly once, unless a worker joined after the other had begun (a slow start on a
        # loaded machine): then what was in flight on the partitions that moved is sent
        # again by their new owner (at-least-once), at most a worker's concurrency share.
        assert_redone_only_in_flight(counts, log, cap=32)
        replayed = [int(x) for x in re.findall(r"replayer stopped: (\d+) records replayed", log)]
        assert len(replayed) == 2 and sum(replayed) == n + sum(counts.values()) - len(counts) and min(replayed) > 0, replayed
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
        counts = Counter(seen)
        assert set(counts) == {r.id for r in records}
        assert_redone_only_in_flight(counts, log, cap=2)
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


def _merged_log_cuts(anchor: Anchor, stamps: list[int], max_gap_ns: int) -> dict[int, int]:
    """Reference: ts -> wall ns cut before it, from the gaps of the whole log in time order."""
    shift, last, out = 0, anchor.log_t0_ns, {}
    for ts in sorted(stamps):
        gap = anchor.wall_delta_ns(ts - last)
        if gap > max_gap_ns:
            shift += gap - max_gap_ns
        out[ts], last = shift, ts
    return out


def _anchors_logged(log: str) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in re.findall(r"schedule anchored: log (\d+) ns -> wall (\d+) ns", log)}


async def test_processes_started_apart_agree_on_one_anchor_without_replay_start(
    kafka_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    """No `replay start`: the first process to get records claims the group's anchor on the
    control topic and the other, joining while it replays, takes it (they anchored 0.9 s
    apart). Plain Kafka URL."""
    hits: list[tuple[str, int]] = []
    url, runner = await _backend(hits)
    requests, results, group = unique("req"), unique("res"), unique("rep")
    bus = open_bus(kafka_url, 4)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bus.ensure_topic(requests, 4)
        bus.ensure_topic(results, 4)
        n, gap = 300, 40 * MS  # 12 s of log at speed 1
        records = _records(n, gap)
        _publish(bus, requests, records)
        cfg = _config(tmp_path, kafka_url, requests, results, group, url)
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        for started in range(2):
            procs.append(subprocess.Popen(_cli("replay", "--config", str(cfg)),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env))
            if not started:  # the second joins while the first is replaying: a rebalance mid-run
                await until(lambda: len(hits) >= 60, "the first process replaying")
        await _until_done(hits, {r.id for r in records}, bus, requests, group)
        logs = _stop(procs)
        reader = bus.reader([requests])
        partition_of = {decode_request(m.value).id: m.partition for batch in read_to_end(reader) for m in batch}
        reader.close()
        anchor = AnchorStore(bus, f"{group}.control").current(group)
    finally:
        _stop(procs)
        bus.close()
        await runner.cleanup()
    assert anchor is not None and not anchor.explicit  # claimed, not set by replay start
    a = anchor.anchor
    for log in logs:
        assert _anchors_logged(log) == {(a.log_t0_ns, a.wall_t0_ns)}, log[-3000:]
    assert sum(_replayed(log) for log in logs) >= n
    assert {i for i, _ in hits} == {r.id for r in records}
    # one schedule: nobody early on the shared anchor (late is allowed: a join moves partitions)
    due = {r.id: a.due_ns(r.ts) for r in records}
    assert min(t - due[i] for i, t in hits) > -1_000_000
    # The join redoes only what the first process had not committed when it gave its
    # partitions up (what was in flight, or done but its commit not yet made): requests of
    # the partitions that moved, on each one run of consecutive requests, each sent twice at
    # most, and in all about what one process has in flight.
    counts = Counter(i for i, _ in hits)
    moved = _owned(logs[1])
    redone = {i for i, c in counts.items() if c > 1}
    assert max(counts.values()) <= 2, counts.most_common(8)
    assert {partition_of[i] for i in redone} <= moved, (sorted(redone), moved)
    order = [r.id for r in records]  # one partition's records are in log order on it
    for p in moved:
        mine = [i for i in order if partition_of[i] == p]
        picked = [k for k, i in enumerate(mine) if i in redone]
        if picked:
            assert picked == list(range(picked[0], picked[-1] + 1)), (p, picked)
    assert len(hits) - n <= 32, counts.most_common(8)  # the config's concurrency
    assert not any("will redo" in log or "commit refused" in log for log in logs)


def _owned(log: str) -> set[int]:
    """The partitions a replayer process owned last (its "owns partitions [...]" line)."""
    found = re.findall(r"replayer owns partitions \[([\d, ]*)\]", log)
    assert found, log[-3000:]
    return {int(x) for x in found[-1].split(",") if x.strip()}


async def test_workers_cut_the_groups_gaps_not_their_own(tmp_path: Path) -> None:
    """--max-gap-seconds with --workers 2: each worker owns one partition; partition A is
    idle for a while that partition B fills, and then the whole log is idle. Only the
    whole log's gap is cut (one worker cut A's own gap and sent its records early)."""
    hits: list[tuple[str, int]] = []
    url, runner = await _backend(hits)
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    bus = open_bus(bus_url, 2)
    try:
        bus.ensure_topic("req", 2)
        key_a, key_b = "10.0.0.1", next(k for k in (f"10.0.0.{i}" for i in range(2, 50))
                                         if zlib.crc32(k.encode()) % 2 != zlib.crc32(b"10.0.0.1") % 2)
        s = 10**9
        stamps = [(key_a if i % 2 else key_b, T0 + i * s // 10) for i in range(20)]  # 0-2 s: both
        stamps += [(key_b, T0 + 2 * s + i * s // 5) for i in range(30)]  # 2-8 s: only B
        stamps += [(key_a if i % 2 else key_b, T0 + 8 * s + i * s // 10) for i in range(10)]  # 8-9 s: both
        stamps += [(key_a if i % 2 else key_b, T0 + 29 * s + i * s // 10) for i in range(10)]  # after 20 s idle
        records = [RequestRecord(id=f"g{i:03d}", ts=ts, method="GET", target=f"/g/{i}", client=client)
                   for i, (client, ts) in enumerate(stamps)]
        _publish(bus, "req", records)
        cfg = _config(tmp_path, bus_url, "req", "res", "g", url)
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        speed, max_gap = 2.0, 0.5
        proc = await asyncio.to_thread(
            subprocess.run,
            _cli("replay", "--config", str(cfg), "--workers", "2", "--speed", str(speed),
                 "--max-gap-seconds", str(max_gap), "--idle-exit", "2"),
            capture_output=True, timeout=120, env=env,
        )
        log = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, log[-3000:]
        anchor = AnchorStore(bus, "g.control").current("g")
    finally:
        bus.close()
        await runner.cleanup()
    replayed = [int(x) for x in re.findall(r"replayer stopped: (\d+) records replayed", log)]
    assert len(replayed) == 2 and min(replayed) > 0, replayed  # each worker had a partition
    assert Counter(i for i, _ in hits) == Counter(r.id for r in records)
    assert anchor is not None
    a = anchor.anchor
    # The group's schedule, from the whole log merged: only 8.9 s -> 29 s is longer than
    # 0.5 s of replay; B fills A's 2-8 s with steps of 0.2 s.
    shift = _merged_log_cuts(a, [r.ts for r in records], int(max_gap * s))
    assert sorted(set(shift.values())) == [0, a.wall_delta_ns(T0 + 29 * s - (T0 + 8_900_000_000)) - int(max_gap * s)]
    due = {r.id: a.due_ns(r.ts, shift[r.ts]) for r in records}
    arrival = dict(hits)
    assert min(arrival[i] - due[i] for i in due) > -1_000_000, sorted((arrival[i] - due[i]) / 1e9 for i in due)[:5]
    first_after = min(r.id for r in records if r.ts >= T0 + 29 * s)
    assert arrival[first_after] < a.due_ns(T0 + 29 * s) - 5 * s  # the whole log's gap was cut
