"""Headless Chromium for the page tests, driven over the DevTools protocol.

``chromium`` (a fixture: import it into a test module) starts Debian's ``chromium`` with
``--headless --no-sandbox --disable-gpu --disable-background-networking`` on about:blank
and yields the DevTools base URL and an aiohttp session; ``open_page`` attaches to its
page target. A machine without Chromium fails the test with a message saying how to
install it.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from waiting import DEADLINE_SECONDS, until

CHROMIUM_HINT = "install chromium (make test installs it via tests/system-deps.sh)"


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(CHROMIUM_HINT)


class Browser:
    """One headless Chromium, driven over the DevTools protocol (one page target)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send_str(orjson.dumps({"id": msg_id, "method": method, "params": params}).decode())
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            msg = await self.ws.receive(timeout=DEADLINE_SECONDS)
            assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
            data = orjson.loads(msg.data)
            if data.get("id") == msg_id:
                assert "error" not in data, data
                return data["result"]  # type: ignore[no-any-return]
        raise AssertionError(f"no answer to {method}")

    async def js(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = DEADLINE_SECONDS) -> Any:
        """The value of ``expression`` once it is truthy."""
        value: Any = None

        async def truthy() -> bool:
            nonlocal value
            value = await self.js(expression)
            return bool(value)

        await until(truthy, expression, timeout_seconds=seconds, interval_seconds=0.05)
        return value


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """Start headless Chromium on about:blank; yields the DevTools HTTP base URL."""
    binary = chromium_binary()
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    proc = subprocess.Popen(
        [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1", "--window-size=1400,1000", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"

        def started() -> bool:
            assert proc.poll() is None, f"chromium exited with {proc.returncode}: {CHROMIUM_HINT}"
            return port_file.exists() and bool(port_file.read_text().strip())

        await until(started, "chromium to write DevToolsActivePort", interval_seconds=0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            yield f"http://127.0.0.1:{port}", session
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def open_page(devtools: str, session: aiohttp.ClientSession) -> tuple[Browser, aiohttp.ClientWebSocketResponse]:
    async with session.get(f"{devtools}/json/list") as r:
        targets = await r.json()
    page = next(t for t in targets if t["type"] == "page")
    ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
    return Browser(ws), ws
