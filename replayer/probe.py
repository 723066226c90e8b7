"""Noise probes: which replayed requests also go a second time to the reference target.

Without a secondary, the comparer has no second copy of the current release to learn
noise from (timestamps, random ids, a ``served_by`` with a few values). So a small
sample of requests is sent twice, at the same moment, to the baseline (to the candidate
when there is no baseline): what differs between the two answers is noise, learned per
endpoint and field the same way as with a secondary. The second answer travels in the
result as ``responses["probe"]`` (``shadowreplay.contract.record.PROBE``).

Sampled: the first ``noise_probe_min_per_endpoint`` requests of each endpoint (so a
rare endpoint gets evidence too), then ``noise_probe_percent`` of the others, chosen
by a hash of the record id (the same records whatever the worker or the run). Only
``noise_probe_methods`` are asked twice (safe methods by default: asking twice must not
change the target's state). ``noise_probe_percent = 0`` turns probes off; with a
secondary they are never sent.
"""

from __future__ import annotations

import zlib

from shadowreplay.contract.config import ReplayerConfig
from shadowreplay.contract.record import RequestRecord

#: Endpoints counted for the per-endpoint minimum; past this, only the percentage applies
#: (paths that do not collapse into templates must not all be asked twice).
MAX_ENDPOINTS = 1000


class ProbeSampler:
    """``target_for(record, endpoint)``: the target to ask a second time, or None."""

    def __init__(self, config: ReplayerConfig) -> None:
        off = bool(config.secondary) or config.noise_probe_percent <= 0
        target = "baseline" if config.baseline else "candidate" if config.noise_probe_candidate else None
        self.target: str | None = None if off else target
        self._per_10000 = round(config.noise_probe_percent * 100)
        self._methods = frozenset(m.upper() for m in config.noise_probe_methods)
        self._min = config.noise_probe_min_per_endpoint
        self._seen: dict[str, int] = {}
        self.sent = 0

    def target_for(self, record: RequestRecord, endpoint: str) -> str | None:
        if self.target is None or record.method.upper() not in self._methods:
            return None
        n = self._seen.get(endpoint)
        if n is None and len(self._seen) < MAX_ENDPOINTS:
            n = 0
        if n is not None and n < self._min:
            self._seen[endpoint] = n + 1
        elif zlib.crc32(record.id.encode()) % 10000 >= self._per_10000:
            return None
        self.sent += 1
        return self.target
