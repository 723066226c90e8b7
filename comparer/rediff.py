"""``shadowreplay compare --rediff``: re-run the diff engine over stored divergences.

After changing ignore rules (headers, paths, tolerances), every stored divergence is
compared again with the current config: one that no longer differs is removed, one whose
diffs changed is updated. The per-endpoint tallies (field counts and signatures) are
corrected by an adjustment session (``rediff-…``) so totals stay the sum over sessions,
and the current verdict thresholds are recorded in the store. Only stored divergences
can be re-diffed: results not stored (or pruned) keep their counts. Rows are processed
in id order, ``chunk`` at a time, each chunk in its own transaction (bounded memory).

Bodies were stored capped at ``comparer.store.max_body_bytes``: a capped body can only
be compared by digest of what was kept, so raise that cap if you rely on re-diffing big
bodies structurally.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from shadowreplay.comparer.diff import Differ, Verdict
from shadowreplay.comparer.paths import field_key
from shadowreplay.comparer.store import diff_keys, diffs_to_json, open_schema, signature_text, write_rules
from shadowreplay.comparer.verdict import status_first, verdict_rules
from shadowreplay.contract.config import ComparerConfig
from shadowreplay.contract.errors import RecordError, ShadowError
from shadowreplay.contract.record import ReplayResult

log = logging.getLogger(__name__)

DiffFn = Callable[[ReplayResult], Verdict]


def make_differ(config: ComparerConfig) -> DiffFn:
    """The comparer's diff for one result under ``config`` (the same code the loop runs)."""
    return Differ(config).compare


@dataclass
class RediffOutcome:
    """What a re-diff did; ``before``/``after`` count stored divergences per endpoint."""

    examined: int = 0
    unchanged: int = 0
    changed: int = 0
    removed: int = 0
    undecodable: int = 0
    before: Counter[str] = field(default_factory=Counter)
    after: Counter[str] = field(default_factory=Counter)
    fields_before: Counter[tuple[str, str]] = field(default_factory=Counter)
    fields_after: Counter[tuple[str, str]] = field(default_factory=Counter)

    def format(self) -> str:
        """A before/after table for the terminal."""
        lines = [
            f"re-diffed {self.examined} stored divergences: {self.removed} no longer diverge (removed), "
            f"{self.changed} changed, {self.unchanged} unchanged"
            + (f", {self.undecodable} unreadable (kept)" if self.undecodable else "")
        ]
        names = sorted(set(self.before) | set(self.after), key=lambda n: (-self.before[n], n))
        if names:
            width = max(len("endpoint"), *(len(n) for n in names))
            lines.append(f"\n{'endpoint'.ljust(width)}  {'before':>7}  {'after':>7}")
            for n in names:
                lines.append(f"{n.ljust(width)}  {self.before[n]:>7}  {self.after[n]:>7}")
        gone = [k for k in self.fields_before if self.fields_after[k] == 0]
        if gone:
            lines.append("\nfields that no longer diverge:")
            for ep, path in sorted(gone)[:50]:
                lines.append(f"  {ep}  {path}  ({self.fields_before[(ep, path)]} before)")
        return "\n".join(lines)


