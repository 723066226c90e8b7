"""The divergence store: diverging results and per-endpoint counts in one SQLite file.

The comparer calls :meth:`DivergenceStore.add` for every diverging verdict and
:meth:`DivergenceStore.flush` once per batch (before it commits the batch), so what is on
disk never lags what was committed on the bus. Each stored divergence keeps the request,
every target's response (bodies capped at ``max_body_bytes``), the field diffs, the
endpoint and the time it was stored. Counts of compared/diverged results per endpoint are
kept per comparer *session* (one per process run) as absolute snapshots, so totals (the
sum over sessions) survive restarts and add up across several comparer processes.

Retention: divergences older than ``max_age_seconds`` and all but the newest
``max_count`` are pruned every ``prune_interval_seconds``, by id range (index-only).

:class:`StoreReader` is the read side used by the web page, ``shadowreplay diffs`` and
``shadowreplay report``; it opens its own connections, read-only, and treats a missing
file as an empty store.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from comparer.diff import FieldDiff, Verdict
from comparer.loop import Comparer
from shadowreplay.config import StoreConfig
from shadowreplay.errors import ShadowError
from shadowreplay.record import ReplayResult, Response, readable

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: add() flushes on its own past this many pending divergences (bounded memory).
MAX_PENDING = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS divergences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ns INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    result_id TEXT NOT NULL,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    reference TEXT NOT NULL,
    kinds TEXT NOT NULL,
    diffs BLOB NOT NULL,
    noise BLOB NOT NULL,
    result BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS divergences_ts ON divergences (ts_ns);
CREATE INDEX IF NOT EXISTS divergences_endpoint ON divergences (endpoint, id);
CREATE TABLE IF NOT EXISTS diff_fields (
    divergence_id INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS diff_fields_div ON diff_fields (divergence_id);
CREATE INDEX IF NOT EXISTS diff_fields_endpoint ON diff_fields (endpoint, path);
CREATE TABLE IF NOT EXISTS counts (
    session TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    compared INTEGER NOT NULL,
    diverged INTEGER NOT NULL,
    noisy INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    PRIMARY KEY (session, endpoint)
);
CREATE TABLE IF NOT EXISTS field_counts (
    session TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    path TEXT NOT NULL,
    raw INTEGER NOT NULL,
    noise INTEGER NOT NULL,
    PRIMARY KEY (session, endpoint, path)
);
"""


def resolve_store_path(config: StoreConfig, bus_url: str) -> str:
    """The store file: ``config.path``, else beside a sqlite:// bus file, else in the cwd."""
    if config.path:
        return config.path
    base = bus_url.split("?", 1)[0]
    if base.startswith("sqlite:///"):
        bus_path = Path(base[len("sqlite:///"):])
        return str(bus_path.with_name(bus_path.stem + ".diffs.db"))
    return "shadowreplay-diffs.db"


@dataclass(frozen=True)
class FieldCount:
    """Lifetime counts of one field of one endpoint: raw differences and noise among them."""

    endpoint: str
    path: str
    raw: int
    noise: int = 0


@dataclass(frozen=True)
class CountsSnapshot:
    """This session's totals: ``endpoints`` maps name → (compared, diverged, noisy), where
    ``noisy`` counts compared results in which some difference was cancelled as noise."""

    endpoints: dict[str, tuple[int, int, int]]
    fields: list[FieldCount] = field(default_factory=list)


CountsSource = Callable[[], CountsSnapshot]
Listener = Callable[[list[dict[str, Any]]], None]


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error as exc:
        raise ShadowError(f"divergence store {path}: {exc}") from exc
    conn.row_factory = sqlite3.Row
    return conn


def open_schema(path: str) -> sqlite3.Connection:
    """A writable connection to the store at ``path``, schema created if needed."""
    conn = _connect(path)
    try:
        with conn:
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise ShadowError(f"divergence store {path}: schema {row['value']} is newer than this build")
    except sqlite3.Error as exc:
        conn.close()
        raise ShadowError(f"divergence store {path}: {exc}") from exc
    return conn


def cap_result(result: ReplayResult, max_body_bytes: int) -> dict[str, Any]:
    """The result's wire form with every response body cut to ``max_body_bytes`` (marked truncated)."""
    wire = result.to_wire()
    for name, response in result.responses.items():
        if len(response.body) > max_body_bytes:
            capped = Response(
                status=response.status,
                headers=response.headers,
                body=response.body[:max_body_bytes],
                truncated=True,
                latency=response.latency,
                ttfb=response.ttfb,
                error=response.error,
            )
            wire["responses"][name] = capped.to_wire()
    return wire


