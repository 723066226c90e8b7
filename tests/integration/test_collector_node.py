"""Node.js fluent loggers (npm) against the real collector, in Message mode with acks:
``fluent-logger`` (one event per ack round trip) and ``@fluent-org/logger`` (which
pipelines events; by default it gives each ack 500 ms, and saw thousands of ack
timeouts when the collector committed each frame on its own). The test gives acks a
generous timeout and counts the commits instead: pipelined frames share them.

The npm packages are installed at test time into a cache directory outside the source
tree (``$SHADOWREPLAY_TEST_CACHE``, default ``~/.cache/shadowreplay-tests``); without
node and npm the tests fail, saying how to install them."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector_harness import RunningCollector, collectors
from shadowreplay.contract.bus.aio import AsyncProducer

pytestmark = pytest.mark.integration

PACKAGES = ("fluent-logger@3.4.1", "@fluent-org/logger@1.0.10")
EVENTS = 10_000

FLUENT_LOGGER = r"""
const logger = require('fluent-logger');
const [port, count] = [Number(process.argv[2]), Number(process.argv[3])];
const sender = logger.createFluentSender('node', {
  host: '127.0.0.1', port, requireAckResponse: true, ackResponseTimeout: 10000,
  timeout: 30, reconnectInterval: 1000, internalLogger: { info() {}, error() {} },
});
let acked = 0, errors = 0;
const firstErrors = [];
for (let i = 0; i < count; i++) {
  sender.emit('access', {
    request_id: `node-${String(i).padStart(6, '0')}`, request_method: 'GET',
    request_uri: `/node/${i}`, host: 'shop.test', status: '200',
  }, (err) => {
    if (err) { errors++; if (firstErrors.length < 5) firstErrors.push(String(err)); } else { acked++; }
    if (acked + errors === count) {
      console.log(JSON.stringify({ acked, errors, firstErrors }));
      sender.end();
      process.exit(0);
    }
  });
}
setTimeout(() => { console.log(JSON.stringify({ acked, errors, firstErrors, stalled: true })); process.exit(1); }, 240000);
"""

FLUENT_ORG_LOGGER = r"""
const { FluentClient } = require('@fluent-org/logger');
const [port, count] = [Number(process.argv[2]), Number(process.argv[3])];
const client = new FluentClient('node', {
  eventMode: 'Message', ack: { ackTimeout: 60000 }, socket: { host: '127.0.0.1', port, timeout: 30000 },
});
let acked = 0, errors = 0;
const firstErrors = [];
const sends = [];
for (let i = 0; i < count; i++) {
  sends.push(client.emit('access', {
    request_id: `node-${String(i).padStart(6, '0')}`, request_method: 'GET',
    request_uri: `/node/${i}`, host: 'shop.test', status: '200',
  }).then(() => { acked++; }, (err) => { errors++; if (firstErrors.length < 5) firstErrors.push(String(err)); }));
}
Promise.all(sends).then(async () => {
  console.log(JSON.stringify({ acked, errors, firstErrors }));
  await client.disconnect();
  process.exit(0);
});
setTimeout(() => { console.log(JSON.stringify({ acked, errors, firstErrors, stalled: true })); process.exit(1); }, 240000);
"""


def _cache_dir() -> Path:
    root = os.environ.get("SHADOWREPLAY_TEST_CACHE") or Path.home() / ".cache" / "shadowreplay-tests"
    return Path(root) / "node"


@pytest.fixture(scope="session")
def node_fluent_logger() -> Path:
    """A directory whose node_modules holds the npm packages."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("this test runs the Node.js fluent-logger client: install node and npm "
                    "(Debian: apt-get install nodejs npm); the npm package is then installed by the test")
    prefix = _cache_dir()
    modules = prefix / "node_modules"
    prefix.mkdir(parents=True, exist_ok=True)
    # One install at a time: the cache is shared by the pytest-xdist workers and by any
    # other test run on this machine.
    with (prefix / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((modules / p.rpartition("@")[0] / "package.json").exists() for p in PACKAGES):
            done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *PACKAGES],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                pytest.fail(f"npm install {' '.join(PACKAGES)} into {prefix} failed: {done.stderr[-2000:]}")
    return prefix


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[RunningCollector]:
    async with collectors(tmp_path, partitions=2) as start:
        yield await start(udp_heartbeat=False)


@pytest.mark.parametrize("client", ["fluent-logger", "@fluent-org/logger"])
async def test_node_logger_sends_10000_events_with_acks_and_no_timeout(
    collector: RunningCollector, node_fluent_logger: Path, tmp_path: Path, client: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commits = 0
    publish_and_flush = AsyncProducer.publish_and_flush

    async def counted(self: AsyncProducer, *args: Any, **kwargs: Any) -> None:
        nonlocal commits
        commits += 1
        await publish_and_flush(self, *args, **kwargs)

    monkeypatch.setattr(AsyncProducer, "publish_and_flush", counted)
    script = tmp_path / "client.js"
    script.write_text(FLUENT_LOGGER if client == "fluent-logger" else FLUENT_ORG_LOGGER, encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), str(collector.port), str(EVENTS),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(node_fluent_logger / "node_modules")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result == {"acked": EVENTS, "errors": 0, "firstErrors": []}, result
    got = await collector.records(EVENTS)
    assert set(got) == {f"node-{i:06d}" for i in range(EVENTS)}
    assert collector.metric("shadow_collector_chunks_acked_total") == EVENTS
    if client == "@fluent-org/logger":  # pipelined: frames that arrive together are committed together
        assert commits < EVENTS / 10, commits
