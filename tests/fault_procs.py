"""Helpers for tests that run shadowreplay stages as real processes and hurt them.

A ``Stage`` is ``python -m shadowreplay.cli <command> ...`` with its stderr in a file (so a
test can read its log lines), its metrics on a loopback port, and its peak RSS and CPU
time readable from /proc. ``Backends`` is bench/backend.py in another process. An
``AckingClient`` streams acknowledged chunks with the project's own forward client and
resends a chunk until it is acknowledged, recording what it saw acknowledged and when.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

import waiting

from shadowreplay.collector.forward_client import ForwardClient, ForwardClientError
from shadowreplay.contract.bus import open_bus
from shadowreplay.contract.record import decode_request, decode_result
from waiting import DEADLINE_SECONDS, read_to_end

ROOT = Path(__file__).resolve().parent.parent
BACKEND_SCRIPT = ROOT / "bench" / "backend.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``cond`` until truthy; the seconds it took. AssertionError after ``timeout``."""
    t0 = time.monotonic()
    waiting.wait_until(cond, what, timeout_seconds=timeout, interval_seconds=interval)
    return time.monotonic() - t0


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def toml_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a small TOML file: ``{"bus": {...}, "comparer.store": {...}}``."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return orjson.dumps(v).decode()
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(type(v))

    lines: list[str] = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in keys.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Stage:
    """One ``shadowreplay`` process (``collect``, ``replay``, ``compare`` or ``run``)."""

    def __init__(
        self,
        command: str,
        args: Iterable[str],
        log_dir: Path,
        *,
        config: Path | None = None,
        bus: str,
        listen_port: int | None = None,
        log_level: str = "INFO",
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        self.metrics_port = free_port()
        self.listen_port = listen_port
        argv = [sys.executable, "-m", "shadowreplay.cli", "--log-level", log_level, command, "--bus", bus,
                "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        if config is not None:
            argv += ["--config", str(config)]
        if listen_port is not None:
            argv += ["--listen", f"127.0.0.1:{listen_port}"]
        argv += list(args)
        self.argv = argv
        self.log_path = log_dir / f"{command}-{uuid.uuid4().hex[:6]}.log"
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = self._spawn()
        self.peak_rss_kb = 0
        self.cpu_seconds = 0.0

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as err:
            return subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=self._env)

    def restart(self) -> None:
        """Start the same command again (after a kill), logging to the same file."""
        assert self.proc.poll() is not None, "restart() of a running stage"
        self.proc = self._spawn()

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Until /readyz answers 200 (the pipeline is up and the collector listens)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.command} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return http_get(f"http://127.0.0.1:{self.metrics_port}/readyz", 2.0)[0] == 200

        return wait_until(ready, timeout, f"{self.command} to be ready", 0.1)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0 if absent)."""
        status, body = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        if status != 200:
            raise AssertionError(f"{self.command}: /metrics answered {status}")
        total = 0.0
        for line in body.decode().splitlines():
            if not (line.startswith(name + "{") or line.startswith(name + " ")):
                continue
            head, _, val = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(val)
        return total

    def sample(self) -> None:
        """Read peak RSS (VmHWM) and CPU seconds from /proc while the process lives."""
        pid = self.proc.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
        fields = stat.rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        self.cpu_seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, as a crash (or the OOM killer) would."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop), then SIGKILL after ``timeout``; the exit code."""
        self.sample()
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class Backends:
    """bench/backend.py in its own process: ``Backends(["candidate", "baseline:faulty"])``."""

    def __init__(self, roles: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BACKEND_SCRIPT), *roles], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"backend.py did not start: {err[-2000:]}")
        self.ports: dict[str, int] = orjson.loads(line)

    def url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.ports[role]}"

    def stats(self, role: str) -> tuple[dict[str, int], dict[str, int]]:
        """(id → times received, id → first arrival ns) of one role."""
        status, body = http_get(self.url(role) + "/__stats", 10.0)
        assert status == 200, f"backend {role}: /__stats answered {status}"
        data = orjson.loads(body)
        return data["counts"], data["first_ns"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def nginx_line(rid: str, *, path: str | None = None, method: str = "GET", **extra: str) -> dict[str, str]:
    """An nginx JSON access-log record (``log_format ... escape=json``)."""
    rec = {
        "request_id": rid,
        "remote_addr": "10.1.2.3",
        "request_method": method,
        "request_uri": path or f"/items/{rid}?q=1",
        "server_protocol": "HTTP/1.1",
        "scheme": "http",
        "host": "shop.example.com",
        "status": "200",
        "body_bytes_sent": "42",
        "request_time": "0.003",
        "request_body": "",
        "http_user_agent": "fault-test",
    }
    rec.update(extra)
    return rec


class AckingClient(threading.Thread):
    """Streams ``chunks`` (lists of record ids) as acknowledged PackedForward chunks.

    A chunk that is not acknowledged (timeout, closed connection, refused connection) is
    resent on a fresh connection after ``retry_seconds`` until it is, or until ``deadline``
    (monotonic). ``acked`` holds every id the client saw acknowledged; ``ack_times`` the
    monotonic time of each ack; ``resends`` counts chunks sent again."""

    def __init__(
        self,
        port: int,
        chunks: list[list[str]],
        *,
        deadline: float,
        pause_seconds: float = 0.0,
        timeout_seconds: float = 5.0,
        retry_seconds: float = 0.2,
        tag: str = "nginx.access",
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.chunks = chunks
        self.deadline = deadline
        self.pause_seconds = pause_seconds
        self.timeout_seconds = timeout_seconds
        self.retry_seconds = retry_seconds
        self.tag = tag
        self.acked: list[str] = []
        self.ack_times: list[float] = []
        self.resends = 0
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        client = ForwardClient("127.0.0.1", self.port, timeout_seconds=self.timeout_seconds)
        try:
            for ids in self.chunks:
                events = [(time.time_ns(), nginx_line(rid)) for rid in ids]
                first = True
                while not self.stop_event.is_set() and time.monotonic() < self.deadline:
                    if not first:
                        self.resends += 1
                    first = False
                    try:
                        client.send(self.tag, events)
                    except (ForwardClientError, OSError) as exc:
                        if len(self.errors) < 50:
                            self.errors.append(repr(exc)[:200])
                        client.close()
                        time.sleep(self.retry_seconds)
                        continue
                    self.acked.extend(ids)
                    self.ack_times.append(time.monotonic())
                    break
                else:
                    return
                if self.pause_seconds:
                    time.sleep(self.pause_seconds)
        finally:
            client.close()

    @property
    def sent_all(self) -> bool:
        return len(self.acked) == sum(len(c) for c in self.chunks)


def read_topic(bus_url: str, topic: str, *, want: int = 0, timeout: float = DEADLINE_SECONDS) -> list[bytes]:
    """Every message value on ``topic`` (a fresh consumer group reading from the start):
    at least ``want``, and then to the end of every partition (``waiting.read_to_end``).
    Call it once whatever writes the topic has stopped, or has nothing left to write."""
    bus = open_bus(bus_url)
    consumer = bus.consumer([topic], f"check-{uuid.uuid4().hex[:10]}")
    try:
        return [m.value for m in read_to_end(consumer, want=want, timeout_seconds=timeout)]
    finally:
        consumer.close()
        bus.close()


def request_ids(bus_url: str, topic: str, **kw: Any) -> list[str]:
    return [decode_request(v).id for v in read_topic(bus_url, topic, **kw)]


def results(bus_url: str, topic: str, **kw: Any) -> list[Any]:
    return [decode_result(v) for v in read_topic(bus_url, topic, **kw)]


def duplicates(ids: Iterable[str]) -> int:
    """How many copies beyond the first."""
    seen: set[str] = set()
    dupes = 0
    for i in ids:
        dupes += i in seen
        seen.add(i)
    return dupes


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def report(fault: str, **figures: Any) -> None:
    """One line per fault for the Reliability table (shown with ``pytest -s``, and kept in
    the captured output of a failing test)."""
    text = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\nRELIABILITY {fault}: {text}", flush=True)
