"""`shadowreplay tail` against a real collector (CollectorServer over a real SQLite bus):
appends, rename and copytruncate rotation, collector and tail restarts, garbage lines —
every line exactly once on the bus."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shadowreplay.collector.metrics import CollectorMetrics
from shadowreplay.collector.server import CollectorServer
from shadowreplay.collector.tail import Tail, TailOptions
from collector_harness import TOPIC, open_sqlite_bus
from shadowreplay.contract.bus.aio import AsyncProducer
from shadowreplay.contract.config import CollectorConfig
from shadowreplay.contract.record import decode_request
from tests.conftest import free_port
from waiting import read_to_end, until

pytestmark = pytest.mark.integration

MARKER = 90_000  # the numbers of end-marker lines (see Harness.wait_for)


def target(n: int) -> str:
    return f"/items/{n}?q=a&q=b"


def line(n: int, fmt: str = "nginx_json") -> str:
    if fmt == "combined":
        return (
            f'10.0.0.{n % 250} - - [10/Oct/2000:13:55:{n % 60:02d} -0700] "GET {target(n)} HTTP/1.1" 200 {n} '
            f'"-" "tail-test/{n}"\n'
        )
    rec = {
        "msec": f"1700000000.{n:03d}",
        "request_id": f"L{n:05d}",
        "remote_addr": "10.0.0.1",
        "request_method": "GET",
        "request_uri": f"/items/{n}",
        "status": "200",
        "http_user_agent": "tail-test",
    }
    return json.dumps(rec) + "\n"


def append(path: Path, *numbers: int, fmt: str = "nginx_json", extra: str = "") -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(line(n, fmt) for n in numbers) + extra)


class Harness:
    """A collector that can be stopped and started again on the same port, a bus reader
    and a tail running in a thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.bus = open_sqlite_bus(tmp_path / "bus.db", partitions=2)
        self.producer = AsyncProducer(self.bus)
        self.consumer = self.bus.consumer([TOPIC], "tail-test")
        self.port = free_port()
        self.server: CollectorServer | None = None
        self.seen: list[str] = []
        self.records: list[object] = []
        self.tail: Tail | None = None
        self.thread: threading.Thread | None = None
        self.state = tmp_path / "tail.state.json"
        self.positions: dict[tuple[str, int], int] = {}  # of self.consumer, which reads without committing
        self.markers: list[str] = []  # the end-marker lines appended by wait_for, as seen on the bus

    async def start_collector(self) -> None:
        config = CollectorConfig(listen=f"127.0.0.1:{self.port}")
        self.server = CollectorServer(config, self.producer, TOPIC, CollectorMetrics(CollectorRegistry()))
        await self.server.start()

    async def stop_collector(self) -> None:
        assert self.server is not None
        await self.server.stop()
        self.server = None

    def start_tail(self, *files: Path, fmt: str = "nginx_json", from_start: bool = True) -> Tail:
        options = TailOptions(
            files=tuple(str(f) for f in files),
            port=self.port,
            tag="tail.test",
            format=fmt,
            state_path=str(self.state),
            batch_lines=7,
            flush_seconds=0.05,
            from_start=from_start,
            poll_seconds=0.02,
            ack_timeout_seconds=5.0,
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.2,
            report_seconds=0.2,
            rotate_wait_seconds=0.2,
        )
        self.tail = Tail(options)
        self.thread = threading.Thread(target=self.tail.run, name="tail", daemon=True)
        self.thread.start()
        return self.tail

    async def stop_tail(self) -> None:
        assert self.tail is not None and self.thread is not None
        self.tail.stop()
        await asyncio.to_thread(self.thread.join, 10)
        assert not self.thread.is_alive()

    def _drain(self) -> None:
        """Read what the bus holds now, to the end of every partition."""
        for m in read_to_end(self.consumer, positions=self.positions):
            r = decode_request(m.value)
            self.records.append(r)
            self.seen.append(r.id if r.id.startswith("L") else r.target)

    async def wait_for(self, expected: list[str]) -> None:
        """Until the bus holds ``expected``, and nothing else: once it arrived, an end marker
        line is appended to each file the tail follows (that ends with a whole line) and
        waited for. The tail ships a file's lines in order and resends a chunk until it is
        acknowledged, so a repeat of anything before a marker is on the bus before it."""
        await self._until_seen(len(expected) + len(self.markers), expected)
        if self.tail is not None and self.thread is not None and self.thread.is_alive():
            fmt = self.tail.options.format
            for name in self.tail.options.files:
                path = Path(name)
                if path.exists() and path.read_bytes().endswith(b"\n"):
                    n = MARKER + len(self.markers)
                    append(path, n, fmt=fmt)
                    self.markers.append(ids([n])[0] if fmt == "nginx_json" else target(n))
            await self._until_seen(len(expected) + len(self.markers), expected)
        await asyncio.to_thread(self._drain)
        want = expected + self.markers
        assert sorted(self.seen) == sorted(want), (
            f"missing {sorted(set(want) - set(self.seen))[:10]}, "
            f"repeated {sorted(x for x in set(self.seen) if self.seen.count(x) > 1)[:10]}, "
            f"unexpected {sorted(set(self.seen) - set(want))[:10]}"
        )

    async def _until_seen(self, n: int, expected: list[str]) -> None:
        async def enough() -> bool:
            await asyncio.to_thread(self._drain)
            return len(self.seen) >= n

        try:
            await until(enough, f"{n} records on the bus")
        except AssertionError:
            raise AssertionError(f"missing {sorted(set(expected) - set(self.seen))[:10]}") from None

    async def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            await self.stop_tail()
        if self.server is not None:
            await self.stop_collector()
        self.consumer.close()
        await self.producer.close()
        self.bus.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    await h.start_collector()
    try:
        yield h
    finally:
        await h.close()


