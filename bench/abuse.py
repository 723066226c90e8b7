"""The collector under attack: its peak RSS and a good client's ack latency, per attack.

    .venv/bin/python bench/abuse.py [--attack NAME ...] [--seconds S]

For each attack: a fresh collector process (``shadowreplay collect`` on a fresh SQLite
bus, with the limits below), a good client that sends one acknowledged record at a time
for the whole attack (on one connection, or a new connection per record where the
attack is about connection slots), and the attack itself in other threads, bounded in
bytes, connections and time. Prints the collector's peak RSS (VmHWM), how many of the
good client's records were acknowledged (all must be) and the p50 / p99 / max of its ack
latency, and what the collector counted.

Attacks (``--attack``, default all):

* ``stream``: one connection streams 300 MB of one unfinished frame (a Message record
  declared as a map32 of 3 M pairs, then its pairs), the first attack of issue 18;
* ``half_frames``: 300 connections each send 4 MiB of an unfinished 6 MiB frame, then
  hold it;
* ``bombs``: compressed chunks of tiny records, 20 of each: 953,000 valid records in
  about 210 KB of gzip, and 20 M ``[0, {}]`` entries in about 60 KB;
* ``idle``: 1,100 connections opened and left idle (with a shared key: never a PING);
  the good client opens a new connection for every record;
* ``slowloris``: 300 connections each trickle a frame, one byte every second; the good
  client opens a new connection for every record.

The collector runs with ``max_memory_bytes`` 64 MiB (``--memory-mib``), its other limits
at their defaults, frame timeout 10 s. The machine may be shared: the figures are for
comparison between attacks and runs on the same machine.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import msgpack

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from shadowreplay.collector.forward_client import ForwardClient, ForwardClientError  # noqa: E402
from fault_procs import Stage, free_port, nginx_line, percentile, request_ids, toml_config  # noqa: E402

KEY_ENV = "ABUSE_FORWARD_KEY"
KEY = "abuse-shared-key"


# -- the good client -------------------------------------------------------------------------


class GoodClient(threading.Thread):
    """Sends one record per acknowledged chunk until ``stop`` is set (or ``limit``
    records are acknowledged), resending a record until it is acknowledged. With
    ``reconnect``, every record goes on a new connection (as Fluentd's out_forward does
    without keepalive), so a client that cannot get a slot shows up as a failed send."""

    def __init__(self, port: int, *, prefix: str, shared_key: bytes | None = None, reconnect: bool = False,
                 limit: int = 1_000_000, timeout_seconds: float = 10.0, pause_seconds: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.prefix = prefix
        self.shared_key = shared_key
        self.reconnect = reconnect
        self.limit = limit
        self.timeout_seconds = timeout_seconds
        self.pause_seconds = pause_seconds
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.latencies: list[float] = []
        self.failures = 0
        self.errors: list[str] = []

    def run(self) -> None:
        client = ForwardClient("127.0.0.1", self.port, timeout_seconds=self.timeout_seconds,
                               shared_key=self.shared_key, hostname=f"good-{self.prefix}")
        n = 0
        try:
            while not self.stop.is_set() and n < self.limit:
                rid = f"{self.prefix}-{n:06d}"
                t = time.monotonic()
                try:
                    client.send("nginx.access", [(time.time_ns(), nginx_line(rid))])
                except (ForwardClientError, OSError) as exc:
                    self.failures += 1
                    if len(self.errors) < 20:
                        self.errors.append(repr(exc)[:200])
                    client.close()
                    self.stop.wait(0.05)
                    continue
                self.latencies.append(time.monotonic() - t)
                self.acked.append(rid)
                n += 1
                if self.reconnect:
                    client.close()
                if self.pause_seconds:
                    self.stop.wait(self.pause_seconds)
        finally:
            client.close()

    def finish(self, timeout: float = 30.0) -> None:
        self.stop.set()
        self.join(timeout)


# -- attacks: each runs until ``stop`` is set or its bound is reached ---------------------------


def _connect(port: int) -> socket.socket | None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return None
    s.settimeout(10)
    return s


def _send(s: socket.socket, data: bytes) -> bool:
    try:
        s.sendall(data)
        return True
    except OSError:
        return False


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def stream(port: int, stop: threading.Event, total_bytes: int = 300 << 20) -> dict[str, int]:
    """One connection streams one unfinished frame: a Message record declared as a map32
    of 4 M pairs (8 MB at least: within 8 MiB as declared), then 3-byte pairs until the
    collector closes it (or ``total_bytes`` went out)."""
    s = _connect(port)
    if s is None:
        return {"sent": 0}
    sent = 0
    head = msgpack.packb("app") + b"\x01\xdf" + struct.pack(">I", 4_000_000)
    piece = b"\xcc\xff\x80" * 21845  # {255: {}, ...}: 64 KiB of tiny pairs
    ok = _send(s, b"\x93" + head)
    while ok and sent < total_bytes and not stop.is_set():
        ok = _send(s, piece)
        sent += len(piece) if ok else 0
    s.close()
    return {"sent": sent}


def half_frames(port: int, stop: threading.Event, conns: int = 300, each: int = 4 << 20) -> dict[str, int]:
    """``conns`` connections each send ``each`` bytes of a PackedForward frame whose blob
    is declared 6 MiB, then hold it until ``stop``."""
    blob_len = 6 << 20
    head = b"\x93" + msgpack.packb("app") + b"\xc6" + struct.pack(">I", blob_len)
    body = b"\x92\x00\x80" * (each // 3)
    socks: list[socket.socket] = []
    sent = 0
    for _ in range(conns):
        if stop.is_set():
            break
        s = _connect(port)
        if s is None:
            continue
        socks.append(s)
        s.setblocking(False)
        try:  # as much as the collector takes now; the rest is its business
            sent += s.send(head + body)
        except OSError:
            pass
    stop.wait()
    _close_all(socks)
    return {"connections": len(socks), "sent": sent}


@functools.cache
def bomb_blobs() -> tuple[bytes, bytes]:
    """953,000 valid tiny records in about 210 KB of gzip; 20 M ``[0, {}]`` entries in
    about 60 KB (issue 18's two compressed chunks)."""
    tiny = msgpack.packb([1_700_000_000, {"request_method": "GET", "request_uri": "/"}])
    return gzip.compress(tiny * 953_000, 9), gzip.compress(b"\x92\x00\x80" * 20_000_000, 9)


def bombs(port: int, stop: threading.Event, count: int = 20) -> dict[str, int]:
    """Compressed chunks of tiny records, each on its own connection and asking for an
    ack, followed by a small probe chunk whose ack shows the bomb was dealt with."""
    probe = msgpack.packb(["probe", 1, {"i": 1}, {"chunk": "probe"}])
    answers: dict[str, int] = {"sent": 0, "bomb_acked": 0, "probe_acked": 0}
    for i in range(count):
        for k, blob in enumerate(bomb_blobs()):
            if stop.is_set():
                return answers
            s = _connect(port)
            if s is None:
                continue
            frame = msgpack.packb(["bomb", blob, {"compressed": "gzip", "chunk": f"bomb-{i}-{k}"}])
            if _send(s, frame + probe):
                answers["sent"] += 1
                unpacker = msgpack.Unpacker(raw=False)
                try:
                    s.settimeout(30)
                    while data := s.recv(1024):
                        unpacker.feed(data)
                        acks = [a.get("ack") for a in unpacker if isinstance(a, dict)]
                        answers["bomb_acked"] += sum(a != "probe" for a in acks)
                        if "probe" in acks:
                            answers["probe_acked"] += 1
                            break
                except OSError:
                    pass
            s.close()
    return answers


def idle(port: int, stop: threading.Event, conns: int = 1100) -> dict[str, int]:
    """``conns`` connections opened and left silent until ``stop``."""
    socks = [s for s in (_connect(port) for _ in range(conns)) if s is not None]
    SLOTS_TAKEN.set()
    stop.wait()
    _close_all(socks)
    return {"connections": len(socks)}


def slowloris(port: int, stop: threading.Event, conns: int = 300, interval: float = 1.0) -> dict[str, int]:
    """``conns`` connections each trickle one Message frame, a byte every ``interval``."""
    frame = msgpack.packb(["app", 1, nginx_line("slow"), {"chunk": "slow"}])
    socks = [s for s in (_connect(port) for _ in range(conns)) if s is not None]
    pos = 0
    while not stop.is_set() and socks:
        socks = [s for s in socks if _send(s, frame[pos % len(frame) : pos % len(frame) + 1])]
        pos += 1
        stop.wait(interval)
    _close_all(socks)
    return {"connections_left": len(socks), "bytes_each": pos}


ATTACKS: dict[str, Callable[..., dict[str, int]]] = {
    "stream": stream,
    "half_frames": half_frames,
    "bombs": bombs,
    "idle": idle,
    "slowloris": slowloris,
}
# The attacks about connection slots: the good client opens a new connection per
# record. Idle connections are tried against a collector with a shared key (they never
# send a PING); slowloris without one (its trickle is a frame, not a PING).
SLOT_ATTACKS = ("idle", "slowloris")
KEYED_ATTACKS = ("idle",)
#: Set by ``idle`` once all its connections are open. Opening 1,100 connections can take
#: longer than the attack's measured seconds (SYN retries once the accept backlog is
#: full), so the run waits for this, and for the collector to have accepted them all,
#: before the clock starts: the figures then always cover a full house of idle slots.
SLOTS_TAKEN = threading.Event()
#: How long a run waits for the attacker's connections to be open and accepted.
SETUP_SECONDS = 60.0


# -- a run ------------------------------------------------------------------------------------


def start_collector(tmp: Path, *, memory_mib: int, shared_key: bool, frame_timeout: float = 10.0,
                    extra: dict[str, object] | None = None) -> tuple[Stage, str]:
    bus = f"sqlite:///{tmp / f'bus-{os.urandom(4).hex()}.db'}"
    collector: dict[str, object] = {
        "max_memory_bytes": memory_mib << 20,
        "frame_timeout_seconds": frame_timeout,
        "max_connections_per_address": 2048,  # every client here is 127.0.0.1
        "udp_heartbeat": False,
        **(extra or {}),
    }
    sections: dict[str, dict[str, object]] = {"collector": collector}
    if shared_key:
        sections["collector.security"] = {"shared_key_env": KEY_ENV, "self_hostname": "abuse-collector"}
    config = toml_config(tmp / f"collector-{os.urandom(4).hex()}.toml", sections)
    stage = Stage("collect", [], tmp, config=config, bus=bus, listen_port=free_port(), log_level="WARNING",
                  env={KEY_ENV: KEY})
    stage.wait_ready(60)
    return stage, bus


def run_attack(name: str, tmp: Path, *, seconds: float, memory_mib: int, frame_timeout: float = 10.0,
               params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one attack (``params`` go to its function) against a fresh collector; the figures."""
    slots, keyed = name in SLOT_ATTACKS, name in KEYED_ATTACKS
    stage, bus = start_collector(tmp, memory_mib=memory_mib, shared_key=keyed, frame_timeout=frame_timeout)
    port = stage.listen_port
    assert port is not None
    stage.sample()
    baseline_kb = stage.peak_rss_kb
    good = GoodClient(port, prefix=f"good-{name}", shared_key=KEY.encode() if keyed else None, reconnect=slots)
    if name == "bombs":
        bomb_blobs()  # made before the clock starts
    good.start()
    stop = threading.Event()
    result: dict[str, int] = {}
    attacker = threading.Thread(target=lambda: result.update(ATTACKS[name](port, stop, **(params or {}))), daemon=True)
    SLOTS_TAKEN.clear()
    attacker.start()
    if name == "idle":
        conns = int((params or {}).get("conns", 1100))
        setup_until = time.monotonic() + SETUP_SECONDS
        SLOTS_TAKEN.wait(SETUP_SECONDS)
        while time.monotonic() < setup_until and stage.metric("shadow_collector_connections_total") < conns:
            stage.sample()
            time.sleep(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and stage.proc.poll() is None:
        stage.sample()
        time.sleep(0.2)
    stop.set()
    attacker.join(60)
    good.finish()
    stage.sample()
    alive = stage.proc.poll() is None
    counted: dict[str, float] = {}
    if alive:
        for r in ("shed", "idle_timeout", "frame_timeout", "memory_budget"):
            counted[r] = stage.metric("shadow_collector_connections_closed_total", reason=r)
        counted["decode_errors"] = stage.metric("shadow_collector_decode_errors_total")
        counted["refused"] = stage.metric("shadow_collector_connections_refused_total")
        counted["memory_waits"] = stage.metric("shadow_collector_limit_hits_total", limit="max_memory_bytes")
    stage.stop()
    on_bus = set(request_ids(bus, "shadow.requests", want=len(good.acked), timeout=30))
    return {
        "attack": name,
        "alive": alive,
        "baseline_rss_mib": baseline_kb / 1024,
        "peak_rss_mib": stage.peak_rss_kb / 1024,
        "good_acked": len(good.acked),
        "good_failures": good.failures,
        "good_on_bus": len(set(good.acked) & on_bus),
        "ack_p50_ms": percentile(good.latencies, 0.5) * 1000,
        "ack_p99_ms": percentile(good.latencies, 0.99) * 1000,
        "ack_max_ms": max(good.latencies, default=float("nan")) * 1000,
        "attack_result": result,
        "counted": counted,
        "errors": good.errors[:3],
        "log": stage.log()[-3000:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attack", action="append", choices=sorted(ATTACKS), help="an attack to run (default: all)")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each attack lasts (default 20)")
    ap.add_argument("--memory-mib", type=int, default=64, help="the collector's max_memory_bytes in MiB (default 64)")
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()}; collector max_memory_bytes={args.memory_mib} MiB, frame timeout 10 s; "
          f"{args.seconds:.0f} s per attack")
    head = f"{'attack':<12} {'base MiB':>8} {'peak MiB':>8} {'acked':>6} {'fail':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  counted"
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as d:
        for name in args.attack or list(ATTACKS):
            r = run_attack(name, Path(d), seconds=args.seconds, memory_mib=args.memory_mib)
            lost = r["good_acked"] != r["good_on_bus"]
            print(f"{name:<12} {r['baseline_rss_mib']:>8.0f} {r['peak_rss_mib']:>8.0f} {r['good_acked']:>6} "
                  f"{r['good_failures']:>5} {r['ack_p50_ms']:>7.1f} {r['ack_p99_ms']:>7.1f} {r['ack_max_ms']:>7.1f}  "
                  f"{ {k: int(v) for k, v in r['counted'].items() if v} } {r['attack_result']}{'  ACKED RECORDS MISSING' if lost else ''}"
                  f"{'' if r['alive'] else '  COLLECTOR DIED'}", flush=True)
            if r["errors"]:
                print(f"{'':<12} good client errors: {r['errors']}")


if __name__ == "__main__":
    main()
