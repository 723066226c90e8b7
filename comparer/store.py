"""The divergence store: diverging results and per-endpoint tallies in one SQLite file.

The comparer calls :meth:`DivergenceStore.add` for every result that differs on a field
judged real or not yet decided, and :meth:`DivergenceStore.flush` once per batch (before
it commits the batch), so what is on disk never lags what was committed on the bus. Each
stored divergence keeps the request, every target's response (bodies capped at
``max_body_bytes``), the field diffs (status first), the fields they fall in, the
endpoint and the time it was stored.

Beside them the store keeps every comparer *session*'s (one per process run)
per-endpoint tallies (:class:`shadowreplay.comparer.verdict.EndpointTally`): compared, paired and
differing counts, per-field raw/twin/cancelled counts and kinds, the signatures of
differing requests, candidate and baseline latency sketch bins, and results not compared
by target and reason — as absolute snapshots, so totals (the sum over sessions) survive
restarts and add up across several comparer processes. It also keeps the verdict
thresholds the comparer ran with (``meta``), so every reader judges alike.

The field index (``diff_fields``: which divergence touched which field) keeps at most
``MAX_FIELDS_PER_ENDPOINT`` distinct paths per endpoint and pools the rest under
``(other fields)``, as the comparer's in-memory field stats do, so reads that rank an
endpoint's fields stay bounded whatever its arrays do; each divergence keeps every path.

Retention: divergences older than ``max_age_seconds`` and all but the newest
``max_count`` are pruned every ``prune_interval_seconds``, by id range (index-only);
so are stored divergences whose every field is judged noise by then.

:class:`StoreReader` is the read side used by the web page, ``shadowreplay diffs``,
``report`` and ``gate``; it opens its own connections, read-only, treats a missing file
as an empty store, and judges the merged tallies with :func:`shadowreplay.comparer.verdict.judge` at
each read — stored divergences are re-judged as the verdict of their fields changes.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from shadowreplay.comparer.diff import FieldDiff, Verdict
from shadowreplay.comparer.latency import LatencyVerdict, LogSketch
from shadowreplay.comparer.noise import NOISE
from shadowreplay.comparer.paths import field_key
from shadowreplay.comparer.streams import STREAM_KINDS, describe_stored
from shadowreplay.comparer.verdict import (
    MAX_FIELDS_PER_ENDPOINT,
    OTHER_FIELDS,
    EndpointJudgement,
    EndpointTally,
    FieldTally,
    VerdictRules,
    judge,
    status_first,
)
from shadowreplay.contract.config import StoreConfig
from shadowreplay.contract.errors import ShadowError
from shadowreplay.contract.record import ReplayResult, encode_result, readable

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: add() flushes on its own past this many pending divergences (bounded memory).
MAX_PENDING = 5000
#: Endpoints whose indexed field paths are kept in memory (then re-read from the file).
MAX_INDEXED_ENDPOINTS = 4096

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
CREATE INDEX IF NOT EXISTS diff_fields_endpoint_div ON diff_fields (endpoint, divergence_id);
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
CREATE TABLE IF NOT EXISTS signatures (
    session TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    sig TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (session, endpoint, sig)
);
CREATE TABLE IF NOT EXISTS latency_bins (
    session TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    target TEXT NOT NULL,
    bin INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (session, endpoint, target, bin)
);
CREATE TABLE IF NOT EXISTS not_compared (
    session TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (session, endpoint, target, reason)
);
CREATE INDEX IF NOT EXISTS field_counts_endpoint ON field_counts (endpoint, path);
"""
# Columns added by schema 2 to tables of schema 1 (table, column, definition).
_ADDED_COLUMNS = (
    ("divergences", "keys", "TEXT NOT NULL DEFAULT ''"),
    ("counts", "paired", "INTEGER NOT NULL DEFAULT 0"),
    ("counts", "differing", "INTEGER NOT NULL DEFAULT 0"),
    ("counts", "tallied", "INTEGER NOT NULL DEFAULT 0"),  # 1: diverged comes from signatures
    ("field_counts", "cancelled", "INTEGER NOT NULL DEFAULT 0"),
    ("field_counts", "kinds", "TEXT NOT NULL DEFAULT ''"),
)
#: A signature row holding the pooled overflow signature (see shadowreplay.comparer.verdict.MAX_SIGNATURES).
OVERFLOW_PREFIX = "*"