def ids(numbers: range | list[int]) -> list[str]:
    return [f"L{n:05d}" for n in numbers]


async def test_appends_rotations_and_garbage(harness: Harness) -> None:
    log = harness.tmp / "access.log"
    append(log, *range(0, 10))
    tail = harness.start_tail(log)
    await harness.wait_for(ids(range(0, 10)))
    # Appends, a partial line completed later, and garbage in between.
    append(log, *range(10, 30), extra="this is not json\n{\"half\": \n")
    with log.open("a") as fh:
        fh.write(line(30)[:20])
    await harness.wait_for(ids(range(0, 30)))
    with log.open("a") as fh:
        fh.write(line(30)[20:])
    await harness.wait_for(ids(range(0, 31)))
    assert tail.stats.rejected == {"bad_json": 2}

    # Rename rotation: the writer keeps appending to the old file for a moment.
    os.rename(log, harness.tmp / "access.log.1")
    append(harness.tmp / "access.log.1", 31, 32)
    append(log, *range(33, 40))
    await harness.wait_for(ids(range(0, 40)))
    assert tail.stats.rotations == 1

    # copytruncate: copy, truncate in place, keep writing (fewer bytes than before).
    shutil.copy(log, harness.tmp / "access.log.2")
    with log.open("r+") as fh:
        fh.truncate(0)
    append(log, 40, 41)
    await harness.wait_for(ids(range(0, 42)))
    assert tail.stats.truncations == 1
    assert tail.stats.summary().endswith("rejected (bad_json: 2); followed 1 rotations, 1 truncations")

    # The state file holds the acknowledged position of the current file.
    await harness.stop_tail()
    state = json.loads(harness.state.read_text())["files"][str(log)]
    assert state["inode"] == log.stat().st_ino and state["offset"] == log.stat().st_size
    # Every record came through with its headers and nanosecond time.
    first = next(r for r in harness.records if r.id == "L00001")  # type: ignore[attr-defined]
    assert first.ts == 1700000000_001000000 and first.header("User-Agent") == "tail-test"  # type: ignore[attr-defined]


