"""Replayer figures in one run (bounded, about 2 minutes). Provisional on a shared machine.

    .venv/bin/python bench/replayer.py [--no-uvloop] [--quick] [--runs N] [--scale-runs N]
                                       [--fast-backend aiohttp]

* throughput: the replayer (bus → send → result on the bus → commit, one target; its
  built-in HTTP client) against a bare aiohttp loop with
  the same concurrency, both against one fast backend, in this
  run; the ratio is printed (goal ≥ 0.8). The fast backend is Debian's nginx (one worker,
  ``apt-get install -y nginx-light``) unless ``--fast-backend aiohttp``: it costs a
  fraction of the aiohttp backend's CPU per request, which matters on two shared cores;
* accuracy at a uniform 2,000 req/s (goal p50 ≤ 1 ms, p99 ≤ 5 ms) and on a bursty log
  replayed at 2× (goal p99 ≤ 10 ms, duration within 1 % of recorded / 2): send lag
  measured at the backend (arrival minus due time from the anchor);
* scale: ``shadowreplay replay --workers 2`` against ``--workers 1``, flat out, measured
  at the fast backend (goal ≥ 1.5×; the median of 5 runs, ``--scale-runs``).

Accuracy always uses an aiohttp backend in another process, which stamps arrivals to the
nanosecond (nginx's ``$msec`` has millisecond resolution).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from statistics import median

# This file is named like the package it measures: keep bench/ off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from shadowreplay.replayer.loop import Replayer  # noqa: E402
from shadowreplay.replayer.metrics import ReplayerMetrics  # noqa: E402
from shadowreplay.replayer.schedule import Anchor  # noqa: E402
from shadowreplay.contract.bus import open_bus  # noqa: E402
from shadowreplay.contract.bus.aio import AsyncConsumer, AsyncProducer  # noqa: E402
from shadowreplay.contract.config import HTTP_CLIENTS, ReplayerConfig  # noqa: E402
from shadowreplay.contract.record import RequestRecord, encode_request  # noqa: E402
from shadowreplay.runtime import tune_gc  # noqa: E402

T0 = 1_700_000_000_000_000_000
REQ, RES = "shadow.requests", "shadow.results"


# -- the backend (another process) ------------------------------------------------------


def serve_backend(port: int, use_uvloop: bool) -> None:
    arrivals: list[tuple[str, int]] = []

    async def handle(request: web.Request) -> web.Response:
        arrivals.append((request.headers.get("X-Shadow-Replay", ""), time.time_ns()))
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    async def take(request: web.Request) -> web.Response:
        out = orjson.dumps(arrivals)
        arrivals.clear()
        return web.Response(body=out, content_type="application/json")

    app = web.Application()
    app.router.add_get("/__arrivals", take)
    app.router.add_route("*", "/{tail:.*}", handle)
    if use_uvloop:
        import uvloop

        uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def arrivals(url: str) -> list[tuple[str, int]]:
    async with aiohttp.ClientSession() as s, s.get(url + "/__arrivals") as r:
        return [(i, t) for i, t in orjson.loads(await r.read())]


class AiohttpBackend:
    """The aiohttp backend above, in another process: arrivals to the nanosecond."""

    name = "aiohttp (another process)"

    def __init__(self, use_uvloop: bool) -> None:
        port = free_port()
        loop_flag = "--uvloop" if use_uvloop else "--no-uvloop"
        self.proc = subprocess.Popen([sys.executable, __file__, "--backend", str(port), loop_flag])
        self.url = f"http://127.0.0.1:{port}"
        wait_for_port(port)

    def take(self) -> list[tuple[str, int]]:
        """Arrivals (X-Shadow-Replay id, ns) since the last take."""
        return asyncio.run(arrivals(self.url))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class NginxBackend:
    """Debian's nginx, one worker process, answering every request with a small JSON
    body and logging each arrival (``$msec``: millisecond resolution, enough for a rate).
    About a sixth of the aiohttp backend's CPU per request, so the figures measure the
    client side, not the backend's share of the two cores."""

    name = "nginx (one worker)"

    def __init__(self, nginx: str, tmp: Path) -> None:
        port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = tmp / "arrivals.log"
        conf = tmp / "nginx.conf"
        temp = " ".join(f"{k}_temp_path {tmp / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf.write_text(
            f"daemon off; worker_processes 1; pid {tmp / 'nginx.pid'}; error_log {tmp / 'error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            "http { access_log off; keepalive_requests 1000000; " + temp + "\n"
            "  log_format arrival '$http_x_shadow_replay $msec';\n"
            f"  server {{ listen 127.0.0.1:{port}; default_type application/json;\n"
            f"    access_log {self.log} arrival buffer=256k flush=100ms;\n"
            "    location / { return 200 '{\"ok\": true}'; } } }\n"
        )
        self.proc = subprocess.Popen([nginx, "-e", str(tmp / "error.log"), "-c", str(conf)])
        self.url = f"http://127.0.0.1:{port}"
        wait_for_port(port)

    def take(self) -> list[tuple[str, int]]:
        time.sleep(0.3)  # past the log's 100 ms flush; callers take only when sending is over
        text = ""
        if self.log.exists():
            with self.log.open("r+") as f:  # nginx appends (O_APPEND): truncating in place is safe
                text = f.read()
                f.truncate(0)
        out = []
        for line in text.splitlines():
            rid, _, msec = line.rpartition(" ")
            out.append((rid, int(round(float(msec) * 1000)) * 1_000_000))
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench backend did not start on port {port}")


Backend = AiohttpBackend | NginxBackend


# -- helpers --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def publish(bus_url: str, records: list[RequestRecord]) -> None:
    bus = open_bus(bus_url, 4)
    bus.ensure_topic(REQ, 4)
    bus.ensure_topic(RES, 4)
    p = bus.producer()
    for r in records:
        p.publish(REQ, encode_request(r), key=r.partition_key(), timestamp_ns=r.ts)
    p.flush()
    p.close()
    bus.close()


def records_at(times: list[int]) -> list[RequestRecord]:
    return [
        RequestRecord(id=f"r{i}", ts=ts, method="GET", target=f"/items/{i}?q=1",
                      headers=(("Accept", "application/json"), ("User-Agent", "bench")),
                      client=f"10.0.{i % 13}.{i % 251}")
        for i, ts in enumerate(times)
    ]


async def run_replayer(bus_url: str, cfg: ReplayerConfig, anchor: Anchor | None) -> Replayer:
    bus = open_bus(bus_url, 4)
    consumer, producer = AsyncConsumer(bus, [REQ], "bench"), AsyncProducer(bus, power_safe=False)  # as the app
    replayer = Replayer(cfg, consumer, producer, RES, ReplayerMetrics(CollectorRegistry()), anchor=anchor)
    try:
        await asyncio.wait_for(replayer.run(asyncio.Event()), timeout=120)
    finally:
        await consumer.close()
        await producer.close()
        bus.close()
    return replayer


def rate_of(hits: list[tuple[str, int]]) -> float:
    ts = sorted(t for _, t in hits)
    return (len(ts) - 1) / ((ts[-1] - ts[0]) / 1e9) if len(ts) > 1 else 0.0


# -- the figures ----------------------------------------------------------------------------


async def bare_loop(url: str, n: int, concurrency: int) -> None:
    """The same requests (same headers on the wire) from a plain aiohttp loop."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        todo = iter(records_at(list(range(n))))

        async def worker() -> None:
            for r in todo:
                headers = [*r.headers, ("X-Forwarded-For", r.client or ""), ("X-Shadow-Replay", "b" + r.id)]
                async with s.get(f"{url}{r.target}", headers=headers) as resp:
                    await resp.read()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def bare_rate(backend: Backend, n: int, concurrency: int) -> float:
    backend.take()
    asyncio.run(bare_loop(backend.url, n, concurrency))
    hits = backend.take()
    assert len(hits) == n, (len(hits), n)
    return rate_of(hits)


def thread_cpu() -> tuple[float, float]:
    """CPU seconds so far of this (the main) thread, and of the whole process (ended threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.thread_time(), usage.ru_utime + usage.ru_stime


def throughput(backend: Backend, tmp: Path, n: int, concurrency: int, http_client: str,
               cpu: list[tuple[float, float]]) -> tuple[float, float]:
    """(bare loop req/s, replayer req/s). The bare loop runs before and after the replayer
    and its mean is taken, so a machine whose speed drifts during the run (a shared host)
    does not tilt the ratio. Appends the replayer's CPU µs per request (event loop thread,
    bus threads) to ``cpu``."""
    before = bare_rate(backend, n, concurrency)
    tmp.mkdir(parents=True, exist_ok=True)
    bus_url = f"sqlite:///{tmp / 'tp.db'}"
    publish(bus_url, records_at([T0 + i for i in range(n)]))
    cfg = ReplayerConfig(candidate=backend.url, concurrency=concurrency, speed=1e6, idle_exit_seconds=0.5,
                         http_client=http_client)
    main0, all0 = thread_cpu()
    asyncio.run(run_replayer(bus_url, cfg, Anchor(T0, time.time_ns() + 200_000_000, 1e6)))
    main1, all1 = thread_cpu()
    cpu.append((1e6 * (main1 - main0) / n, 1e6 * ((all1 - all0) - (main1 - main0)) / n))
    hits = backend.take()
    assert len(hits) == n, (len(hits), n)
    after = bare_rate(backend, n, concurrency)
    return (before + after) / 2, rate_of(hits)


async def accuracy(url: str, tmp: Path, name: str, times: list[int], speed: float, http_client: str) -> dict[str, float]:
    await arrivals(url)
    bus_url = f"sqlite:///{tmp / (name + '.db')}"
    records = records_at(times)
    publish(bus_url, records)
    anchor = Anchor(times[0], time.time_ns() + 500_000_000, speed)
    cfg = ReplayerConfig(candidate=url, concurrency=256, speed=speed, idle_exit_seconds=0.5, http_client=http_client)
    await run_replayer(bus_url, cfg, anchor)
    hits = dict(await arrivals(url))
    lags = [(hits[r.id] - anchor.due_ns(r.ts)) / 1e6 for r in records if r.id in hits]
    span_log = (times[-1] - times[0]) / 1e9 / speed
    arr = sorted(hits.values())
    span = (arr[-1] - arr[0]) / 1e9
    return {"n": len(records), "sent": len(hits), "p50_ms": pct(lags, 0.5), "p99_ms": pct(lags, 0.99),
            "max_ms": max(lags), "min_ms": min(lags), "duration_s": span, "expected_s": span_log,
            "duration_error_pct": 100 * (span - span_log) / span_log}


def bursty_times(seconds: float, seed: int = 7) -> list[int]:
    rnd = random.Random(seed)
    out: list[int] = []
    t = 0.0
    while t < seconds:  # background ~300/s (Poisson), plus a burst of 30-80 requests within
        out.append(int(t * 1e9))  # 100 ms every 0.5 s (peaks ~800/s recorded, ~1,600/s at 2x)
        t += rnd.expovariate(300)
    for b in range(int(seconds * 2)):
        start = b * 0.5 + rnd.random() * 0.3
        out += [int((start + rnd.random() * 0.1) * 1e9) for _ in range(rnd.randint(30, 80))]
    return sorted(T0 + x for x in out if x < seconds * 1e9)


class CpuSampler:
    """Samples /proc/stat's all-CPU line every 20 ms on a thread, so the share of the
    machine that was busy between two instants can be read afterwards."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, int, int, int]] = []  # (ns, busy, steal, total) jiffies
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:9]]
            user, nice, system, idle, iowait, irq, softirq, steal = fields
            total = sum(fields)
            self.samples.append((time.time_ns(), total - idle - iowait - steal, steal, total))
            if self._stop.wait(0.02):
                return

    def busy_between(self, t0_ns: int, t1_ns: int) -> tuple[float, float]:
        """(busy, steal) as fractions of all CPUs' time between two instants."""
        inside = [s for s in self.samples if t0_ns <= s[0] <= t1_ns]
        if len(inside) < 2 or inside[-1][3] == inside[0][3]:
            return float("nan"), float("nan")
        total = inside[-1][3] - inside[0][3]
        return (inside[-1][1] - inside[0][1]) / total, (inside[-1][2] - inside[0][2]) / total


def workers_run(backend: Backend, tmp: Path, workers: int, n: int, concurrency: int, flags: list[str],
                name: str) -> tuple[float, float, float]:
    """(req/s at the backend, busy and steal shares of the machine while requests arrived)."""
    backend.take()
    url = backend.url
    bus_url = f"sqlite:///{tmp / f'w{name}.db'}"
    publish(bus_url, records_at([T0 + i for i in range(n)]))
    cfg = tmp / f"w{name}.toml"
    cfg.write_text(f'[bus]\nurl = "{bus_url}"\n[replayer]\ncandidate = "{url}"\ngroup = "w{name}"\n'
                   f'control_topic = "w{name}.control"\nconcurrency = {concurrency}\n'
                   f'[metrics]\nlisten = "127.0.0.1:0"\n')
    cmd = [sys.executable, "-m", "shadowreplay.cli", "--log-level", "WARNING", "replay", "--config", str(cfg),
           "--workers", str(workers), "--speed", "1000000", "--idle-exit", "1.5", *flags]
    with CpuSampler() as cpu:
        subprocess.run(cmd, check=True, timeout=120)
    hits = backend.take()
    for f in tmp.glob(f"w{name}.*"):  # unlinked, its unwritten pages are dropped: no writeback in a later run
        f.unlink()
    assert len(hits) == n, (len(hits), n)
    arrived = sorted(t for _, t in hits)
    return (rate_of(hits), *cpu.busy_between(arrived[0], arrived[-1]))


def listed(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def judge_ratio(title: str, first: str, second: str, pairs: list[tuple[float, float]], goal: float) -> bool:
    """Print the median of second ÷ first over the runs (and each run's) against ``goal``."""
    ratio = median([b / a for a, b in pairs])
    print(f"{title}: {first} {median([a for a, _ in pairs]):,.0f} req/s, {second} {median([b for _, b in pairs]):,.0f} "
          f"req/s, ratio {ratio:.2f} (runs: {listed(b / a for a, b in pairs)}) goal >= {goal:.2f}: "
          f"{verdict(ratio >= goal)}", flush=True)
    return ratio >= goal


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True,
                    help="run the replayer, bare loop and backend on uvloop (default; the replayer's default too)")
    ap.add_argument("--quick", action="store_true", help="smaller runs (about 1 minute)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each figure; the median is judged (default 3)")
    ap.add_argument("--scale-runs", type=int, default=5,
                    help="runs of the scale figure (default 5): on two shared cores one run's ratio moves by "
                         "about ±0.15, more than any other figure's, so its median takes more runs")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--fast-backend", choices=("nginx", "aiohttp"), default="nginx",
                    help="backend for the throughput and scale figures (default nginx, which needs "
                         "`apt-get install -y nginx-light`; accuracy always uses the aiohttp backend)")
    ap.add_argument("--http-client", choices=HTTP_CLIENTS, default="builtin",
                    help="the replayer's HTTP client (default builtin, as `shadowreplay replay`)")
    ap.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:
        serve_backend(args.backend, args.uvloop)
        return 0
    scale = 0.25 if args.quick else 0.6  # with 3 runs: about 1 and 2 minutes
    runs = max(1, args.runs)
    loop_flag = ["--uvloop"] if args.uvloop else ["--no-uvloop"]
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)  # sbin: off PATH
    if args.fast_backend == "nginx" and nginx is None:
        raise SystemExit("bench/replayer.py: nginx is not installed (apt-get install -y nginx-light), "
                         "or pass --fast-backend aiohttp")
    with tempfile.TemporaryDirectory(prefix="bench-replayer-") as d:
        tmp = Path(d)
        aio = AiohttpBackend(args.uvloop)
        fast: Backend = aio
        try:
            if nginx is not None and args.fast_backend == "nginx":
                fast = NginxBackend(nginx, tmp / "nginx")
            if args.uvloop:
                import uvloop

                uvloop.install()
            tune_gc()  # as `shadowreplay replay` does; the bare loop runs in this process too
            print(f"loop: {'uvloop' if args.uvloop else 'asyncio'}; cores: {os.cpu_count()}; "
                  f"load: {os.getloadavg()[0]:.2f}; concurrency {args.concurrency}; median of {runs} runs "
                  f"(scale: {max(1, args.scale_runs)}); "
                  f"backend for throughput and scale: {fast.name}; for accuracy: {aio.name}; "
                  f"replayer HTTP client: {args.http_client}", flush=True)
            run_figures(args, fast, aio, tmp, scale, runs, loop_flag)
        finally:
            aio.close()
            if fast is not aio:
                fast.close()
    return 0


