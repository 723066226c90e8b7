"""Faults against real processes: nothing the collector acknowledged is lost.

Every stage runs as ``python -m shadowreplay.cli collect|replay`` so it can be SIGKILLed,
SIGSTOPped or starved of disk; clients are the project's own acking forward client
(collector/forward_client.py); backends are bench/backend.py in another process, counting
each replayed request by its X-Shadow-Replay id. Each test prints one ``RELIABILITY``
line with its figures (run with ``-s`` to see them; docs/reliability.md describes
each fault and what it requires). The guarantee under test is at-least-once: duplicates are allowed, counted
and bounded; a loss fails the test.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from fault_procs import (
    AckingClient,
    Backends,
    Stage,
    duplicates,
    free_port,
    percentile,
    report,
    request_ids,
    results,
    toml_config,
    wait_until,
)
from shadowreplay.contract.bus import open_bus
from shadowreplay.contract.record import RequestRecord, encode_request
from waiting import DEADLINE_SECONDS

pytestmark = pytest.mark.integration

KAFKA_OPTS = (
    "max_poll_interval_ms=5000&session_timeout_ms=6000&heartbeat_interval_ms=500&request_timeout_ms=10000"
)


def topics_config(tmp_path: Path, **extra: dict[str, object]) -> tuple[Path, str, str]:
    """A config file with topics no other test uses; (path, requests topic, results topic)."""
    suffix = uuid.uuid4().hex[:10]
    req, res = f"req-{suffix}", f"res-{suffix}"
    sections: dict[str, dict[str, object]] = {"bus": {"requests_topic": req, "results_topic": res, "partitions": 2}}
    sections.update(extra)
    return toml_config(tmp_path / f"cfg-{suffix}.toml", sections), req, res


def chunked(prefix: str, clients: int, chunks: int, per_chunk: int) -> list[list[list[str]]]:
    return [[[f"{prefix}-c{c}-k{k}-{i}" for i in range(per_chunk)] for k in range(chunks)] for c in range(clients)]


def preload(bus_url: str, topic: str, paths: list[str], prefix: str) -> list[str]:
    """Publish one RequestRecord per path straight onto the bus (1 ms apart in log time)."""
    bus = open_bus(bus_url, 2)
    bus.ensure_topic(topic, 2)
    producer = bus.producer()
    t0 = time.time_ns()
    ids = []
    for i, path in enumerate(paths):
        rid = f"{prefix}-{i:05d}"
        rec = RequestRecord(id=rid, ts=t0 + i * 1_000_000, method="GET", target=path, host="shop.example.com",
                            client="10.0.0.1")
        producer.publish(topic, encode_request(rec), key=rid.encode(), timestamp_ns=rec.ts)
        ids.append(rid)
    producer.flush()
    producer.close()
    bus.close()
    return ids


@pytest.fixture
def stages(tmp_path: Path) -> Iterator[list[Stage]]:
    """Stages appended here are stopped (SIGTERM, then SIGKILL) when the test ends."""
    started: list[Stage] = []
    yield started
    for stage in reversed(started):
        stage.stop(timeout=15)


@pytest.fixture
def backends() -> Iterator[Callable[[list[str]], Backends]]:
    made: list[Backends] = []

    def make(roles: list[str]) -> Backends:
        b = Backends(roles)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


# -- collector SIGKILLed mid-stream -------------------------------------------------------


def test_collector_sigkill_loses_no_acked_record(bus_url: str, tmp_path: Path, stages: list[Stage]) -> None:
    config, req, _ = topics_config(tmp_path)
    port = free_port()
    collector = Stage("collect", [], tmp_path, config=config, bus=bus_url, listen_port=port)
    stages.append(collector)
    collector.wait_ready()
    plan = chunked("kill", clients=4, chunks=150, per_chunk=20)
    deadline = time.monotonic() + 90
    clients = [AckingClient(port, chunks, deadline=deadline, pause_seconds=0.01, timeout_seconds=3)
               for chunks in plan]
    for c in clients:
        c.start()
    wait_until(lambda: sum(len(c.acked) for c in clients) >= 2000, 30, "2,000 acked records before the kill")
    collector.kill()
    killed_at = time.monotonic()
    acked_at_kill = sum(len(c.acked) for c in clients)
    errors_at_kill = [len(c.errors) for c in clients]
    # Down until every client has seen it down (a failed send or connect), then restarted.
    wait_until(lambda: all(len(c.errors) > n or c.sent_all for c, n in zip(clients, errors_at_kill, strict=True)),
               DEADLINE_SECONDS, "every client to notice the collector is gone")
    down_seconds = time.monotonic() - killed_at
    collector.restart()
    collector.wait_ready()
    wait_until(lambda: any(t > killed_at for c in clients for t in c.ack_times), DEADLINE_SECONDS, "an ack after the restart")
    recovered = min(t for c in clients for t in c.ack_times if t > killed_at) - killed_at
    for c in clients:
        c.join(timeout=max(1.0, deadline - time.monotonic()))
    assert all(c.sent_all for c in clients), [c.errors[:3] for c in clients]
    acked = {rid for c in clients for rid in c.acked}
    on_bus = request_ids(bus_url, req, want=len(acked))
    lost = acked - set(on_bus)
    dupes = duplicates(on_bus)
    report(
        f"collector SIGKILL ({bus_url.split(':')[0]})",
        acked=len(acked), acked_before_kill=acked_at_kill, lost=len(lost), duplicates=dupes,
        chunks_resent=sum(c.resends for c in clients), down_seconds=down_seconds, recover_seconds=recovered,
    )
    assert not lost, f"{len(lost)} acknowledged records are not on the bus, e.g. {sorted(lost)[:5]}"
    # At-least-once: a chunk in flight when the collector died may be stored and resent.
    assert set(on_bus) == acked
    assert dupes <= 4 * 20, "more duplicates than one chunk in flight per client"


# -- the bus goes away for 10 s -----------------------------------------------------------


def stream_through_outage(
    port: int, prefix: str, outage: Callable[[], float], *, chunks_before: int = 20, chunks_after: int = 20
) -> tuple[list[AckingClient], float, float]:
    """Two acking clients stream (about 100 records/s each, paced); once each had
    ``chunks_before`` chunks acknowledged, ``outage()`` runs (it blocks for the outage and
    returns the monotonic time the bus came back); once each had ``chunks_after`` more
    acknowledged after that, the clients stop. (clients, outage start, bus back)."""
    plan = chunked(prefix, clients=2, chunks=100_000, per_chunk=10)
    clients = [AckingClient(port, chunks, deadline=time.monotonic() + 300, pause_seconds=0.1, timeout_seconds=30)
               for chunks in plan]
    for c in clients:
        c.start()
    wait_until(lambda: all(len(c.ack_times) >= chunks_before for c in clients), DEADLINE_SECONDS, "acks before the outage")
    started = time.monotonic()
    back = outage()
    wait_until(lambda: all(sum(t > back for t in c.ack_times) >= chunks_after for c in clients), DEADLINE_SECONDS,
               "acks after the outage")
    for c in clients:
        c.stop_event.set()
    for c in clients:
        c.join(timeout=40)
        assert not c.is_alive(), "a client is still waiting for an ack 40 s after the stream ended"
    return clients, started, back


def outage_figures(clients: list[AckingClient], started: float, back: float) -> tuple[int, float, float]:
    """(acks while the bus was away (after a 1 s grace), longest ack gap, first ack after)."""
    times = sorted(t for c in clients for t in c.ack_times)
    during = sum(1 for t in times if started + 1.0 < t < back)
    gap = max(b - a for a, b in zip(times, times[1:], strict=False))
    after = min(t for t in times if t > back) - back
    return during, gap, after


def check_replayed(backend: Backends, acked: set[str], timeout: float) -> dict[str, int]:
    def all_seen() -> bool:
        counts, _ = backend.stats("candidate")
        return acked <= set(counts)

    try:
        wait_until(all_seen, timeout, "every acknowledged record to be replayed", 0.5)
    except AssertionError:
        counts, _ = backend.stats("candidate")
        missing = acked - set(counts)
        raise AssertionError(f"{len(missing)} acknowledged records never replayed, e.g. {sorted(missing)[:5]}") from None
    return backend.stats("candidate")[0]


def test_kafka_broker_frozen_10s(
    start_broker: Callable[[], object], tmp_path: Path, stages: list[Stage], backends: Callable[[list[str]], Backends]
) -> None:
    """Tansu keeps its data in memory only, so a stopped and restarted broker comes back
    empty, and "nothing acknowledged is lost" could not hold for any client. The outage is
    therefore a SIGSTOP/SIGCONT of the broker process: for 10 s it accepts nothing and
    answers nothing (as a partitioned or hung broker), then carries on with its data."""
    broker = start_broker()
    bus = f"kafka://{broker.bootstrap}?{KAFKA_OPTS}"  # type: ignore[attr-defined]
    config, req, _ = topics_config(tmp_path)
    be = backends(["candidate"])
    port = free_port()
    collector = Stage("collect", [], tmp_path, config=config, bus=bus, listen_port=port)
    replayer = Stage("replay", ["--candidate", be.url("candidate"), "--group", f"g-{uuid.uuid4().hex[:8]}"],
                     tmp_path, config=config, bus=bus)
    stages += [collector, replayer]
    collector.wait_ready()
    replayer.wait_ready()
    pid = broker.proc.pid  # type: ignore[attr-defined]
    cont_wall: list[int] = []

    def freeze() -> float:
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(10)
        finally:
            os.kill(pid, signal.SIGCONT)
        cont_wall.append(time.time_ns())
        return time.monotonic()

    clients, started, back = stream_through_outage(port, "frozen", freeze)
    during, gap, ack_recover = outage_figures(clients, started, back)
    acked = {rid for c in clients for rid in c.acked}
    on_bus = request_ids(bus, req, want=len(acked), timeout=60)
    lost = acked - set(on_bus)
    counts = check_replayed(be, acked, 90) if not lost else {}
    _, first_ns = be.stats("candidate")
    replay_recover = (min((t for t in first_ns.values() if t > cont_wall[0]), default=0) - cont_wall[0]) / 1e9
    report(
        "kafka broker frozen 10 s (SIGSTOP)",
        acked=len(acked), lost=len(lost), bus_duplicates=duplicates(on_bus),
        replay_duplicates=sum(n - 1 for n in counts.values()), acks_during_outage=during,
        longest_ack_gap_seconds=gap, ack_recover_seconds=ack_recover, replay_recover_seconds=replay_recover,
        chunks_resent=sum(c.resends for c in clients),
    )
    assert not lost, f"{len(lost)} acknowledged records are not on the bus, e.g. {sorted(lost)[:5]}"
    assert during == 0, "the collector acknowledged chunks while the broker was frozen"
    assert gap >= 9.0, "the clients were not held back during the outage"
    assert collector.proc.poll() is None and replayer.proc.poll() is None
    assert max(counts.values()) <= 2


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs: a disk that can really fill up (needs root, as this sandbox has)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                       check=True, capture_output=True, timeout=20)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        pytest.fail(f"the full-disk test mounts a small tmpfs and needs root (CAP_SYS_ADMIN): {exc} {err.decode()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True, timeout=20)


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the disk is full; the bytes written."""
    block = b"\0" * (64 * 1024)
    written = 0
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(block)
            except OSError:
                break
        for size in (4096, 512, 1):  # the last scraps
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError:
                    break
    return written