def resolve_store_path(config: StoreConfig, bus_url: str) -> str:
    """The store file: ``config.path``, else beside a sqlite:// bus file, else in the cwd."""
    if config.path:
        return config.path
    base = bus_url.split("?", 1)[0]
    if base.startswith("sqlite:///"):
        bus_path = Path(base[len("sqlite:///"):])
        return str(bus_path.with_name(bus_path.stem + ".diffs.db"))
    return "shadowreplay-diffs.db"


TalliesSource = Callable[[], Mapping[str, EndpointTally]]
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
            if row is not None and int(row["value"]) > SCHEMA_VERSION:
                raise ShadowError(f"divergence store {path}: schema {row['value']} is newer than this build")
            for table, column, definition in _ADDED_COLUMNS:
                have = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
    except sqlite3.Error as exc:
        conn.close()
        raise ShadowError(f"divergence store {path}: {exc}") from exc
    return conn


def cap_result(result: ReplayResult, max_body_bytes: int) -> ReplayResult:
    """``result`` with every response body cut to ``max_body_bytes`` (marked truncated)."""
    capped = {
        name: replace(response, body=response.body[:max_body_bytes], truncated=True)
        if len(response.body) > max_body_bytes else response
        for name, response in result.responses.items()
    }
    return replace(result, responses=capped)


def diffs_to_json(diffs: Iterable[FieldDiff]) -> list[dict[str, Any]]:
    return [{"path": d.path, "kind": d.kind, "left": d.left, "right": d.right} for d in diffs]


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


def diff_keys(diffs: Iterable[FieldDiff]) -> list[str]:
    """The fields (``shadowreplay.comparer.paths.field_key``) of ``diffs``, sorted, once each."""
    return sorted({field_key(d.path) for d in diffs})


def signature_text(signature: Iterable[tuple[str, str]]) -> str:
    return orjson.dumps(sorted(signature)).decode()


