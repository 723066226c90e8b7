"""The comparer's consume → compare → count loop.

Results are polled in batches from the bus, each one decoded, compared and counted
(Prometheus metrics and per-endpoint tallies: :mod:`shadowreplay.comparer.verdict`), and the batch
is committed only once every message in it has been handled (at-least-once). A message
that cannot be decoded or compared is counted under ``shadow_compare_errors_total{reason}``,
logged, and skipped; it is still committed, since replaying it would fail the same way.
A result whose candidate or baseline was not reached is counted as not compared
(:mod:`shadowreplay.comparer.reach`), never as a divergence.

Whether a result diverged is decided per endpoint and field over the run (the noise
model of :mod:`shadowreplay.comparer.noise`): :meth:`Comparer.summary` and the store's readers judge
the tallies afresh, so every earlier request is re-judged as evidence comes in. The
Prometheus counters count each request once, as judged when it arrived.

Results that differ on a field judged real or not yet decided go to an optional
:class:`~shadowreplay.comparer.diff.DivergenceSink` (the divergence store): ``add(result, verdict)``
for each, then ``flush()`` once per batch, before the batch's offsets are committed.
Both are called on the event loop's thread and should be quick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from shadowreplay.comparer.diff import Differ, DivergenceSink, FieldDiff, Verdict
from shadowreplay.comparer.latency import LatencyVerdict
from shadowreplay.comparer.metrics import ComparerMetrics
from shadowreplay.comparer.noise import REAL, UNDECIDED
from shadowreplay.comparer.paths import field_key
from shadowreplay.comparer.reach import ReachWatch
from shadowreplay.comparer.verdict import EndpointJudgement, EndpointTally, FieldJudgement, judge, verdict_rules
from shadowreplay.contract.bus.aio import AsyncConsumer
from shadowreplay.contract.bus.base import Message
from shadowreplay.contract.config import ComparerConfig
from shadowreplay.contract.errors import RecordError
from shadowreplay.contract.record import ReplayResult, decode_result

log = logging.getLogger(__name__)

__all__ = ["Comparer", "DivergenceSink", "EndpointSummary", "FieldJudgement", "format_table"]

#: Field paths kept in an EndpointSummary.
SUMMARY_TOP_FIELDS = 10
#: Give the event loop a turn after this much uninterrupted comparing.
_YIELD_AFTER_SECONDS = 0.02


@dataclass(frozen=True)
class EndpointSummary:
    """One endpoint as judged now: ``diverged`` counts requests with a real difference,
    ``fields`` the real fields (status first) with those counts, ``noisy`` the requests
    that differed only in ways judged noise."""

    endpoint: str
    compared: int
    diverged: int
    kinds: dict[str, int]
    fields: dict[str, int]
    noisy: int = 0
    latency: LatencyVerdict = field(default_factory=LatencyVerdict)
    not_compared: int = 0

    @property
    def rate(self) -> float:
        """Fraction of compared results that diverged (0.0 when none compared)."""
        return self.diverged / self.compared if self.compared else 0.0


def summarise(j: EndpointJudgement) -> EndpointSummary:
    real = [f for f in j.fields if f.real][:SUMMARY_TOP_FIELDS]
    return EndpointSummary(
        endpoint=j.endpoint,
        compared=j.compared,
        diverged=j.diverged,
        kinds=j.kinds,
        fields={f.path: f.diverged for f in real},
        noisy=j.noise,
        latency=j.latency,
        not_compared=j.not_compared_total,
    )


class Comparer:
    """Consumes ReplayResults from ``consumer`` and compares each one.

    ``compared`` counts compared results since start, ``not_compared`` those whose
    candidate or baseline was not reached, ``skipped`` those that could not be compared
    at all; :attr:`diverged` is the number of compared results with a real difference,
    judged now. Bus errors from poll or commit propagate out of :meth:`run` (the caller
    decides whether to restart).

    ``store`` receives the results worth keeping (see the module docstring); ``differ``
    defaults to ``Differ(config)`` (raises ConfigError on a bad route or path pattern).
    """

    def __init__(
        self,
        config: ComparerConfig,
        consumer: AsyncConsumer,
        metrics: ComparerMetrics,
        *,
        store: DivergenceSink | None = None,
        differ: Differ | None = None,
        max_batch: int = 500,
        poll_timeout_seconds: float = 0.5,
        replayer_group: str = "shadow-replayer",
    ) -> None:
        self._config = config
        self._consumer = consumer
        self._metrics = metrics
        self._store = store
        self.differ = differ if differ is not None else Differ(config)
        self.rules = verdict_rules(config)
        self._max_batch = max_batch
        self._poll_timeout = poll_timeout_seconds
        self._endpoints = metrics.endpoints  # the same bound for labels and tally keys
        self.tallies: dict[str, EndpointTally] = {}
        self._judged: dict[str, tuple[int, EndpointJudgement]] = {}  # by tally version
        self.reach = ReachWatch(replayer_group)
        self.compared = 0
        self.not_compared = 0
        self.skipped = 0
        self._overflow_logged = False
        metrics.watch(self)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll, compare and commit until ``stop`` is set; the current batch is finished first."""
        while not stop.is_set():
            messages = await self._consumer.poll(self._max_batch, self._poll_timeout)
            if not messages:
                continue
            await self._handle_batch(messages)
            if self._store is not None:
                self._store.flush()
            await self._consumer.commit(messages)

    async def _handle_batch(self, messages: Sequence[Message]) -> None:
        started = time.monotonic()
        for message in messages:
            self.handle(message)
            if time.monotonic() - started > _YIELD_AFTER_SECONDS:
                await asyncio.sleep(0)
                started = time.monotonic()

    def handle(self, message: Message) -> Verdict | None:
        """Decode, compare and count one bus message; None when it could not be decoded."""
        try:
            result = decode_result(message.value)
        except RecordError as exc:
            self._skip("undecodable", message, str(exc))
            return None
        return self.handle_result(result)

    def tally(self, endpoint: str) -> EndpointTally:
        key = self._endpoints(endpoint)
        found = self.tallies.get(key)
        if found is None:
            found = self.tallies[key] = EndpointTally()
        return found

    def handle_result(self, result: ReplayResult) -> Verdict:
        """Compare and count one decoded result."""
        try:
            verdict = self.differ.compare(result)
        except Exception:  # a bug in the diff engine must not stop the stream
            log.exception("comparing result %s failed", result.id)
            verdict = Verdict(result.endpoint, "", (), "compare_failed")
        self.reach.observe(result)
        if verdict.error is not None:
            if verdict.not_reached is not None:
                self.not_compared += 1
                self.tally(verdict.endpoint).add_not_compared(*verdict.not_reached)
            else:
                self.skipped += 1
                if self.skipped == 1 or self.skipped % 1000 == 0:
                    log.warning(
                        "result %s not compared: %s (%d skipped so far)", result.id, verdict.error, self.skipped
                    )
            self._metrics.observe(result, verdict, ())
            return verdict
        self.compared += 1
        tally = self.tally(verdict.endpoint)
        signature = tally.add(verdict, result)
        real: list[FieldDiff] = []
        keep = False
        if signature:
            noise = self.rules.noise
            states = {key: tally.state(key, noise) for key, _ in signature}
            keep = any(s in (REAL, UNDECIDED) for s in states.values())
            if keep:
                real = [d for d in verdict.diffs if states.get(tally.known_key(field_key(d.path))) == REAL]
            if tally.overflow_count == 1 and not self._overflow_logged:
                self._overflow_logged = True
                log.warning(
                    "endpoint %s: more than %d combinations of differing fields; further ones are pooled "
                    "(their diverged count is an upper bound)", verdict.endpoint, len(tally.signatures),
                )
        self._metrics.observe(result, verdict, tuple(real))
        if keep and self._store is not None:
            self._store.add(result, verdict, real=bool(real))
        return verdict

    def _skip(self, reason: str, message: Message, detail: str) -> None:
        self._metrics.error(reason)
        self.skipped += 1
        if self.skipped == 1 or self.skipped % 1000 == 0:
            log.warning(
                "skipping %s message %s[%d]@%d: %s (%d skipped so far)",
                reason,
                message.topic,
                message.partition,
                message.offset,
                detail,
                self.skipped,
            )

    def unreachable_targets(self) -> dict[str, object]:
        """The targets not reached now, with their outage (for the gauges and /readyz)."""
        return dict(self.reach.down())

    def judgements(self) -> list[EndpointJudgement]:
        """Every endpoint judged now, highest divergence rate first, then most compared."""
        out = []
        for name, t in self.tallies.items():
            cached = self._judged.get(name)
            if cached is None or cached[0] != t.version:
                cached = self._judged[name] = (t.version, judge(name, t, self.rules))
            out.append(cached[1])
        out.sort(key=lambda j: (-j.rate, -j.compared, j.endpoint))
        return out

    @property
    def diverged(self) -> int:
        """Compared results with a real difference, judged now."""
        return sum(j.diverged for j in self.judgements())

    def summary(self) -> list[EndpointSummary]:
        """Per-endpoint totals as judged now, highest divergence rate first, then most compared."""
        return [summarise(j) for j in self.judgements()]

    def summary_table(self) -> str:
        """``summary()`` as a plain-text table for the terminal (``format_table``)."""
        return format_table(self.summary())


def format_table(summaries: Sequence[EndpointSummary], top_fields: int = 3) -> str:
    """A plain-text table for the terminal: endpoint, compared, diverged, rate, latency, top fields."""
    header = ("endpoint", "compared", "diverged", "rate", "latency p50 ms (base → cand)", "real diverging fields")
    rows = [
        (
            s.endpoint,
            str(s.compared),
            str(s.diverged),
            f"{100.0 * s.rate:.1f}%",
            _latency_cell(s.latency),
            ", ".join(f"{path} ({n})" for path, n in list(s.fields.items())[:top_fields]) or "-",
        )
        for s in summaries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:4], widths[1:4], strict=True)),
             r[4].ljust(widths[4]), r[5]]
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _latency_cell(v: LatencyVerdict) -> str:
    if v.baseline_p50_ms is None or v.candidate_p50_ms is None:
        return "-"
    flag = "  SLOWER" if v.regression else ""
    return f"{v.baseline_p50_ms:.1f} → {v.candidate_p50_ms:.1f}{flag}"