def test_sqlite_disk_full_then_freed(
    small_disk: Path, tmp_path: Path, stages: list[Stage], backends: Callable[[list[str]], Backends]
) -> None:
    bus = f"sqlite:///{small_disk / 'bus.db'}"
    config, req, _ = topics_config(tmp_path)
    be = backends(["candidate"])
    port = free_port()
    collector = Stage("collect", [], tmp_path, config=config, bus=bus, listen_port=port)
    replayer = Stage("replay", ["--candidate", be.url("candidate"), "--group", "g-disk"],
                     tmp_path, config=config, bus=bus)
    stages += [collector, replayer]
    collector.wait_ready()
    replayer.wait_ready()
    filler = small_disk / "filler"
    freed_wall: list[int] = []

    def disk_full() -> float:
        fill(filler)
        try:
            time.sleep(8)
        finally:
            filler.unlink()
        freed_wall.append(time.time_ns())
        return time.monotonic()

    clients, started, back = stream_through_outage(port, "disk", disk_full)
    during, gap, ack_recover = outage_figures(clients, started, back)
    acked = {rid for c in clients for rid in c.acked}
    on_bus = request_ids(bus, req, want=len(acked))
    lost = acked - set(on_bus)
    log = collector.log()
    refused = [line for line in log.splitlines() if "without ack" in line]
    replayer_alive = replayer.proc.poll() is None
    counts = check_replayed(be, acked, 60) if not lost and replayer_alive else {}
    report(
        "sqlite bus, disk full 8 s",
        acked=len(acked), lost=len(lost), bus_duplicates=duplicates(on_bus),
        replay_duplicates=sum(n - 1 for n in counts.values()), acks_during_outage=during,
        longest_ack_gap_seconds=gap, ack_recover_seconds=ack_recover, refusals_logged=len(refused),
        chunks_resent=sum(c.resends for c in clients),
    )
    assert not lost, f"{len(lost)} acknowledged records are not on the bus, e.g. {sorted(lost)[:5]}"
    # SQLite goes on writing into pages its files already hold, so a few chunks may still
    # be acknowledged (truthfully) after the disk filled; then the acks stop.
    assert gap >= 3.0, "the clients were not held back while the disk was full"
    assert refused and "full" in refused[0], f"no clear log line about the refusal:\n{log[-2000:]}"
    # logged when the outage starts and when it ends, not once per refused chunk (SQLite
    # may accept a chunk into freed pages mid-outage, which ends one outage and starts another)
    assert len(refused) <= 3, f"{len(refused)} refusals logged: the outage should be logged once"
    assert "the bus accepts records again" in log
    assert collector.proc.poll() is None, "the collector died of a full disk"
    assert duplicates(on_bus) <= 2 * 10, "refused chunks were stored and then stored again when resent"
    assert replayer_alive, f"the replayer died of a full disk:\n{replayer.log()[-3000:]}"
    assert max(counts.values()) <= 2