def rediff(path: str, differ: DiffFn, *, chunk: int = 500, config: ComparerConfig | None = None) -> RediffOutcome:
    """Re-compare every divergence stored at ``path`` with ``differ``; update the store
    (and record ``config``'s verdict thresholds in it, when given)."""
    out = RediffOutcome()
    session = f"rediff-{uuid.uuid4().hex}"
    sig_delta: Counter[tuple[str, str]] = Counter()
    field_delta: Counter[tuple[str, str]] = Counter()
    conn = open_schema(path)
    try:
        if config is not None:
            with conn:
                write_rules(conn, verdict_rules(config))
        last = 0
        while True:
            rows = conn.execute(
                "SELECT id, endpoint, diffs, result FROM divergences WHERE id > ? ORDER BY id LIMIT ?",
                (last, chunk),
            ).fetchall()
            if not rows:
                break
            last = rows[-1]["id"]
            with conn:
                for row in rows:
                    _one(conn, row, differ, out, sig_delta, field_delta)
        now = time.time_ns()
        with conn:
            endpoints = {ep for ep, _ in sig_delta} | {ep for ep, _ in field_delta}
            conn.executemany(
                "INSERT INTO counts (session, endpoint, compared, diverged, noisy, updated_ns, tallied)"
                " VALUES (?, ?, 0, 0, 0, ?, 1)",
                [(session, ep, now) for ep in sorted(endpoints)],
            )
            conn.executemany(
                "INSERT INTO signatures (session, endpoint, sig, count) VALUES (?, ?, ?, ?)",
                [(session, ep, sig, d) for (ep, sig), d in sig_delta.items() if d],
            )
            conn.executemany(
                "INSERT INTO field_counts (session, endpoint, path, raw, noise) VALUES (?, ?, ?, ?, 0)",
                [(session, ep, p, d) for (ep, p), d in field_delta.items() if d],
            )
    except Exception as exc:
        if isinstance(exc, ShadowError):
            raise
        raise ShadowError(f"divergence store {path}: re-diff failed: {exc}") from exc
    finally:
        conn.close()
    return out


def _one(
    conn: sqlite3.Connection,
    row: sqlite3.Row,
    differ: DiffFn,
    out: RediffOutcome,
    sig_delta: Counter[tuple[str, str]],
    field_delta: Counter[tuple[str, str]],
) -> None:
    div_id, endpoint = row["id"], row["endpoint"]
    out.examined += 1
    old = orjson.loads(row["diffs"])
    old_paths = {d["path"] for d in old}
    old_sig = signature_text({(field_key(d["path"]), d["kind"]) for d in old})
    old_keys = {field_key(p) for p in old_paths}
    out.before[endpoint] += 1
    for p in old_paths:
        out.fields_before[(endpoint, p)] += 1
    try:
        result = ReplayResult.from_wire(orjson.loads(row["result"]))
        verdict = differ(result)
    except (RecordError, orjson.JSONDecodeError) as exc:
        out.undecodable += 1
        out.after[endpoint] += 1
        for p in old_paths:
            out.fields_after[(endpoint, p)] += 1
        log.warning("stored divergence %d cannot be re-read: %s (kept)", div_id, exc)
        return
    if not verdict.diverged:
        conn.execute("DELETE FROM divergences WHERE id = ?", (div_id,))
        conn.execute("DELETE FROM diff_fields WHERE divergence_id = ?", (div_id,))
        out.removed += 1
        sig_delta[(endpoint, old_sig)] -= 1
        for k in old_keys:
            field_delta[(endpoint, k)] -= 1
        return
    out.after[endpoint] += 1
    new = status_first(diffs_to_json(verdict.diffs))
    new_paths = {d["path"] for d in new}
    for p in new_paths:
        out.fields_after[(endpoint, p)] += 1
    if orjson.dumps(new, default=str) == orjson.dumps(old, default=str):
        out.unchanged += 1
        return
    out.changed += 1
    new_keys = {field_key(p) for p in new_paths}
    for k in old_keys - new_keys:
        field_delta[(endpoint, k)] -= 1
    for k in new_keys - old_keys:
        field_delta[(endpoint, k)] += 1
    new_sig = signature_text({(field_key(d.path), d.kind) for d in verdict.diffs})
    if new_sig != old_sig:
        sig_delta[(endpoint, old_sig)] -= 1
        sig_delta[(endpoint, new_sig)] += 1
    kinds = sorted({d.kind for d in verdict.diffs})
    conn.execute(
        "UPDATE divergences SET diffs = ?, noise = ?, kinds = ?, reference = ?, keys = ? WHERE id = ?",
        (orjson.dumps(new, default=str), orjson.dumps(status_first(diffs_to_json(verdict.noise)), default=str),
         ",".join(kinds), verdict.reference, orjson.dumps(diff_keys(verdict.diffs)).decode(), div_id),
    )
    conn.execute("DELETE FROM diff_fields WHERE divergence_id = ?", (div_id,))
    conn.executemany(
        "INSERT INTO diff_fields (divergence_id, endpoint, path, kind) VALUES (?, ?, ?, ?)",
        sorted({(div_id, endpoint, d.path, d.kind) for d in verdict.diffs}),
    )