def diffs_to_json(diffs: Iterable[FieldDiff]) -> list[dict[str, Any]]:
    return [{"path": d.path, "kind": d.kind, "left": d.left, "right": d.right} for d in diffs]


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


class DivergenceStore:
    """The write side (one per comparer process). Not thread-safe: call from one thread."""

    def __init__(
        self,
        path: str,
        config: StoreConfig,
        *,
        counts: CountsSource | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = path
        self._config = config
        self._conn = open_schema(path)
        self._counts = counts
        self._clock = clock
        self.session = uuid.uuid4().hex
        self._pending: list[tuple[int, ReplayResult, Verdict]] = []
        self._listeners: list[Listener] = []
        self._last_prune = 0
        self._written: dict[tuple[str, str, str], tuple[int, ...]] = {}
        self.stored = 0
        self.pruned = 0

    def set_counts_source(self, counts: CountsSource) -> None:
        """Where :meth:`flush` reads this session's per-endpoint totals from."""
        self._counts = counts

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with the summaries of newly stored divergences after each flush."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def add(self, result: ReplayResult, verdict: Verdict) -> None:
        """Queue one diverging result; durable after the next :meth:`flush`."""
        if not verdict.diverged:
            return
        self._pending.append((self._clock(), result, verdict))
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Write pending divergences and this session's changed counts in one transaction;
        prune when due."""
        pending, self._pending = self._pending, []
        now = self._clock()
        snapshot = self._counts() if self._counts is not None else None
        added: list[dict[str, Any]] = []
        try:
            with self._conn:
                for ts, result, verdict in pending:
                    added.append(self._insert(ts, result, verdict))
                if snapshot is not None:
                    self._write_counts(snapshot, now)
        except sqlite3.Error as exc:
            raise ShadowError(f"divergence store {self.path}: {exc}") from exc
        self.stored += len(added)
        if now - self._last_prune >= self._config.prune_interval_seconds * 1e9:
            self.prune(now)
        if added:
            for listener in list(self._listeners):
                try:
                    listener(added)
                except Exception:  # a broken subscriber must not stop the comparer
                    log.exception("divergence listener failed")

    def _insert(self, ts: int, result: ReplayResult, verdict: Verdict) -> dict[str, Any]:
        kinds = sorted({d.kind for d in verdict.diffs})
        req = result.request
        cur = self._conn.execute(
            "INSERT INTO divergences (ts_ns, endpoint, result_id, method, target, reference, kinds, diffs, noise, result)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ts,
                verdict.endpoint,
                result.id,
                req.method,
                readable(req.target),  # SQLite and the page take text; the exact bytes stay in "result"
                verdict.reference,
                ",".join(kinds),
                _dumps(diffs_to_json(verdict.diffs)),
                _dumps(diffs_to_json(verdict.noise)),
                _dumps(cap_result(result, self._config.max_body_bytes)),
            ),
        )
        div_id = int(cur.lastrowid or 0)
        seen: set[tuple[str, str]] = set()
        for d in verdict.diffs:
            seen.add((d.path, d.kind))
        self._conn.executemany(
            "INSERT INTO diff_fields (divergence_id, endpoint, path, kind) VALUES (?, ?, ?, ?)",
            [(div_id, verdict.endpoint, p, k) for p, k in sorted(seen)],
        )
        return {
            "id": div_id,
            "ts_ns": ts,
            "endpoint": verdict.endpoint,
            "result_id": result.id,
            "method": req.method,
            "target": readable(req.target),
            "kinds": kinds,
            "paths": sorted({d.path for d in verdict.diffs})[:20],
        }

    def _write_counts(self, snapshot: CountsSnapshot, now: int) -> None:
        endpoints = [
            (self.session, ep, c, d, n, now)
            for ep, (c, d, n) in snapshot.endpoints.items()
            if self._changed(("endpoint", ep, ""), (c, d, n))
        ]
        fields = [
            (self.session, f.endpoint, f.path, f.raw, f.noise)
            for f in snapshot.fields
            if self._changed(("field", f.endpoint, f.path), (f.raw, f.noise))
        ]
        self._conn.executemany(
            "INSERT INTO counts (session, endpoint, compared, diverged, noisy, updated_ns) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (session, endpoint) DO UPDATE SET compared = excluded.compared,"
            " diverged = excluded.diverged, noisy = excluded.noisy, updated_ns = excluded.updated_ns",
            endpoints,
        )
        self._conn.executemany(
            "INSERT INTO field_counts (session, endpoint, path, raw, noise) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (session, endpoint, path) DO UPDATE SET raw = excluded.raw, noise = excluded.noise",
            fields,
        )

    def _changed(self, key: tuple[str, str, str], value: tuple[int, ...]) -> bool:
        if self._written.get(key) == value:
            return False
        self._written[key] = value
        return True

    def prune(self, now: int | None = None) -> int:
        """Delete divergences past the age or count limit; returns how many went."""
        now = self._clock() if now is None else now
        self._last_prune = now
        cutoff = now - int(self._config.max_age_seconds * 1e9)
        try:
            with self._conn:
                by_age = self._conn.execute(
                    "SELECT MAX(id) FROM divergences WHERE ts_ns < ?", (cutoff,)
                ).fetchone()[0]
                by_count = self._conn.execute(
                    "SELECT id FROM divergences ORDER BY id DESC LIMIT 1 OFFSET ?", (self._config.max_count,)
                ).fetchone()
                upto = max(by_age or 0, by_count[0] if by_count else 0)
                if not upto:
                    return 0
                n = self._conn.execute("DELETE FROM divergences WHERE id <= ?", (upto,)).rowcount
                self._conn.execute("DELETE FROM diff_fields WHERE divergence_id <= ?", (upto,))
        except sqlite3.Error as exc:
            raise ShadowError(f"divergence store {self.path}: {exc}") from exc
        if n:
            self.pruned += n
            log.info("pruned %d divergences from %s (%d pruned so far)", n, self.path, self.pruned)
        return n

    def close(self) -> None:
        """Flush what is pending and close the file."""
        try:
            self.flush()
        finally:
            self._conn.close()


# -- reading ---------------------------------------------------------------------------


@dataclass
class FieldView:
    path: str
    kinds: list[str]
    raw: int
    noise: int
    stored: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kinds": self.kinds, "raw": self.raw, "noise": self.noise, "stored": self.stored}


@dataclass
class EndpointView:
    """One endpoint as the page, ``diffs --json`` and the report show it."""

    endpoint: str
    compared: int
    diverged: int
    noise: int  # compared results in which some difference was cancelled as noise
    stored: int
    fields: list[FieldView]

    @property
    def rate(self) -> float:
        return self.diverged / self.compared if self.compared else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "compared": self.compared,
            "diverged": self.diverged,
            "rate": round(self.rate, 6),
            "noise": self.noise,
            "stored": self.stored,
            "fields": [f.to_json() for f in self.fields],
        }


class StoreReader:
    """Read-only queries over a store file (a missing file reads as empty)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if not Path(self.path).exists():
            return []
        conn = _connect(self.path, readonly=True)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise ShadowError(f"divergence store {self.path}: {exc}") from exc
        finally:
            conn.close()

    def endpoints(self, *, endpoint: str | None = None, since_ns: int | None = None) -> list[EndpointView]:
        """Endpoints by divergence rate (highest first), each with its diverging fields.

        ``compared``/``diverged``/``raw``/``noise`` are lifetime counters; ``stored`` counts
        stored divergences, only those at or after ``since_ns`` when given.
        """
        since = since_ns or 0
        where, params = ("WHERE endpoint = ?", [endpoint]) if endpoint else ("", [])
        counts = {
            r["endpoint"]: (int(r["c"]), int(r["d"]), int(r["n"]))
            for r in self._query(
                f"SELECT endpoint, SUM(compared) c, SUM(diverged) d, SUM(noisy) n FROM counts {where} GROUP BY endpoint",
                params,
            )
        }
        fcounts: dict[tuple[str, str], tuple[int, int]] = {
            (r["endpoint"], r["path"]): (int(r["raw"]), int(r["noise"]))
            for r in self._query(
                f"SELECT endpoint, path, SUM(raw) raw, SUM(noise) noise FROM field_counts {where} GROUP BY endpoint, path",
                params,
            )
        }
        stored = {
            r["endpoint"]: int(r["n"])
            for r in self._query(
                "SELECT endpoint, COUNT(*) n FROM divergences WHERE ts_ns >= ?"
                + (" AND endpoint = ?" if endpoint else "")
                + " GROUP BY endpoint",
                [since, *params],
            )
        }
        sfields: dict[tuple[str, str], tuple[int, set[str]]] = {}
        for r in self._query(
            "SELECT f.endpoint, f.path, f.kind, COUNT(DISTINCT f.divergence_id) n FROM diff_fields f"
            " JOIN divergences d ON d.id = f.divergence_id WHERE d.ts_ns >= ?"
            + (" AND f.endpoint = ?" if endpoint else "")
            + " GROUP BY f.endpoint, f.path, f.kind",
            [since, *params],
        ):
            key = (r["endpoint"], r["path"])
            n, kinds = sfields.get(key, (0, set()))
            kinds.add(r["kind"])
            sfields[key] = (n + int(r["n"]), kinds)
        names = set(counts) | set(stored) | {ep for ep, _ in fcounts} | {ep for ep, _ in sfields}
        out: list[EndpointView] = []
        for name in names:
            compared, diverged, noisy = counts.get(name, (0, 0, 0))
            paths = {p for ep, p in fcounts if ep == name} | {p for ep, p in sfields if ep == name}
            fields = []
            for path in paths:
                raw, noise = fcounts.get((name, path), (0, 0))
                n, kinds = sfields.get((name, path), (0, set()))
                fields.append(FieldView(path, sorted(kinds), max(raw, 0), max(noise, 0), n))
            fields.sort(key=lambda f: (-max(f.raw - f.noise, f.stored), f.path))
            out.append(
                EndpointView(
                    name, compared, max(diverged, 0), noisy, stored.get(name, 0), fields
                )
            )
        out.sort(key=lambda e: (-e.rate, -e.diverged, -e.compared, e.endpoint))
        return out

    def samples(self, endpoint: str, *, limit: int = 50, path: str | None = None) -> list[dict[str, Any]]:
        """The newest stored divergences of ``endpoint`` (optionally touching ``path``)."""
        sql = "SELECT id, ts_ns, endpoint, result_id, method, target, kinds, diffs FROM divergences WHERE endpoint = ?"
        params: list[Any] = [endpoint]
        if path:
            sql += " AND id IN (SELECT divergence_id FROM diff_fields WHERE endpoint = ? AND path = ?)"
            params += [endpoint, path]
        sql += " ORDER BY id DESC LIMIT ?"
        return [_sample(r) for r in self._query(sql, [*params, limit])]

    def recent(self, *, after_id: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """Stored divergences with id > ``after_id``, newest first."""
        rows = self._query(
            "SELECT id, ts_ns, endpoint, result_id, method, target, kinds, diffs FROM divergences"
            " WHERE id > ? ORDER BY id DESC LIMIT ?",
            [after_id, limit],
        )
        return [_sample(r) for r in rows]

    def divergence(self, div_id: int) -> dict[str, Any] | None:
        """One stored divergence with its diffs and the (capped) result as on the wire."""
        rows = self._query("SELECT * FROM divergences WHERE id = ?", [div_id])
        if not rows:
            return None
        r = rows[0]
        out = _sample(r)
        out["reference"] = r["reference"]
        out["noise"] = orjson.loads(r["noise"])
        out["result"] = orjson.loads(r["result"])
        return out

    def totals(self) -> dict[str, int]:
        rows = self._query("SELECT SUM(compared) c, SUM(diverged) d FROM counts")
        stored = self._query("SELECT COUNT(*) n, MIN(ts_ns) first, MAX(ts_ns) last FROM divergences")
        c = rows[0]["c"] if rows and rows[0]["c"] is not None else 0
        d = rows[0]["d"] if rows and rows[0]["d"] is not None else 0
        s = stored[0] if stored else None
        return {
            "compared": int(c),
            "diverged": max(int(d), 0),
            "stored": int(s["n"]) if s else 0,
            "first_ns": int(s["first"] or 0) if s else 0,
            "last_ns": int(s["last"] or 0) if s else 0,
        }


def _sample(r: sqlite3.Row) -> dict[str, Any]:
    diffs = orjson.loads(r["diffs"])
    return {
        "id": r["id"],
        "ts_ns": r["ts_ns"],
        "endpoint": r["endpoint"],
        "result_id": r["result_id"],
        "method": r["method"],
        "target": r["target"],
        "kinds": [k for k in r["kinds"].split(",") if k],
        "diffs": diffs,
    }


def comparer_counts(comparer: Comparer) -> CountsSource:
    """A :data:`CountsSource` over a running Comparer's in-memory totals.

    Field counts only move when a result diverged or had noise cancelled, so the field
    stats of an endpoint are read again only when its ``diverged`` or ``noisy`` moved.
    """
    seen: dict[str, tuple[int, int]] = {}

    def snapshot() -> CountsSnapshot:
        endpoints: dict[str, tuple[int, int, int]] = {}
        fields: list[FieldCount] = []
        for s in comparer.summary():
            endpoints[s.endpoint] = (s.compared, s.diverged, s.noisy)
            if seen.get(s.endpoint) != (s.diverged, s.noisy):
                seen[s.endpoint] = (s.diverged, s.noisy)
                fields.extend(FieldCount(s.endpoint, f.path, f.raw, f.noise) for f in comparer.field_stats(s.endpoint))
        return CountsSnapshot(endpoints, fields)

    return snapshot