# -- the replayer SIGKILLed mid-replay ----------------------------------------------------


def test_replayer_sigkill_resumes_from_committed_offsets(
    bus_url: str, tmp_path: Path, stages: list[Stage], backends: Callable[[list[str]], Backends]
) -> None:
    config, req, res = topics_config(tmp_path)
    ids = preload(bus_url, req, [f"/items/{i}" for i in range(600)], "rk")
    be = backends(["candidate"])
    replayer = Stage("replay", ["--candidate", be.url("candidate"), "--rate", "100", "--group",
                                f"g-{uuid.uuid4().hex[:8]}"], tmp_path, config=config, bus=bus_url)
    stages.append(replayer)
    wait_until(lambda: len(be.stats("candidate")[0]) >= 250, 60, "250 requests replayed before the kill", 0.1)
    replayer.kill()
    killed_ns = time.time_ns()
    seen_at_kill = len(be.stats("candidate")[0])
    replayer.restart()
    counts = check_replayed(be, set(ids), 90)
    _, first_ns = be.stats("candidate")
    assert replayer.stop() == 0  # a graceful stop: after it nothing more is written
    on_results = [r.id for r in results(bus_url, res, want=len(ids))]
    dupes = {rid: n for rid, n in counts.items() if n > 1}
    recover = (min(t for t in first_ns.values() if t > killed_ns) - killed_ns) / 1e9
    report(
        f"replayer SIGKILL ({bus_url.split(':')[0]})",
        records=len(ids), replayed_before_kill=seen_at_kill, lost=len(set(ids) - set(counts)),
        replayed_twice=len(dupes), result_duplicates=duplicates(on_results), recover_seconds=recover,
    )
    assert set(counts) == set(ids)
    assert max(counts.values()) <= 2, "a request was replayed more than twice"
    assert set(on_results) == set(ids), "a replayed request has no result on the bus"
    # Redone: only what was sent but not yet committed when the process died.
    assert len(dupes) < seen_at_kill


