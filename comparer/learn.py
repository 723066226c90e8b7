"""``shadowreplay noise learn``: find noisy fields by asking the baseline the same thing twice.

A sample of recorded requests is read from the bus (a throw-away consumer group, from
the beginning), each is sent to the baseline twice in a row, and the two answers are
diffed under the current ``[comparer]`` rules. Whatever differs between two answers of
the same release to the same request is noise; the paths are proposed as TOML to paste
into ``[comparer]`` (array indexes generalised to ``[*]``; a path seen on several
endpoints becomes a global rule, one seen on a single endpoint an ``[[comparer.endpoints]]``
rule). The proposal itself (:func:`propose`) is pure.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import aiohttp

from comparer.diff import Differ
from shadowreplay.bus import open_bus
from shadowreplay.config import Config
from shadowreplay.errors import ConfigError, ShadowError
from shadowreplay.record import RequestRecord, Response, decode_request

log = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
)
_INDEX = re.compile(r"\[\d+\]")


@dataclass
class NoiseSample:
    """Per endpoint: requests sent twice, and for each generalised path how many pairs differed."""

    requests: Counter[str] = field(default_factory=Counter)
    paths: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, endpoint: str, paths: set[str]) -> None:
        self.requests[endpoint] += 1
        for p in {generalise(p) for p in paths}:
            self.paths[endpoint][p] += 1


def generalise(path: str) -> str:
    """``$.items[3].ts`` → ``$.items[*].ts``; JSON-RPC ids too; other paths unchanged."""
    if not path.startswith("$"):
        return path
    # ``[?(@.id==7)][1]`` (the second answer with a duplicate id) is one element too.
    path = re.sub(r"\[\?\(@\.id==(?:[^)]|\)(?!\]))*\)\](?:\[\d+\])?", "[*]", path)
    return _INDEX.sub("[*]", path)


def _toml_list(items: list[str], indent: str = "") -> str:
    if not items:
        return "[]"
    inner = ",\n".join(f'{indent}    "{_toml_escape(i)}"' for i in items)
    return f"[\n{inner},\n{indent}]"


def _toml_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


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
    lines = [
        f"# Proposed by `shadowreplay noise learn`: {total} requests on {len(sample.requests)} endpoints,",
        "# each sent twice to the baseline. Paste into [comparer] (merge with existing lists).",
        "# Move a path to noise_paths instead of ignore_paths to keep counting it as noise.",
    ]
    glob = sorted(p for p, eps in found.items() if len(eps) > 1)
    for p in glob:
        eps = found[p]
        lines.append(f"#   {p}: differs on {len(eps)} endpoints (up to {100 * max(eps.values()):.0f}% of requests)")
    lines.append(f"ignore_paths = {_toml_list(glob)}")
    per: dict[str, list[str]] = defaultdict(list)
    for p, eps in found.items():
        if len(eps) == 1:
            per[next(iter(eps))].append(p)
    for endpoint in sorted(per):
        lines.append("")
        lines.append("[[comparer.endpoints]]")
        lines.append(f'match = "{_toml_escape(endpoint)}"')
        for p in sorted(per[endpoint]):
            lines.append(f"#   {p}: {100 * found[p][endpoint]:.0f}% of {sample.requests[endpoint]} requests")
        lines.append(f"ignore_paths = {_toml_list(sorted(per[endpoint]))}")
    return "\n".join(lines) + "\n"


def read_sample(cfg: Config, count: int, idle_seconds: float = 2.0) -> list[RequestRecord]:
    """Up to ``count`` replayable records from the start of the requests topic (blocking)."""
    bus = open_bus(cfg.bus.url, cfg.bus.partitions)
    consumer = bus.consumer([cfg.bus.requests_topic], f"shadowreplay-noise-{uuid.uuid4().hex[:12]}")
    out: list[RequestRecord] = []
    methods = {m.upper() for m in cfg.replayer.methods}
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
                if record.method.upper() in methods and len(out) < count:
                    out.append(record)
    finally:
        consumer.close()
        bus.close()
    return out


async def _send(session: aiohttp.ClientSession, base: str, record: RequestRecord, max_body: int) -> Response:
    headers = [(k, v) for k, v in record.headers if k.lower() not in _HOP_BY_HOP]
    started = time.monotonic()
    try:
        async with session.request(
            record.method, base.rstrip("/") + record.target, headers=headers, data=record.body, allow_redirects=False
        ) as resp:
            body = await resp.content.read(max_body + 1)
            return Response(
                status=resp.status,
                headers=tuple((k, v) for k, v in resp.headers.items()),
                body=body[:max_body],
                truncated=len(body) > max_body,
                latency=time.monotonic() - started,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Response(error=f"{type(exc).__name__}: {exc}")


async def learn(
    cfg: Config, records: list[RequestRecord], baseline: str, *, concurrency: int = 8, timeout_seconds: float = 10.0
) -> NoiseSample:
    """Send each record to ``baseline`` twice and count where the two answers differ."""
    if not baseline.startswith(("http://", "https://")):
        raise ConfigError(f"noise learn: --baseline must be an http:// or https:// URL, got {baseline!r}")
    differ = Differ(cfg.comparer)
    sample = NoiseSample()
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    max_body = cfg.replayer.max_body_bytes

    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=True) as session:

        async def one(record: RequestRecord) -> None:
            async with gate:
                first = await _send(session, baseline, record, max_body)
                second = await _send(session, baseline, record, max_body)
            endpoint = differ.namer.name(record)
            rules = differ.rules(endpoint)
            diffs = differ.diff_pair(first, second, rules)
            sample.add(endpoint, {d.path for d in diffs if d.path not in rules.json.ignore})

        await asyncio.gather(*(one(r) for r in records))
    return sample
