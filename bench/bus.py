"""The embedded SQLite bus alone: CPU per message to write and to read it back.

    .venv/bin/python bench/bus.py [--messages N] [--size BYTES] [--flush N] [--poll N] [--rounds R]

Writes N messages of SIZE bytes (random, keyed by one of 50 client addresses, 4
partitions) to a new bus file in flushes of FLUSH, as the replayer stores results, then
reads them back with one consumer in polls of POLL, as the replayer reads request
records. Prints the CPU time of the writing and the reading thread per message
(``time.thread_time``: the work, not the waits) and the messages per second of wall
time, median of R rounds. The defaults are the replayer's results (about 700 bytes each,
a flush every few hundred) and its polls (200 records). Bounded: N messages per round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Keep bench/ off the import path (scripts here are named like the packages they measure).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from shadowreplay.contract.bus.sqlite import SqliteBus  # noqa: E402

TS0 = 1_700_000_000_000_000_000


def one_round(tmp: Path, messages: int, size: int, flush: int, poll: int) -> tuple[float, float, float, float]:
    """(write CPU µs/message, write messages/s, read CPU µs/message, read messages/s)."""
    path = tmp / f"{uuid.uuid4().hex}.db"
    bus = SqliteBus(f"sqlite:///{path}", str(path), partitions=4)
    value = os.urandom(size)
    producer = bus.producer()
    cpu = wall = 0.0
    for at in range(0, messages, flush):
        items = [(b"10.0.0.%d" % (i % 50), value, TS0 + i) for i in range(at, min(at + flush, messages))]
        c0, w0 = time.thread_time(), time.perf_counter()
        producer.publish_batch("bench", items)
        producer.flush()
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - w0
    producer.close()
    write = (1e6 * cpu / messages, messages / wall)
    consumer = bus.consumer(["bench"], "bench")
    got = 0
    c0, w0 = time.thread_time(), time.perf_counter()
    deadline = time.monotonic() + 120
    while got < messages and time.monotonic() < deadline:
        got += len(consumer.poll(max_records=poll, timeout_seconds=1.0))
    cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
    consumer.close()
    bus.close()
    if got != messages:
        raise SystemExit(f"bench/bus.py: read back {got} of {messages} messages")
    return (*write, 1e6 * cpu / messages, messages / wall)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=48_000, help="messages per round (default 48,000)")
    ap.add_argument("--size", type=int, default=700, help="bytes per message (default 700, a replay result)")
    ap.add_argument("--flush", type=int, default=500, help="messages per flush (default 500)")
    ap.add_argument("--poll", type=int, default=200, help="max_records per poll (default 200, as the replayer)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are printed (default 3)")
    args = ap.parse_args()
    if min(args.messages, args.size, args.flush, args.poll, args.rounds) < 1:
        ap.error("every count must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-bus-") as d:
        rounds = [one_round(Path(d), args.messages, args.size, args.flush, args.poll) for _ in range(args.rounds)]
    write_cpu, write_rate, read_cpu, read_rate = (statistics.median([r[i] for r in rounds]) for i in range(4))
    print(f"SQLite bus, {args.messages:,} messages of {args.size} bytes, 4 partitions, medians of {args.rounds} rounds")
    print(f"  write (flushes of {args.flush}): {write_cpu:.2f} µs CPU per message, {write_rate:,.0f} messages/s")
    print(f"  read (polls of {args.poll}):    {read_cpu:.2f} µs CPU per message, {read_rate:,.0f} messages/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