def run_figures(args: argparse.Namespace, fast: Backend, aio: AiohttpBackend, tmp: Path, scale: float, runs: int,
                loop_flag: list[str]) -> int:
    misses = 0
    url = aio.url
    # More records than the replayer's window (shadowreplay.replayer.loop.MAX_PENDING): it polls, sends,
    # publishes and commits all at once, as in a long replay, instead of polling everything first.
    n = int(24_000 * scale)
    cpu: list[tuple[float, float]] = []
    pairs = [throughput(fast, tmp / f"t{i}", n, args.concurrency, args.http_client, cpu) for i in range(runs)]
    misses += not judge_ratio(f"throughput ({n} requests, 1 target)", "bare aiohttp", "replayer", pairs, 0.8)
    print(f"  replayer CPU per request: event loop {median([m for m, _ in cpu]):.0f} µs, "
          f"bus threads {median([o for _, o in cpu]):.0f} µs (medians)", flush=True)
    secs = 5.0 * scale
    uniform = [T0 + i * 500_000 for i in range(int(2000 * secs))]
    us = [asyncio.run(accuracy(url, tmp, f"uniform{i}", uniform, 1.0, args.http_client)) for i in range(runs)]
    p50, p99 = median([u["p50_ms"] for u in us]), median([u["p99_ms"] for u in us])
    ok = p50 <= 1 and p99 <= 5
    misses += not ok
    print(f"accuracy uniform 2,000 req/s ({us[0]['n']} requests): p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {max(u['max_ms'] for u in us):.1f} ms, min {min(u['min_ms'] for u in us):.2f} ms "
          f"(p99 runs: {listed(u['p99_ms'] for u in us)}) goal p50 <= 1, p99 <= 5: {verdict(ok)}",
          flush=True)
    bursty = bursty_times(12.0 * scale)
    bs = [asyncio.run(accuracy(url, tmp, f"bursty{i}", bursty, 2.0, args.http_client)) for i in range(runs)]
    p50, p99 = median([b["p50_ms"] for b in bs]), median([b["p99_ms"] for b in bs])
    err = median([b["duration_error_pct"] for b in bs])
    ok = p99 <= 10 and abs(err) <= 1
    misses += not ok
    print(f"accuracy bursty log at 2x ({bs[0]['n']} requests, {bs[0]['expected_s']:.2f} s expected): "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(b['max_ms'] for b in bs):.1f} ms; "
          f"duration error {err:+.2f}% (p99 runs: {listed(b['p99_ms'] for b in bs)}) "
          f"goal p99 <= 10 ms, |error| <= 1%: {verdict(ok)}", flush=True)
    nw = int(24_000 * scale)
    flags = [*loop_flag, "--http-client", args.http_client]
    ones, twos = [], []
    for i in range(max(1, args.scale_runs)):
        ones.append(workers_run(fast, tmp, 1, nw, args.concurrency, flags, f"a{i}"))
        twos.append(workers_run(fast, tmp, 2, nw, args.concurrency, flags, f"b{i}"))
    scales = [(one[0], two[0]) for one, two in zip(ones, twos, strict=True)]
    misses += not judge_ratio(f"scale ({nw} requests, flat out, via the CLI)", "--workers 1", "--workers 2", scales, 1.5)
    cores = os.cpu_count() or 1
    busy1, busy2 = median([o[1] for o in ones]), median([t[1] for t in twos])
    print(f"  machine busy while requests arrived (all {cores} cores; replayer, bus threads and backend): "
          f"--workers 1 {100 * busy1:.0f}%, --workers 2 {100 * busy2:.0f}% "
          f"(steal {100 * median([o[2] for o in ones + twos]):.1f}%; medians)", flush=True)
    # Requests per second per fully busy machine: equal means the second worker turns the
    # CPU it gets into requests as well as the first; 100 % / busy1 is then the ratio's ceiling.
    per1 = median([o[0] / o[1] for o in ones])
    per2 = median([t[0] / t[1] for t in twos])
    print(f"  per busy machine: --workers 1 {per1:,.0f} req/s, --workers 2 {per2:,.0f} req/s "
          f"(x{per2 / per1:.2f}); one worker already keeps {100 * busy1:.0f}% of the machine busy, so at equal "
          f"CPU per request two can reach at most {1 / busy1:.2f}x here", flush=True)
    print(f"{4 - misses} of 4 goals met (load now {os.getloadavg()[0]:.2f}; provisional on a shared machine)")
    return misses


if __name__ == "__main__":
    sys.exit(main())