def write_rules(conn: sqlite3.Connection, rules: VerdictRules) -> None:
    """Record the verdict thresholds in ``meta`` (every reader judges with them)."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('verdict_rules', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (orjson.dumps(rules.to_json()).decode(),),
    )


class DivergenceStore:
    """The write side (one per comparer process). Not thread-safe: call from one thread.

    ``rules`` are recorded in the store for its readers; ``tallies`` (or
    :meth:`set_tallies_source`) is where :meth:`flush` reads this session's tallies."""

    def __init__(
        self,
        path: str,
        config: StoreConfig,
        *,
        rules: VerdictRules | None = None,
        tallies: TalliesSource | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = path
        self._config = config
        self._conn = open_schema(path)
        if rules is not None:
            try:
                with self._conn:
                    write_rules(self._conn, rules)
            except sqlite3.Error as exc:
                self._conn.close()
                raise ShadowError(f"divergence store {path}: {exc}") from exc
        self._tallies = tallies
        self._clock = clock
        self.session = uuid.uuid4().hex
        self._pending: list[tuple[int, ReplayResult, Verdict, bool]] = []
        self._listeners: list[Listener] = []
        self._last_prune = 0
        self._written: dict[str, tuple[int, int, int]] = {}
        self._overflow_written: dict[str, str] = {}
        self._field_paths: dict[str, set[str]] = {}
        self.stored = 0
        self.pruned = 0

    def set_tallies_source(self, tallies: TalliesSource) -> None:
        """Where :meth:`flush` reads this session's per-endpoint tallies from."""
        self._tallies = tallies

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with the summaries of newly stored divergences after each flush."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def add(self, result: ReplayResult, verdict: Verdict, *, real: bool = True) -> None:
        """Queue one differing result; durable after the next :meth:`flush`. Listeners
        hear only of those ``real`` when they arrived (the live feed shows divergences)."""
        if not verdict.diffs:
            return
        self._pending.append((self._clock(), result, verdict, real))
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Write pending divergences and this session's changed tallies in one transaction;
        prune when due."""
        pending, self._pending = self._pending, []
        now = self._clock()
        tallies = self._tallies() if self._tallies is not None else None
        added: list[dict[str, Any]] = []
        try:
            with self._conn:
                for ts, result, verdict, real in pending:
                    item = self._insert(ts, result, verdict)
                    if real:
                        added.append(item)
                if tallies is not None:
                    self._write_tallies(tallies, now)
        except sqlite3.Error as exc:
            raise ShadowError(f"divergence store {self.path}: {exc}") from exc
        self.stored += len(pending)
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
        keys = diff_keys(verdict.diffs)
        req = result.request
        cur = self._conn.execute(
            "INSERT INTO divergences (ts_ns, endpoint, result_id, method, target, reference, kinds, diffs, noise,"
            " result, keys) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ts,
                verdict.endpoint,
                result.id,
                req.method,
                readable(req.target),  # SQLite and the page take text; the exact bytes stay in "result"
                verdict.reference,
                ",".join(kinds),
                _dumps(status_first(diffs_to_json(verdict.diffs))),
                _dumps(status_first(diffs_to_json(verdict.noise))),
                encode_result(cap_result(result, self._config.max_body_bytes)),
                orjson.dumps(keys).decode(),
            ),
        )
        div_id = int(cur.lastrowid or 0)
        seen: set[tuple[str, str]] = set()
        for d in verdict.diffs:
            seen.add((self._field_path(verdict.endpoint, d.path), d.kind))
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
            "paths": sorted({d.path for d in verdict.diffs}, key=lambda p: (p not in ("status", "error"), p))[:20],
        }

    def _field_path(self, endpoint: str, path: str) -> str:
        """``path`` as the field index (diff_fields) records it: one of the endpoint's first
        ``MAX_FIELDS_PER_ENDPOINT`` distinct paths (over the whole file), else ``OTHER_FIELDS``.

        Array indexes can give an endpoint many thousands of paths; pooling the rest keeps
        the field index, and every read that ranks fields, bounded. The divergence itself
        keeps every path. The first call per endpoint reads its known paths from the file."""
        known = self._field_paths.get(endpoint)
        if known is None:
            if len(self._field_paths) >= MAX_INDEXED_ENDPOINTS:
                self._field_paths.clear()  # read again from the file when next needed
            known = self._field_paths[endpoint] = {
                r[0]
                for r in self._conn.execute(
                    "SELECT DISTINCT path FROM diff_fields WHERE endpoint = ? LIMIT ?",
                    (endpoint, MAX_FIELDS_PER_ENDPOINT + 1),
                )
            }
        if path in known:
            return path
        if len(known) < MAX_FIELDS_PER_ENDPOINT:
            known.add(path)
            return path
        return OTHER_FIELDS

    def _write_tallies(self, tallies: Mapping[str, EndpointTally], now: int) -> None:
        s = self.session
        counts, fields, sigs, bins, nc = [], [], [], [], []
        for ep, t in tallies.items():
            key = (t.compared, t.paired, t.differing)
            if self._written.get(ep) != key:
                self._written[ep] = key
                counts.append((s, ep, t.compared, now, t.paired, t.differing))
            for path in t.changed_fields:
                f = t.fields.get(path)
                if f is not None:
                    fields.append((s, ep, path, f.raw, f.twin, f.cancelled, ",".join(sorted(f.kinds))))
            for sig in t.changed_signatures:
                sigs.append((s, ep, signature_text(sig), t.signatures[sig]))
            for target, b in t.changed_bins:
                bins.append((s, ep, target, b, t.latency[target].bins[b]))
            for (target, reason) in t.changed_not_compared:
                nc.append((s, ep, target, reason, t.not_compared[(target, reason)]))
            if t.overflow_count:
                text = OVERFLOW_PREFIX + signature_text(t.overflow)
                old = self._overflow_written.get(ep)
                if old is not None and old != text:
                    self._conn.execute("DELETE FROM signatures WHERE session = ? AND endpoint = ? AND sig = ?", (s, ep, old))
                self._overflow_written[ep] = text
                sigs.append((s, ep, text, t.overflow_count))
            t.changed_fields.clear()
            t.changed_signatures.clear()
            t.changed_bins.clear()
            t.changed_not_compared.clear()
        c = self._conn
        c.executemany(
            "INSERT INTO counts (session, endpoint, compared, diverged, noisy, updated_ns, paired, differing, tallied)"
            " VALUES (?, ?, ?, 0, 0, ?, ?, ?, 1) ON CONFLICT (session, endpoint) DO UPDATE SET"
            " compared = excluded.compared, paired = excluded.paired, differing = excluded.differing,"
            " updated_ns = excluded.updated_ns, tallied = 1",
            counts,
        )
        c.executemany(
            "INSERT INTO field_counts (session, endpoint, path, raw, noise, cancelled, kinds) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (session, endpoint, path) DO UPDATE SET raw = excluded.raw, noise = excluded.noise,"
            " cancelled = excluded.cancelled, kinds = excluded.kinds",
            fields,
        )
        c.executemany(
            "INSERT INTO signatures (session, endpoint, sig, count) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (session, endpoint, sig) DO UPDATE SET count = excluded.count",
            sigs,
        )
        c.executemany(
            "INSERT INTO latency_bins (session, endpoint, target, bin, count) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (session, endpoint, target, bin) DO UPDATE SET count = excluded.count",
            bins,
        )
        c.executemany(
            "INSERT INTO not_compared (session, endpoint, target, reason, count) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (session, endpoint, target, reason) DO UPDATE SET count = excluded.count",
            nc,
        )

    def prune(self, now: int | None = None) -> int:
        """Delete divergences past the age or count limit, and those whose every field is
        judged noise by now; returns how many went."""
        now = self._clock() if now is None else now
        self._last_prune = now
        cutoff = now - int(self._config.max_age_seconds * 1e9)
        try:
            noise_only = StoreReader(self.path).noise_only_ids()
            with self._conn:
                by_age = self._conn.execute(
                    "SELECT MAX(id) FROM divergences WHERE ts_ns < ?", (cutoff,)
                ).fetchone()[0]
                by_count = self._conn.execute(
                    "SELECT id FROM divergences ORDER BY id DESC LIMIT 1 OFFSET ?", (self._config.max_count,)
                ).fetchone()
                upto = max(by_age or 0, by_count[0] if by_count else 0)
                n = 0
                if upto:
                    n = self._conn.execute("DELETE FROM divergences WHERE id <= ?", (upto,)).rowcount
                    self._conn.execute("DELETE FROM diff_fields WHERE divergence_id <= ?", (upto,))
                noise_only = [i for i in noise_only if i > upto]
                if noise_only:
                    self._conn.executemany("DELETE FROM divergences WHERE id = ?", [(i,) for i in noise_only])
                    self._conn.executemany("DELETE FROM diff_fields WHERE divergence_id = ?", [(i,) for i in noise_only])
                    n += len(noise_only)
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

#: In lists (samples, the live feed), each divergence carries at most this many diffs
#: (status first) and says how many it has (``diffs_total``); one divergence has them all.
LIST_DIFFS = 10


class QueryTimeout(ShadowError):
    """A read of the store took longer than the reader's ``timeout_seconds`` and was stopped."""


@dataclass
class FieldView:
    """One field of one endpoint: its verdict (``real``; ``state`` real, noise or
    undecided), ``raw`` requests where the candidate differed there, ``noise`` those
    judged noise, ``twin`` paired requests where the reference and its twin differed
    there, ``diverged`` requests counted as diverged on it, ``stored`` stored divergences
    touching it (only for real fields). ``latest``: for a real stream field (a kind of
    ``shadowreplay.comparer.streams.STREAM_KINDS``), the newest stored divergence's difference there
    (:func:`latest_diff`), so its delays can be named."""

    path: str
    kinds: list[str]
    raw: int
    noise: int
    stored: int
    real: bool = True
    state: str = "real"
    twin: int = 0
    diverged: int = 0
    latest: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "path": self.path,
            "real": self.real,
            "verdict": self.state,
            "kinds": self.kinds,
            "raw": self.raw,
            "noise": self.noise,
            "twin": self.twin,
            "diverged": self.diverged,
            "stored": self.stored,
        }
        if self.latest is not None:  # an added key, on stream fields only: the documented shape stays
            out["latest"] = self.latest
        return out


