"""``shadowreplay noise learn``: find noisy fields offline by asking the baseline twice.

A sample of recorded requests is read from the bus (a throw-away consumer group, from
the beginning), each is sent to the baseline twice in a row through the replayer's own
HTTP client (:class:`shadowreplay.replayer.client.TargetClient`: the same header policy as a replay,
no cookie jar, so the second request never carries the first answer's cookies), and the
two answers are diffed by the comparer's differ under the current ``[comparer]`` rules.
Whatever differs between two answers of the same release to the same request is noise;
the paths are proposed as TOML (written with ``tomli-w``) to paste into ``[comparer]``
(array indexes and JSON-RPC ids generalised to ``[*]``; a path seen on several endpoints
becomes a global rule, one seen on a single endpoint an ``[[comparer.endpoints]]`` rule).

The comparer learns the same thing live from a secondary or from the replayer's
baseline probes (docs/verdict.md); this is the offline tool, for rules kept in config.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from shadowreplay.commands.common import add_bus_option, add_config_option, config_from_args
from shadowreplay.comparer.diff import Differ
from shadowreplay.comparer.paths import field_key
from shadowreplay.replayer.client import TargetClient
from shadowreplay.replayer.rules import Rules
from shadowreplay.contract.bus import open_bus
from shadowreplay.contract.config import Config
from shadowreplay.contract.errors import ConfigError, ShadowError
from shadowreplay.contract.record import RequestRecord, decode_request


@dataclass
class NoiseSample:
    """Per endpoint: requests sent twice, and for each field how many pairs differed;
    ``failed`` counts pairs not compared (either answer was an error)."""

    requests: Counter[str] = field(default_factory=Counter)
    paths: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failed: Counter[str] = field(default_factory=Counter)

    def add(self, endpoint: str, paths: set[str]) -> None:
        self.requests[endpoint] += 1
        for p in {field_key(p) for p in paths}:
            self.paths[endpoint][p] += 1


def propose(sample: NoiseSample, *, min_rate: float = 0.0) -> str:
    """TOML for ``[comparer]``: ignore rules for every path whose rate of differing
    between two baseline answers is above ``min_rate`` (a fraction of that endpoint's requests)."""
    found: dict[str, dict[str, float]] = {}
    for endpoint, paths in sample.paths.items():
        n = sample.requests[endpoint]
        for path, k in paths.items():
            rate = k / n if n else 0.0
            if rate > min_rate:
                found.setdefault(path, {})[endpoint] = rate
    total = sum(sample.requests.values())
    notes = [
        f"Proposed by `shadowreplay noise learn`: {total} requests on {len(sample.requests)} endpoints,",
        "each sent twice to the baseline. Paste into [comparer] (merge with existing lists).",
        "Move a path to noise_paths instead of ignore_paths to keep counting it as noise.",
    ]
    if sample.failed:
        notes.append(f"{sum(sample.failed.values())} pairs not compared (an answer was an error).")
    glob = sorted(p for p, eps in found.items() if len(eps) > 1)
    for p in glob:
        eps = found[p]
        notes.append(f"  {p}: differs on {len(eps)} endpoints (up to {100 * max(eps.values()):.0f}% of requests)")
    per: dict[str, list[str]] = defaultdict(list)
    for p, eps in found.items():
        if len(eps) == 1:
            per[next(iter(eps))].append(p)
    rules: list[dict[str, Any]] = []
    for endpoint in sorted(per):
        for p in sorted(per[endpoint]):
            notes.append(f"  {endpoint}: {p}: {100 * found[p][endpoint]:.0f}% of {sample.requests[endpoint]} requests")
        rules.append({"match": endpoint, "ignore_paths": sorted(per[endpoint])})
    doc: dict[str, Any] = {"ignore_paths": glob}
    if rules:
        doc["comparer"] = {"endpoints": rules}
    return "".join(f"# {_one_line(line)}\n" for line in notes) + tomli_w.dumps(doc, multiline_strings=False)


# What a TOML comment may not hold: control characters (a newline would end the comment
# and let a JSON key or an endpoint name write TOML of its own).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _one_line(text: str) -> str:
    """``text`` for a comment line: control characters as Python escapes (``\\n``, ``\\x01``)."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


def read_sample(cfg: Config, count: int, idle_seconds: float = 2.0) -> list[RequestRecord]:
    """Up to ``count`` records from the start of the requests topic (blocking), as the
    replayer would send them: through its rules (method allow-list, filters, rewrites),
    and only of ``noise_probe_methods`` (each is sent twice: it must not change state)."""
    bus = open_bus(cfg.bus.url, cfg.bus.partitions)
    consumer = bus.consumer([cfg.bus.requests_topic], f"shadowreplay-noise-{uuid.uuid4().hex[:12]}")
    out: list[RequestRecord] = []
    rules = Rules(cfg.replayer.methods, cfg.replayer.rules)
    twice = {m.upper() for m in cfg.replayer.noise_probe_methods}
    last = time.monotonic()
    try:
        while len(out) < count and time.monotonic() - last < idle_seconds:
            batch = consumer.poll(max_records=500, timeout_seconds=0.5)
            if batch:
                last = time.monotonic()
            for m in batch:
                try:
                    record = decode_request(m.value)
                except ShadowError:
                    continue
                sent = rules.apply(record).record
                if sent is not None and sent.method in twice and len(out) < count:
                    out.append(sent)
    finally:
        consumer.close()
        bus.close()
    return out


async def learn(
    cfg: Config, records: list[RequestRecord], baseline: str, *, concurrency: int = 8, timeout_seconds: float = 10.0
) -> NoiseSample:
    """Send each record to ``baseline`` twice (one after the other) and count where the answers differ."""
    if not baseline.startswith(("http://", "https://")):
        raise ConfigError(f"noise learn: --baseline must be an http:// or https:// URL, got {baseline!r}")
    differ = Differ(cfg.comparer)
    sample = NoiseSample()
    gate = asyncio.Semaphore(concurrency)
    r = cfg.replayer
    client = TargetClient(
        "baseline",
        baseline,
        timeout_seconds=timeout_seconds,
        max_body_bytes=r.max_body_bytes,
        concurrency=concurrency,
        keep_host=r.keep_host,
        tls_verify=r.targets.baseline.tls_verify,
        streams=r.streams,
    )

    async def one(record: RequestRecord) -> None:
        async with gate:
            first = await client.send(record)
            second = await client.send(record)
        endpoint = differ.namer.name(record)
        if first.error is not None or second.error is not None:
            sample.failed[endpoint] += 1
            return
        rules = differ.rules(endpoint)
        diffs = differ.diff_pair(first, second, rules)
        sample.add(endpoint, {d.path for d in diffs if d.path not in rules.json.ignore})

    async with client:
        await asyncio.gather(*(one(rec) for rec in records))
    if records and not sample.requests:
        raise ShadowError(
            f"noise learn: no request got two answers from {baseline} ({sum(sample.failed.values())} pairs failed)"
        )
    return sample


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``noise learn`` under the ``noise`` parser ``p``."""
    p.description = "Noise rules for the comparer."
    noise = p.add_subparsers(dest="noise_command", required=True, metavar="SUBCOMMAND")
    learn_sp = noise.add_parser(
        "learn",
        help="replay a sample from the bus against the baseline twice and propose ignore rules (TOML)",
        description=(
            "Read a sample of recorded requests from the bus, send each one twice to the baseline (through "
            "the replayer's HTTP client, without cookies), and print, as TOML to paste into [comparer], "
            "ignore rules for every field that differed between the two answers (timestamps, random ids, ...)."
        ),
    )
    add_config_option(learn_sp)
    add_bus_option(learn_sp, "bus URL (default from config)")
    learn_sp.add_argument("--baseline", metavar="URL", help="base URL of the current release (default replayer.baseline)")
    learn_sp.add_argument("--sample", type=int, default=200, metavar="N", help="requests to send twice (default 200)")
    learn_sp.add_argument("--concurrency", type=int, default=8, metavar="N", help="pairs in flight (default 8)")
    learn_sp.add_argument(
        "--min-rate", type=float, default=0.0, metavar="F", help="propose only paths differing in more than F of requests"
    )
    learn_sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the proposal of ``noise learn``."""
    cfg = config_from_args(args)
    baseline = args.baseline or cfg.replayer.baseline
    if not baseline:
        raise ConfigError("noise learn: no baseline (pass --baseline URL or set replayer.baseline)")
    records = read_sample(cfg, max(1, args.sample))
    if not records:
        raise ShadowError(f"noise learn: no replayable requests on {cfg.bus.requests_topic} at {cfg.bus.url}")
    sample = asyncio.run(learn(cfg, records, baseline, concurrency=max(1, args.concurrency)))
    sys.stdout.write(propose(sample, min_rate=args.min_rate))
    return 0
