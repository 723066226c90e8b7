"""``shadowreplay bus dump``: a topic's messages as JSON lines, read without joining a group."""

from __future__ import annotations

import argparse
import sys

import orjson

from shadowreplay.commands.common import add_bus_option, add_config_option, config_from_args
from shadowreplay.contract.bus import open_bus, read_to_end
from shadowreplay.contract.config import Config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Inspect the bus."
    sub = p.add_subparsers(dest="bus_command", required=True, metavar="SUBCOMMAND")
    dump = sub.add_parser("dump", help="print a topic's messages as JSON lines, from the beginning to its end "
                                       "as of now (joins no consumer group)",
                          description="Print a topic's messages as JSON lines, from the beginning to its end as "
                                      "of now. It reads the partitions directly: it joins no consumer group and "
                                      "commits nothing.")
    add_config_option(dump, "TOML config file (for bus.url and the partitions)")
    add_bus_option(dump)
    dump.add_argument("--topic", required=True, metavar="T", help="e.g. shadow.requests or shadow.results")
    dump.add_argument("--limit", type=int, default=0, metavar="N", help="stop after N messages (default: all)")
    dump.add_argument("--idle-seconds", type=float, default=10.0, metavar="S",
                      help="give up with an error when the bus answers nothing for S seconds (default 10)")
    dump.add_argument("--meta", action="store_true", help="wrap each message with partition, offset and timestamp")
    dump.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    n = dump(config_from_args(args), args.topic, args.limit, args.idle_seconds, args.meta)
    print(f"{n} messages", file=sys.stderr)
    return 0


def dump(cfg: Config, topic: str, limit: int, idle_seconds: float, meta: bool) -> int:
    """Print ``topic``'s messages, read without joining a group, up to its end as of now."""
    bus = open_bus(cfg.bus.url, cfg.bus.partitions)
    out = sys.stdout.buffer
    count = 0
    try:
        reader = bus.reader([topic])
        try:
            for batch in read_to_end(reader, stall_seconds=max(idle_seconds, 0.5)):
                for m in batch[: (limit - count) if limit else None]:
                    if meta:
                        try:
                            value = orjson.loads(m.value)
                        except orjson.JSONDecodeError:
                            value = m.value.decode("utf-8", "replace")
                        line = orjson.dumps({"partition": m.partition, "offset": m.offset,
                                             "timestamp_ns": m.timestamp_ns, "value": value})
                    else:
                        line = m.value
                    out.write(line + b"\n")
                    count += 1
                out.flush()
                if limit and count >= limit:
                    break
        finally:
            reader.close()
    finally:
        bus.close()
    return count