def latest_diff(row: sqlite3.Row, key: str) -> dict[str, Any] | None:
    """The first difference of a stored divergence (``id``, ``ts_ns``, ``method``,
    ``target``, ``diffs``) on field ``key``, with its request and, for a stream kind, its
    wording (``text``: :func:`shadowreplay.comparer.streams.describe`, delays in ms)."""
    for d in orjson.loads(row["diffs"]):
        if field_key(d["path"]) == key:
            return {
                "id": row["id"], "ts_ns": row["ts_ns"], "method": row["method"], "target": row["target"],
                "path": d["path"], "kind": d["kind"], "left": d["left"], "right": d["right"], "text": describe_stored(d),
            }
    return None


@dataclass
class EndpointView:
    """One endpoint as the page, ``diffs --json``, the report and the gate show it.

    ``fields`` may be the first of ``fields_total`` fields (a status change first).
    """

    endpoint: str
    compared: int
    diverged: int  # requests with at least one real difference
    noise: int  # requests that differed only in ways judged noise
    stored: int
    fields: list[FieldView]
    paired: int = 0
    latency: LatencyVerdict = field(default_factory=LatencyVerdict)
    not_compared: dict[str, dict[str, int]] = field(default_factory=dict)
    fields_total: int = -1  # how many fields there are; -1: not counted (fields were not asked for)

    @property
    def rate(self) -> float:
        return self.diverged / self.compared if self.compared else 0.0

    @property
    def not_compared_total(self) -> int:
        return sum(n for by_reason in self.not_compared.values() for n in by_reason.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "compared": self.compared,
            "diverged": self.diverged,
            "rate": round(self.rate, 6),
            "noise": self.noise,
            "paired": self.paired,
            "stored": self.stored,
            "not_compared": self.not_compared,
            "latency": self.latency.to_json(),
            "fields": [f.to_json() for f in self.fields],
        }