async def test_collector_restart_mid_stream(harness: Harness) -> None:
    log = harness.tmp / "access.log"
    append(log, *range(0, 20))
    tail = harness.start_tail(log)
    await harness.wait_for(ids(range(0, 20)))
    await harness.stop_collector()
    append(log, *range(20, 50))
    await until(lambda: tail.stats.retries >= 3, "the tail to retry 3 times")  # holding its place
    await harness.start_collector()
    append(log, *range(50, 60))
    await harness.wait_for(ids(range(0, 60)))


async def test_tail_restart_neither_skips_nor_repeats(harness: Harness) -> None:
    log = harness.tmp / "access.log"
    append(log, *range(0, 15))
    harness.start_tail(log)
    await harness.wait_for(ids(range(0, 15)))
    await harness.stop_tail()
    # Lines written while the tail is down, then a rotation while it is down.
    append(log, *range(15, 25))
    os.rename(log, harness.tmp / "access.log.1")
    append(log, *range(25, 32))
    # Restarting without --from-start: positions come from the state file.
    harness.start_tail(log, from_start=False)
    await harness.wait_for(ids(range(0, 32)))
    await harness.stop_tail()
    append(log, *range(32, 40))
    harness.start_tail(log, from_start=False)
    await harness.wait_for(ids(range(0, 40)))


async def test_new_files_start_at_end_unless_from_start(harness: Harness) -> None:
    log = harness.tmp / "access.log"
    other = harness.tmp / "later.log"
    append(log, *range(0, 5))  # before the tail ever saw the file: skipped
    tail = harness.start_tail(log, other, from_start=False)
    await until(lambda: tail._started, "the tail to open the files it follows")  # log at its end
    append(log, *range(5, 10))
    append(other, *range(10, 13))  # created after the tail started: read from its start
    await harness.wait_for(ids(range(5, 13)))


async def test_combined_lines(harness: Harness) -> None:
    log = harness.tmp / "access.log"
    append(log, *range(0, 12), fmt="combined", extra="garbage\n")
    tail = harness.start_tail(log, fmt="combined")
    await harness.wait_for([target(n) for n in range(12)])
    r = harness.records[0]
    assert r.method == "GET" and r.client is not None and r.client.startswith("10.0.0.")  # type: ignore[attr-defined]
    assert r.header("User-Agent", ).startswith("tail-test/")  # type: ignore[attr-defined]
    assert r.ts % 10**9 == 0 and 971211300 * 10**9 <= r.ts < 971211400 * 10**9  # type: ignore[attr-defined]
    await until(lambda: tail.stats.rejected_total >= 1, "the garbage line rejected")
    assert tail.stats.rejected == {"bad_combined": 1}


# -- the zipapp, run by the system python3 in isolated mode --------------------------------


async def test_pyz_runs_with_bare_system_python(harness: Harness) -> None:
    import subprocess
    import sys
    import zipfile

    from shadowreplay.collector.pyz import build

    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.fail("no system python3 in /usr/bin or /bin: install Debian's python3 (apt-get install python3)")
    assert not python.startswith(sys.prefix)
    pyz = build(harness.tmp / "shadowreplay-tail.pyz")
    names = zipfile.ZipFile(pyz).namelist()
    assert "msgpack/fallback.py" in names and not any(n.startswith(("orjson", "aiohttp")) for n in names)
    assert not any(n.endswith(".so") for n in names)

    log = harness.tmp / "access.log"
    append(log, *range(0, 25), extra="garbage line\n")
    proc = subprocess.Popen(
        [python, "-I", str(pyz), str(log), "--collector", f"127.0.0.1:{harness.port}", "--from-start",
         "--state", str(harness.tmp / "pyz.state.json"), "--batch-lines", "10", "--flush-seconds", "0.05",
         "--report-seconds", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        await harness.wait_for(ids(range(0, 25)))
        append(log, *range(25, 30))
        await harness.wait_for(ids(range(0, 30)))
    finally:
        proc.terminate()
        out, err = await asyncio.to_thread(proc.communicate, timeout=10)
    assert proc.returncode == 0, err.decode()
    assert b"30 lines shipped" in err and b"1 rejected (bad_json: 1)" in err
    state = json.loads((harness.tmp / "pyz.state.json").read_text())
    assert state["files"][str(log)]["offset"] == log.stat().st_size