# -- targets that misbehave --------------------------------------------------------------

FAULTS = {0: "/hang", 1: "/reset", 2: "/garbage", 3: "/big"}


def test_misbehaving_target_does_not_slow_the_healthy_one(
    tmp_path: Path, stages: list[Stage], backends: Callable[[list[str]], Backends]
) -> None:
    bus = f"sqlite:///{tmp_path / 'bus.db'}"
    config, req, res = topics_config(tmp_path)
    n, rate, timeout = 300, 50, 2
    paths = [f"{FAULTS.get(i % 10, '/ok')}/{i}" for i in range(n)]
    ids = preload(bus, req, paths, "bad")
    be = backends(["candidate", "baseline:faulty"])
    replayer = Stage("replay", ["--candidate", be.url("candidate"), "--baseline", be.url("baseline"),
                                "--rate", str(rate), "--timeout", str(timeout), "--group", "g-bad"],
                     tmp_path, config=config, bus=bus)
    stages.append(replayer)
    replayer.wait_ready()
    wait_until(lambda: replayer.metric("shadow_replay_records_total") >= n, DEADLINE_SECONDS, "every record replayed")
    timeouts = replayer.metric("shadow_replay_errors_total", target="baseline", kind="timeout")
    assert replayer.stop() == 0  # a graceful stop: after it nothing more is written
    got = results(bus, res, want=n)
    assert sorted(r.id for r in got) == sorted(ids)
    _, arrived = be.stats("candidate")
    kinds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    lags = []
    for r in got:
        cand, base = r.responses["candidate"], r.responses["baseline"]
        assert cand.status == 200 and cand.error is None, (r.id, cand)
        kind = r.request.target.split("/")[1]
        kinds[kind][base.error or ("truncated" if base.truncated else str(base.status))] += 1
        lags.append((arrived[r.id] - r.scheduled) / 1e9)
    span = (max(arrived.values()) - min(arrived.values())) / 1e9
    report(
        "misbehaving baseline (hang, reset, garbage, 10 MB)",
        results=len(got), healthy_lag_p50_ms=percentile(lags, 0.5) * 1e3, healthy_lag_p99_ms=percentile(lags, 0.99) * 1e3,
        healthy_span_seconds=span, expected_span_seconds=(n - 1) / rate,
        kinds={k: dict(v) for k, v in sorted(kinds.items())},
    )
    assert kinds["hang"] == {"timeout": n // 10}
    assert kinds["reset"] == {"reset": n // 10}
    assert kinds["garbage"] == {"protocol": n // 10}
    assert kinds["big"] == {"truncated": n // 10}
    assert kinds["ok"] == {"200": n - 4 * (n // 10)}
    # Order, not pace (the healthy target's lag and span are on the RELIABILITY line;
    # bench/replayer.py measures pacing accuracy): while a baseline request hung (it cannot
    # end before its timeout), the candidate got every request scheduled in the second
    # after it. Waiting on the hang first would put them after its timeout.
    by_index = sorted(got, key=lambda r: r.scheduled)
    for k, hung in enumerate(by_index):
        if hung.request.target.startswith("/hang"):
            hang_ends_no_sooner = hung.sent + timeout * 10**9
            during = [r for r in by_index[k + 1:] if r.scheduled <= hung.scheduled + 10**9]
            assert during and all(arrived[r.id] < hang_ends_no_sooner for r in during), hung.id
    assert timeouts == n // 10


# -- a storm of bad connections -----------------------------------------------------------


def bad_connection(port: int, kind: int) -> None:
    """One malformed client; the collector must close it (or it gives up after 5 s)."""
    payloads = [
        b"",  # connect and close
        b"\xc1\xc1\xc1 not msgpack at all",
        msgpack.packb(12345),  # valid msgpack, not a frame
        msgpack.packb(["tag", "not entries", {"chunk": "x"}]),
        b"\x93\xa3tag\xc6\x7f\xff\xff\xff",  # [tag, bin32 of 2 GB ...: a huge frame announced
        b"\xdd\xff\xff\xff\xff" + b"\x90" * 1000,  # an array of 4 billion elements
        b"\x91" * 100_000,  # nesting far too deep
        msgpack.packb(["tag", [[1, {"a": 1}]] * 3, {"chunk": "y"}])[:-5],  # truncated
    ]
    data = payloads[kind % len(payloads)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            if data:
                s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
    except OSError:
        pass  # reset by the collector: fine


def test_bad_input_storm(tmp_path: Path, stages: list[Stage]) -> None:
    bus = f"sqlite:///{tmp_path / 'bus.db'}"
    config, req, _ = topics_config(tmp_path)
    port = free_port()
    collector = Stage("collect", [], tmp_path, config=config, bus=bus, listen_port=port)
    stages.append(collector)
    collector.wait_ready()
    collector.sample()
    rss_before = collector.peak_rss_kb
    plan = chunked("storm", clients=4, chunks=100, per_chunk=20)
    clients = [AckingClient(port, chunks, deadline=time.monotonic() + 120, pause_seconds=0.01, timeout_seconds=10)
               for chunks in plan]
    for c in clients:
        c.start()
    bad_count = 1000
    counter = iter(range(bad_count))
    lock = threading.Lock()

    def storm() -> None:
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            bad_connection(port, k)

    t0 = time.monotonic()
    storms = [threading.Thread(target=storm, daemon=True) for _ in range(16)]
    for t in storms:
        t.start()
    for t in storms:
        t.join(timeout=120)
    storm_seconds = time.monotonic() - t0
    for c in clients:
        c.join(timeout=120)
    assert all(c.sent_all for c in clients), [c.errors[:3] for c in clients]
    # Still answering: a fresh client is acknowledged at once.
    t1 = time.monotonic()
    late = AckingClient(port, [["after-storm"]], deadline=time.monotonic() + 10, timeout_seconds=5)
    late.run()
    answer_seconds = time.monotonic() - t1
    assert late.acked == ["after-storm"]
    collector.sample()
    acked = {rid for c in clients for rid in c.acked} | {"after-storm"}
    on_bus = request_ids(bus, req, want=len(acked))
    closed = collector.metric("shadow_collector_connections_total")
    report(
        "bad input storm (1,000 malformed connections)",
        good_records=len(acked), lost=len(acked - set(on_bus)), duplicates=duplicates(on_bus),
        storm_seconds=storm_seconds, connections=int(closed), peak_rss_mb=collector.peak_rss_kb / 1024,
        rss_before_mb=rss_before / 1024, ack_after_storm_seconds=answer_seconds,
        decode_errors=int(collector.metric("shadow_collector_decode_errors_total")),
    )
    assert acked <= set(on_bus)
    assert set(on_bus) == acked, "a record from a malformed connection reached the bus"
    assert closed >= bad_count + 4
    assert collector.peak_rss_kb - rss_before < 100 * 1024, "the storm grew the collector by more than 100 MB"
    assert collector.proc.poll() is None