@dataclass(frozen=True)
class Page:
    """One page of a list and the length of the whole list."""

    items: list[Any]
    total: int


class StoreReader:
    """Read-only queries over a store file (a missing file reads as empty). Every read
    judges the tallies of all sessions merged, with the thresholds recorded in the store
    (``rules`` overrides them).

    Each call opens its own connection, so calls may run in threads at once. With
    ``timeout_seconds``, a call whose SQL runs longer is stopped with :class:`QueryTimeout`.
    """

    def __init__(self, path: str, rules: VerdictRules | None = None, *, timeout_seconds: float | None = None) -> None:
        self.path = path
        self._rules = rules
        self.timeout_seconds = timeout_seconds

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection | None]:
        if not Path(self.path).exists():
            yield None
            return
        conn = _connect(self.path, readonly=True)
        if self.timeout_seconds is not None:
            deadline = time.monotonic() + self.timeout_seconds
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 20_000)
        try:
            yield conn
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise QueryTimeout(
                    f"divergence store {self.path}: query stopped after {self.timeout_seconds:g} s"
                ) from exc
            raise ShadowError(f"divergence store {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise ShadowError(f"divergence store {self.path}: {exc}") from exc
        finally:
            conn.close()

    @staticmethod
    def _rows(conn: sqlite3.Connection | None, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if conn is None:
            return []
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or "no such column" in str(exc):  # a file written by nothing yet, or by schema 1
                return []
            raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._connection() as conn:
            return self._rows(conn, sql, params)

    def rules(self) -> VerdictRules:
        """The thresholds to judge with: given, else those the comparer recorded, else the defaults."""
        if self._rules is not None:
            return self._rules
        rows = self._query("SELECT value FROM meta WHERE key = 'verdict_rules'")
        return VerdictRules.from_json(orjson.loads(rows[0]["value"])) if rows else VerdictRules()

    def tallies(self, endpoint: str | None = None) -> tuple[dict[str, EndpointTally], dict[str, int]]:
        """Every endpoint's tally summed over sessions, and the ``diverged`` counts of
        sessions written before tallies were kept (schema 1)."""
        where, params = ("WHERE endpoint = ?", [endpoint]) if endpoint else ("", [])
        out: dict[str, EndpointTally] = {}
        legacy: dict[str, int] = {}

        def get(ep: str) -> EndpointTally:
            return out.setdefault(ep, EndpointTally())

        for r in self._query(
            "SELECT endpoint, SUM(compared) c, SUM(paired) p, SUM(differing) d, SUM(CASE WHEN tallied = 0"
            f" THEN diverged ELSE 0 END) legacy FROM counts {where} GROUP BY endpoint",
            params,
        ):
            t = get(r["endpoint"])
            t.compared, t.paired, t.differing = int(r["c"]), int(r["p"]), int(r["d"])
            if r["legacy"]:
                legacy[r["endpoint"]] = int(r["legacy"])
        for r in self._query(f"SELECT endpoint, path, raw, noise, cancelled, kinds FROM field_counts {where}", params):
            f = get(r["endpoint"]).fields.setdefault(r["path"], FieldTally())
            f.raw += int(r["raw"])
            f.twin += int(r["noise"])
            f.cancelled += int(r["cancelled"])
            f.kinds.update(k for k in str(r["kinds"]).split(",") if k)
        for r in self._query(f"SELECT endpoint, sig, count FROM signatures {where}", params):
            t = get(r["endpoint"])
            text, n = str(r["sig"]), int(r["count"])
            if text.startswith(OVERFLOW_PREFIX):
                t.overflow |= {(k, kind) for k, kind in orjson.loads(text[len(OVERFLOW_PREFIX):])}
                t.overflow_count += n
                continue
            sig = frozenset((k, kind) for k, kind in orjson.loads(text))
            t.signatures[sig] = t.signatures.get(sig, 0) + n
        for r in self._query(f"SELECT endpoint, target, bin, count FROM latency_bins {where}", params):
            t = get(r["endpoint"])
            t.latency.setdefault(r["target"], LogSketch()).merge([(int(r["bin"]), int(r["count"]))])
        for r in self._query(f"SELECT endpoint, target, reason, SUM(count) n FROM not_compared {where} GROUP BY endpoint, target, reason", params):
            get(r["endpoint"]).not_compared[(r["target"], r["reason"])] = int(r["n"])
        return out, legacy

    def judgements(self, endpoint: str | None = None) -> dict[str, EndpointJudgement]:
        """Every endpoint judged now (the one verdict)."""
        rules = self.rules()
        tallies, legacy = self.tallies(endpoint)
        out = {name: judge(name, t, rules) for name, t in tallies.items()}
        for name, n in legacy.items():
            j = out[name]
            out[name] = EndpointJudgement(
                j.endpoint, j.compared, j.paired, j.differing, j.diverged + n, j.kinds, j.fields, j.latency, j.not_compared
            )
        return out

    def _stored(self, since_ns: int, endpoint: str | None) -> list[tuple[int, str, list[str]]]:
        """(id, endpoint, fields) of the stored divergences since ``since_ns``."""
        rows = self._query(
            "SELECT id, endpoint, keys, diffs FROM divergences WHERE ts_ns >= ?" + (" AND endpoint = ?" if endpoint else ""),
            [since_ns, *([endpoint] if endpoint else [])],
        )
        return [(int(r["id"]), r["endpoint"], _row_keys(r)) for r in rows]

    def endpoints(self, *, endpoint: str | None = None, since_ns: int | None = None) -> list[EndpointView]:
        """Endpoints by real divergence rate (highest first), each with its fields (status
        first, then real ones).

        Counts are lifetime counts; ``stored`` counts stored divergences with a real
        field, only those at or after ``since_ns`` when given.
        """
        judged = self.judgements(endpoint)
        streams = {(name, f.path) for name, j in judged.items() for f in j.fields if any(k in STREAM_KINDS for k in f.kinds)}
        stored: dict[str, int] = {}
        sfields: dict[tuple[str, str], int] = {}
        newest: dict[tuple[str, str], int] = {}  # a stream field's newest stored divergence
        for div_id, ep, keys in self._stored(since_ns or 0, endpoint):
            j = judged.get(ep)
            real = [k for k in keys if j is not None and k in j.real_fields]
            if not real:
                continue
            stored[ep] = stored.get(ep, 0) + 1
            for k in real:
                sfields[(ep, k)] = sfields.get((ep, k), 0) + 1
                if (ep, k) in streams and div_id > newest.get((ep, k), 0):
                    newest[(ep, k)] = div_id
        latest = self._latest(newest)
        out = [
            EndpointView(
                endpoint=name,
                compared=j.compared,
                diverged=j.diverged,
                noise=j.noise,
                stored=stored.get(name, 0),
                fields=[
                    FieldView(f.path, list(f.kinds), f.raw, f.noise, sfields.get((name, f.path), 0), f.real, f.state,
                              f.twin, f.diverged, latest.get((name, f.path)))
                    for f in j.fields
                ],
                paired=j.paired,
                latency=j.latency,
                not_compared=j.not_compared,
            )
            for name, j in judged.items()
        ]
        out.sort(key=lambda e: (-e.rate, not e.latency.regression, -e.diverged, -e.compared, e.endpoint))
        return out

    def _latest(self, newest: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], dict[str, Any]]:
        """:func:`latest_diff` of each (endpoint, field) at its divergence id: one query
        for the few stream fields there are, not a parse of every stored divergence."""
        ids = sorted(set(newest.values()))
        if not ids:
            return {}
        rows = {
            int(r["id"]): r
            for r in self._query(
                f"SELECT id, ts_ns, method, target, diffs FROM divergences WHERE id IN ({','.join('?' * len(ids))})", ids
            )
        }
        out = {}
        for (ep, key), div_id in newest.items():
            row = rows.get(div_id)
            found = latest_diff(row, key) if row is not None else None  # pruned between the two reads
            if found is not None:
                out[(ep, key)] = found
        return out

    def endpoints_page(
        self,
        *,
        endpoint: str | None = None,
        since_ns: int | None = None,
        limit: int | None = None,
        offset: int = 0,
        fields_limit: int | None = None,
    ) -> Page:
        """:meth:`endpoints`, ``limit`` of them from ``offset`` on, each with its first
        ``fields_limit`` fields (a status change first); ``Page.total`` counts them all.

        Every endpoint is judged on each call (the verdict needs the merged tallies); the
        work is bounded by the comparer's ``max_endpoints`` and the field and signature
        bounds of each tally, and what is handed back follows the size of the page.
        """
        views = self.endpoints(endpoint=endpoint, since_ns=since_ns)
        page = views[offset : offset + limit] if limit is not None else views[offset:]
        for view in page:
            if fields_limit is not None:
                view.fields_total = len(view.fields)
                view.fields = view.fields[:fields_limit]
                if fields_limit == 0:
                    view.fields_total = -1
        return Page(page, len(views))

    def noise_only_ids(self) -> list[int]:
        """Stored divergences whose every field is judged noise (not real, not undecided)."""
        judged = self.judgements()
        out = []
        for div_id, ep, keys in self._stored(0, None):
            j = judged.get(ep)
            if j is None:
                continue
            states = {f.path: f.state for f in j.fields}
            if keys and all(states.get(k) == NOISE for k in keys):
                out.append(div_id)
        return out

    def _real_rows(
        self,
        sql: str,
        params: list[Any],
        limit: int,
        path: str | None = None,
        *,
        endpoint: str | None = None,
        max_diffs: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of ``sql`` (newest first, ``LIMIT ? OFFSET ?`` appended) that hold a real
        field (and ``path``, a field or an exact path, when given), at most ``limit``,
        each with at most ``max_diffs`` diffs. ``endpoint``: the rows are all of it."""
        judged = self.judgements(endpoint)
        out: list[dict[str, Any]] = []
        offset, chunk = 0, max(limit, 200)
        while len(out) < limit:
            rows = self._query(sql + " LIMIT ? OFFSET ?", [*params, chunk, offset])
            for r in rows:
                j = judged.get(r["endpoint"])
                real = j.real_fields if j is not None else frozenset()
                keys = _row_keys(r)
                if not any(k in real for k in keys):
                    continue
                sample = _sample(r, real, max_diffs)
                if path and not _touches(r, keys, path):
                    continue
                out.append(sample)
                if len(out) >= limit:
                    break
            if len(rows) < chunk:
                break
            offset += chunk
        return out

    def samples(self, endpoint: str, *, limit: int = 50, path: str | None = None) -> list[dict[str, Any]]:
        """The newest stored divergences of ``endpoint`` with a real field (optionally
        touching ``path``: a field such as ``$.items[*].price`` or an exact diff path)."""
        return self.samples_page(endpoint, limit=limit, path=path).items

    def samples_page(
        self, endpoint: str, *, limit: int = 50, path: str | None = None, before_id: int | None = None
    ) -> Page:
        """:meth:`samples` older than ``before_id`` (the next page starts before the last
        id of this one); ``Page.total`` counts every stored divergence of the endpoint with
        a real field (touching ``path``). Each sample carries its first ``LIST_DIFFS`` diffs."""
        judged = self.judgements(endpoint).get(endpoint)
        real = judged.real_fields if judged is not None else frozenset()
        total = 0
        for r in self._query("SELECT keys, diffs FROM divergences WHERE endpoint = ?", [endpoint]):
            keys = _row_keys(r)
            if any(k in real for k in keys) and (not path or _touches(r, keys, path)):
                total += 1
        where = "endpoint = ?"
        params: list[Any] = [endpoint]
        if before_id is not None:
            where += " AND id < ?"
            params.append(before_id)
        sql = (
            "SELECT id, ts_ns, endpoint, result_id, method, target, kinds, diffs, keys FROM divergences"
            f" WHERE {where} ORDER BY id DESC"
        )
        return Page(self._real_rows(sql, params, limit, path, endpoint=endpoint, max_diffs=LIST_DIFFS), total)

    def recent(self, *, after_id: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """Stored divergences with a real field and id > ``after_id``, newest first."""
        sql = (
            "SELECT id, ts_ns, endpoint, result_id, method, target, kinds, diffs, keys FROM divergences"
            " WHERE id > ? ORDER BY id DESC"
        )
        return self._real_rows(sql, [after_id], limit, max_diffs=LIST_DIFFS)

    def divergence(self, div_id: int) -> dict[str, Any] | None:
        """One stored divergence with its diffs (each with ``real``), and the (capped)
        result as on the wire; ``real`` says whether it counts as a divergence now."""
        rows = self._query("SELECT * FROM divergences WHERE id = ?", [div_id])
        if not rows:
            return None
        r = rows[0]
        j = self.judgements(r["endpoint"]).get(r["endpoint"])
        real = j.real_fields if j is not None else frozenset()
        out = _sample(r, real)
        out["real"] = any(d["real"] for d in out["diffs"])
        out["reference"] = r["reference"]
        out["noise"] = [{**d, "real": False} for d in status_first(orjson.loads(r["noise"]))]
        out["result"] = orjson.loads(r["result"])
        return out

    def totals(self) -> dict[str, int]:
        judged = self.judgements()
        stored = self._query("SELECT MIN(ts_ns) first, MAX(ts_ns) last FROM divergences")
        s = stored[0] if stored else None
        real_stored = 0
        for _, ep, keys in self._stored(0, None):
            j = judged.get(ep)
            if j is not None and any(k in j.real_fields for k in keys):
                real_stored += 1
        return {
            "compared": sum(j.compared for j in judged.values()),
            "diverged": sum(j.diverged for j in judged.values()),
            "not_compared": sum(j.not_compared_total for j in judged.values()),
            "latency_regressions": sum(1 for j in judged.values() if j.latency.regression),
            "stored": real_stored,
            "first_ns": int(s["first"] or 0) if s else 0,
            "last_ns": int(s["last"] or 0) if s else 0,
        }


def _row_keys(r: sqlite3.Row) -> list[str]:
    text = r["keys"]
    if text:
        return list(orjson.loads(text))
    return sorted({field_key(d["path"]) for d in orjson.loads(r["diffs"])})  # stored by schema 1


def _touches(r: sqlite3.Row, keys: list[str], path: str) -> bool:
    """Whether a stored divergence touches ``path``: a field (``$.items[*].price``) or an exact diff path."""
    return path in keys or any(d["path"] == path for d in orjson.loads(r["diffs"]))


def _sample(r: sqlite3.Row, real: frozenset[str], max_diffs: int | None = None) -> dict[str, Any]:
    diffs = [{**d, "real": field_key(d["path"]) in real} for d in status_first(orjson.loads(r["diffs"]))]
    return {
        "id": r["id"],
        "ts_ns": r["ts_ns"],
        "endpoint": r["endpoint"],
        "result_id": r["result_id"],
        "method": r["method"],
        "target": r["target"],
        "kinds": [k for k in r["kinds"].split(",") if k],
        "diffs": diffs if max_diffs is None else diffs[:max_diffs],
        "diffs_total": len(diffs),
        "paths": list(dict.fromkeys(d["path"] for d in diffs))[:20],
    }
