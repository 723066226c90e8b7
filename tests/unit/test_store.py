"""The divergence store, its reader, re-diffing, reports and the `diffs`/`report` commands."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest


from comparer_session import ComparerSession
from shadowreplay.comparer.rediff import make_differ, rediff
from shadowreplay.comparer.report import render_html, render_markdown, render_terminal
from shadowreplay.comparer.store import DivergenceStore, StoreReader, resolve_store_path
from shadowreplay.comparer.web import parse_since
from shadowreplay.cli import main
from shadowreplay.contract.config import ComparerConfig, StoreConfig
from shadowreplay.contract.errors import ShadowError
from shadowreplay.contract.record import Origin, ReplayResult, RequestRecord, Response

JSON = (("content-type", "application/json"),)
T0 = 1_800_000_000_000_000_000


def resp(value: Any, *, status: int = 200, headers: tuple[tuple[str, str], ...] = (), latency: float = 0.01) -> Response:
    return Response(status=status, headers=JSON + headers, body=orjson.dumps(value), latency=latency)


def result(i: int, endpoint: str, candidate: Response, baseline: Response | None, **extra: Response) -> ReplayResult:
    method, path = endpoint.split(" ", 1)
    req = RequestRecord(id=f"r{i}", ts=T0 + i, method=method, target=path.replace("{id}", str(i)))
    responses = {"candidate": candidate, **extra}
    if baseline is not None:
        responses["baseline"] = baseline
    return ReplayResult(
        id=f"r{i}", request=req, endpoint=endpoint, scheduled=req.ts, sent=req.ts, responses=responses,
        origin=Origin(status=200, bytes=10),
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


DIFFER = make_differ(ComparerConfig())


def store_at(path: Path, clock: Clock | None = None, **cfg: Any) -> DivergenceStore:
    return DivergenceStore(str(path), dataclasses.replace(StoreConfig(), **cfg), clock=clock or Clock())


def add(store: DivergenceStore, r: ReplayResult, differ: Any = DIFFER) -> bool:
    verdict = differ(r)
    store.add(r, verdict)
    return bool(verdict.diverged)


class Session(ComparerSession):
    def __init__(self, path: Path, config: ComparerConfig | None = None, clock: Clock | None = None, **store: Any):
        super().__init__(path, config, clock or Clock(), **store)


def product(i: int, price: float) -> dict[str, Any]:
    return {"id": i, "name": f"p{i}", "price": price}


def test_divergences_and_tallies_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "diffs.db"
    first = Session(path)
    got: list[list[dict[str, Any]]] = []
    first.store.subscribe(got.append)
    first.feed(
        result(1, "GET /p/{id}", resp(product(1, 2.0)), resp(product(1, 1.0))),
        result(2, "GET /p/{id}", resp(product(2, 3.0)), resp(product(2, 1.0))),
        result(3, "GET /p/{id}", resp(product(3, 1.0)), resp(product(3, 1.0))),
    )
    assert [[e["paths"] for e in batch] for batch in got] == [[["$.price"], ["$.price"]]]
    first.close()

    # A second comparer session (a restart) adds its own tallies; the first session's stay.
    second = Session(path)
    second.feed(
        result(4, "GET /p/{id}", resp(product(4, 9.0), status=500), resp(product(4, 1.0))),
        *(result(10 + i, "GET /ok", resp({"ok": 1}), resp({"ok": 1})) for i in range(4)),
    )
    second.store.flush()  # snapshots are absolute: flushing twice does not double-count
    second.close()

    reader = StoreReader(str(path))
    views = reader.endpoints()
    assert [v.endpoint for v in views] == ["GET /p/{id}", "GET /ok"]
    p = views[0]
    assert (p.compared, p.diverged, p.stored, p.noise) == (4, 3, 3, 0)
    assert [f.path for f in p.fields] == ["status", "$.price"]  # status first
    fields = {f.path: f for f in p.fields}
    assert (fields["$.price"].raw, fields["$.price"].noise, fields["$.price"].stored, fields["$.price"].real) == (3, 0, 3, True)
    assert fields["$.price"].kinds == ["value"] and fields["status"].kinds == ["status"]
    assert reader.totals()["compared"] == 8 and reader.totals()["diverged"] == 3

    samples = reader.samples("GET /p/{id}")
    assert [s["result_id"] for s in samples] == ["r4", "r2", "r1"]
    assert [d["path"] for d in samples[0]["diffs"]] == ["status", "$.price"]
    assert [s["result_id"] for s in reader.samples("GET /p/{id}", path="status")] == ["r4"]
    detail = reader.divergence(samples[-1]["id"])
    assert detail is not None and detail["reference"] == "baseline" and detail["real"]
    assert detail["diffs"] == [{"path": "$.price", "kind": "value", "left": 1.0, "right": 2.0, "real": True}]
    back = ReplayResult.from_wire(detail["result"])
    assert orjson.loads(back.responses["candidate"].body)["price"] == 2.0
    assert reader.divergence(999) is None


def noisy(i: int, *, price_changed: bool, served_by: tuple[int, int, int]) -> ReplayResult:
    def body(price: float, node: int) -> dict[str, Any]:
        return {"id": i, "price": price, "ts": i * 7 + node, "served_by": f"n{node}"}

    b, s, c = served_by
    return result(
        i, "GET /p/{id}", resp(body(2.0 if price_changed else 1.0, c)), resp(body(1.0, b)), secondary=resp(body(1.0, s))
    )


def test_stored_results_are_rejudged_and_noise_only_ones_pruned(tmp_path: Path) -> None:
    """Early results are stored while their fields are undecided; once the noise model
    knows better, they stop counting (reads) and are deleted (prune)."""
    path = tmp_path / "d.db"
    clock = Clock()
    session = Session(path, clock=clock, prune_interval_seconds=1.0)
    for i in range(300):
        node = i % 7
        session.feed(noisy(i, price_changed=i % 10 == 0, served_by=(node, node if i % 50 == 3 else node + 1, node + 2)))
    reader = StoreReader(str(path))
    (view,) = reader.endpoints()
    assert (view.compared, view.diverged, view.paired) == (300, 30, 300)
    states = {f.path: f.state for f in view.fields}
    assert states == {"$.price": "real", "$.served_by": "noise", "$.ts": "noise"}
    assert view.stored == 30 and view.noise == 270
    assert len(reader.samples("GET /p/{id}", limit=500)) == 30
    conn = sqlite3.connect(path)
    before = conn.execute("SELECT COUNT(*) FROM divergences").fetchone()[0]
    assert before > 30  # the first noisy results were kept while undecided
    clock.now += 2 * 10**9
    session.store.flush()  # prune is due
    assert conn.execute("SELECT COUNT(*) FROM divergences").fetchone()[0] == 30
    conn.close()
    session.close()


def test_bodies_are_capped_and_marked_truncated(tmp_path: Path) -> None:
    store = store_at(tmp_path / "d.db", max_body_bytes=16)
    big = {"text": "x" * 100}
    add(store, result(1, "GET /big", resp(big), resp({"text": "y"})))
    store.close()
    detail = StoreReader(str(tmp_path / "d.db")).divergence(1)
    assert detail is not None
    cand = ReplayResult.from_wire(detail["result"]).responses["candidate"]
    assert cand.truncated and len(cand.body) == 16


def test_a_capped_body_keeps_the_rest_of_its_response(tmp_path: Path) -> None:
    store = store_at(tmp_path / "d.db", max_body_bytes=16)
    streamed = dataclasses.replace(
        resp({"text": "x" * 100}), ttfb=0.002, timeline=((0.002, 60), (0.5, 111)), stream=True,
        stream_window_reached=True,
    )
    add(store, result(1, "GET /big", streamed, resp({"text": "y"})))
    store.close()
    detail = StoreReader(str(tmp_path / "d.db")).divergence(1)
    assert detail is not None
    cand = ReplayResult.from_wire(detail["result"]).responses["candidate"]
    assert cand == dataclasses.replace(streamed, body=streamed.body[:16], truncated=True)


def test_retention_by_count_and_by_age(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "d.db"
    session = Session(path, clock=clock, max_count=3, max_age_seconds=100.0, prune_interval_seconds=1000.0)
    store = session.store
    for i in range(5):
        session.comparer.handle_result(result(i, "GET /x", resp({"v": i}), resp({"v": -1})))
        clock.now += 10**9
    store.flush()  # first flush prunes (never pruned before): keeps the newest 3
    reader = StoreReader(str(path))
    assert [s["result_id"] for s in reader.samples("GET /x")] == ["r4", "r3", "r2"]
    clock.now += 50 * 10**9
    session.comparer.handle_result(result(5, "GET /x", resp({"v": 5}), resp({"v": -1})))
    store.flush()  # not due yet: prune runs at most once per interval
    assert len(reader.samples("GET /x")) == 4
    clock.now += 1100 * 10**9
    session.comparer.handle_result(result(6, "GET /x", resp({"v": 6}), resp({"v": -1})))
    store.flush()  # due: everything older than 100 s goes
    assert [s["result_id"] for s in reader.samples("GET /x")] == ["r6"]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(DISTINCT divergence_id) FROM diff_fields").fetchone()[0] == 1
    conn.close()
    store.close()


def test_since_filters_stored_samples(tmp_path: Path) -> None:
    clock = Clock()
    session = Session(tmp_path / "d.db", clock=clock)
    session.feed(result(1, "GET /x", resp({"a": 1}), resp({"a": 2})))
    clock.now += 3600 * 10**9
    session.feed(result(2, "GET /y", resp({"b": 1}), resp({"b": 2})))
    session.close()
    reader = StoreReader(str(tmp_path / "d.db"))
    views = {v.endpoint: v for v in reader.endpoints(since_ns=T0 + 60 * 10**9)}
    assert views["GET /x"].stored == 0
    assert views["GET /y"].stored == 1
    assert [v.endpoint for v in reader.endpoints(endpoint="GET /y")] == ["GET /y"]


def test_missing_store_reads_empty(tmp_path: Path) -> None:
    reader = StoreReader(str(tmp_path / "absent.db"))
    assert reader.endpoints() == [] and reader.samples("GET /") == [] and reader.divergence(1) is None
    assert reader.totals()["compared"] == 0
    assert not (tmp_path / "absent.db").exists()


def test_store_path_defaults_beside_a_sqlite_bus() -> None:
    assert resolve_store_path(StoreConfig(), "sqlite:////var/lib/sr/bus.db?x=1") == "/var/lib/sr/bus.diffs.db"
    assert resolve_store_path(StoreConfig(), "kafka://h:9092") == "shadowreplay-diffs.db"
    assert resolve_store_path(StoreConfig(path="/x.db"), "sqlite:///b.db") == "/x.db"


def test_parse_since() -> None:
    now = T0
    assert parse_since("30m", now) == now - 1800 * 10**9
    assert parse_since("2h", now) == now - 7200 * 10**9
    assert parse_since("1700000000", now) == 1_700_000_000 * 10**9
    assert parse_since("2023-11-14T22:13:20Z", now) == 1_700_000_000 * 10**9
    assert parse_since(None, now) is None
    with pytest.raises(ShadowError, match="since"):
        parse_since("yesterday", now)


def test_rediff_after_changing_ignore_rules(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    headers = ComparerConfig(compare_headers=True, ignore_headers=())
    session = Session(path, headers)
    for i in range(2):  # only a volatile header differs
        session.feed(result(i, "GET /h", resp({"a": 1}, headers=(("X-Build", "2"),)), resp({"a": 1}, headers=(("X-Build", "1"),))))
    # the header and a real field differ
    session.feed(result(2, "GET /h", resp({"a": 2}, headers=(("X-Build", "2"),)), resp({"a": 1}, headers=(("X-Build", "1"),))))
    for i in range(3, 10):
        session.feed(result(i, "GET /h", resp({"a": 1}), resp({"a": 1})))
    session.close()
    assert StoreReader(str(path)).endpoints()[0].diverged == 3

    ignoring = ComparerConfig(compare_headers=True, ignore_headers=("x-build",))
    outcome = rediff(str(path), make_differ(ignoring), config=ignoring)
    assert (outcome.examined, outcome.removed, outcome.changed, outcome.unchanged) == (3, 2, 1, 0)
    assert outcome.before["GET /h"] == 3 and outcome.after["GET /h"] == 1
    text = outcome.format()
    assert "2 no longer diverge" in text and "header:x-build" in text

    reader = StoreReader(str(path))
    (view,) = reader.endpoints()
    assert (view.compared, view.diverged, view.stored) == (10, 1, 1)
    fields = {f.path: f for f in view.fields}
    assert fields["$.a"].stored == 1 and fields["header:x-build"].raw == 0 and not fields["header:x-build"].real
    (sample,) = reader.samples("GET /h")
    assert [d["path"] for d in sample["diffs"]] == ["$.a"]
    again = rediff(str(path), make_differ(ignoring))
    assert (again.examined, again.unchanged) == (1, 1)


def hostile_store(path: Path) -> StoreReader:
    session = Session(path)
    body = {"html": "<script>alert(1)</script>", "<img src=x onerror=alert(2)>": 1}
    session.feed(result(1, "GET /<b>x</b>", resp(body), resp({"html": "ok"})))
    session.feed(*(result(i, "GET /<b>x</b>", resp({"html": "ok"}), resp({"html": "ok"})) for i in range(2, 5)))
    session.close()
    return StoreReader(str(path))


def test_reports_escape_and_summarise(tmp_path: Path) -> None:
    reader = hostile_store(tmp_path / "d.db")
    page = render_html(reader, title="release <42>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img" not in page and "<b>x</b>" not in page and "release &lt;42&gt;" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    md = render_markdown(reader)
    assert "| `GET /<b>x</b>` | 4 | 1 | 25.0% |" in md and "$.html" in md
    text = render_terminal(reader.endpoints())
    assert "GET /<b>x</b>" in text and "25.0%" in text and "$.html" in text


LATENCY_KEYS = {
    "regression", "baseline_p50_ms", "candidate_p50_ms", "baseline_p95_ms", "candidate_p95_ms",
    "baseline_samples", "candidate_samples", "quantile", "slower_ms",
}


def test_cli_diffs_json_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.db"
    hostile_store(path)
    assert main(["diffs", "--store", str(path), "--json"]) == 0
    (data,) = orjson.loads(capsys.readouterr().out)
    assert set(data["latency"]) == LATENCY_KEYS and data["latency"]["regression"] is False
    assert data["latency"]["baseline_p50_ms"] == pytest.approx(10.0, rel=0.02)
    del data["latency"]
    assert data == {
        "endpoint": "GET /<b>x</b>",
        "compared": 4,
        "diverged": 1,
        "rate": 0.25,
        "noise": 0,
        "paired": 0,
        "stored": 1,
        "not_compared": {},
        "fields": [
            {"path": "$.html", "real": True, "verdict": "real", "kinds": ["value"], "raw": 1, "noise": 0,
             "twin": 0, "diverged": 1, "stored": 1},
            {"path": "$['<img src=x onerror=alert(2)>']", "real": True, "verdict": "real", "kinds": ["extra"],
             "raw": 1, "noise": 0, "twin": 0, "diverged": 1, "stored": 1},
        ],
    }
    assert main(["diffs", "--store", str(path), "--endpoint", "GET /nope"]) == 0
    assert "nothing compared" in capsys.readouterr().out
    out = tmp_path / "r.md"
    assert main(["report", "--store", str(path), "--output", str(out)]) == 0
    assert out.read_text().startswith("# shadowreplay report")
    assert main(["report", "--store", str(path), "--format", "html"]) == 0
    assert capsys.readouterr().out.startswith("<!doctype html>")
    assert main(["diffs", "--store", str(tmp_path / "absent.db")]) == 2
    assert "no divergence store" in capsys.readouterr().err
    assert main(["compare", "--rediff", "--store", str(path)]) == 0
    assert "re-diffed 1 stored divergences" in capsys.readouterr().out


def test_gate_exit_codes_and_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.db"
    Session(empty).close()
    assert main(["gate", "--store", str(empty)]) == 2
    assert "NO VERDICT" in capsys.readouterr().out
    assert main(["gate", "--store", str(tmp_path / "absent.db")]) == 2

    path = tmp_path / "d.db"
    session = Session(path)
    for i in range(400):  # /slow: 60 ms slower; /p: the price changed on one in ten, and a 500 on one in 40
        session.feed(result(i, "GET /slow", resp({"a": 1}, latency=0.070), resp({"a": 1}, latency=0.010)))
        cand = resp(product(i, 2.0 if i % 10 == 0 else 1.0), status=500 if i % 40 == 1 else 200)
        session.feed(result(1000 + i, "GET /p/{id}", cand, resp(product(i, 1.0))))
    session.close()
    assert main(["gate", "--store", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  GET /p/{id}: real divergence rate 12.50% (50 of 400) > 0.00%; fields: status (10), $.price (40)" in out
    assert "FAIL  GET /slow: latency regression" in out and "p50 10.0 → 69.7 ms" in out  # ±1 %: the sketch's bins
    assert out.rstrip().endswith("gate: FAILED on 2 of 2 endpoints")
    assert main(["gate", "--store", str(path), "--max-divergence-rate", "0.2", "--allow-latency-regression"]) == 0
    assert "gate: passed (800 compared on 2 endpoints)" in capsys.readouterr().out

    down = tmp_path / "down.db"
    session = Session(down)
    session.feed(*(result(i, "GET /a", resp({"a": 1}), resp({"a": 1})) for i in range(50)))
    session.feed(*(result(100 + i, "GET /a", Response(error="connect"), resp({"a": 1})) for i in range(50)))
    session.close()
    assert main(["gate", "--store", str(down)]) == 2
    out = capsys.readouterr().out
    assert "50 of 100 results (50.00%) not compared" in out and "not compared: candidate connect 50" in out


def test_endpoint_pages_count_every_endpoint_even_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    session = Session(path)
    for e in range(7):  # GET /e{e}: 40 compared, 4 * e of them with a changed price
        session.feed(
            *(
                result(100 * e + i, f"GET /e{e}", resp(product(i, 2.0 if i < 4 * e else 1.0)), resp(product(i, 1.0)))
                for i in range(40)
            )
        )
    session.close()
    reader = StoreReader(str(path))
    first = reader.endpoints_page(limit=3, fields_limit=0)
    assert first.total == 7 and [v.endpoint for v in first.items] == ["GET /e6", "GET /e5", "GET /e4"]
    assert all(v.fields == [] and v.fields_total == -1 for v in first.items)
    rest = reader.endpoints_page(limit=10, offset=3, fields_limit=1)
    assert [v.endpoint for v in rest.items] == ["GET /e3", "GET /e2", "GET /e1", "GET /e0"]
    assert [(len(v.fields), v.fields_total) for v in rest.items] == [(1, 1), (1, 1), (1, 1), (0, 0)]
    assert reader.endpoints_page(limit=3, offset=50).total == 7
    assert [v.endpoint for v in reader.endpoints_page(limit=3).items] == [v.endpoint for v in reader.endpoints()[:3]]


def test_the_field_index_pools_paths_past_the_bound_and_the_divergence_keeps_them(tmp_path: Path) -> None:
    from shadowreplay.comparer.diff import FieldDiff, Verdict
    from shadowreplay.comparer.verdict import MAX_FIELDS_PER_ENDPOINT

    path = tmp_path / "d.db"

    def wide(store: DivergenceStore, i: int) -> None:
        r = result(i, "GET /wide", resp({"v": 1}), resp({"v": 2}))
        diffs = tuple(FieldDiff(f"$.items[{i * 100 + k}]", "value", 1, 2) for k in range(100))
        store.add(r, Verdict("GET /wide", "baseline", (FieldDiff("status", "status", 200, 500), *diffs)))

    store = store_at(path)
    for i in range(5):
        wide(store, i)
    store.close()
    again = store_at(path)  # a restart reads the paths it already has
    for i in range(5, 10):
        wide(again, i)
    again.close()
    conn = sqlite3.connect(path)
    distinct = conn.execute("SELECT COUNT(DISTINCT path) FROM diff_fields WHERE endpoint = 'GET /wide'").fetchone()[0]
    rows = conn.execute("SELECT COUNT(*) FROM diff_fields WHERE endpoint = 'GET /wide'").fetchone()[0]
    conn.close()
    assert distinct == MAX_FIELDS_PER_ENDPOINT + 1 and rows < 2 * MAX_FIELDS_PER_ENDPOINT + 10
    reader = StoreReader(str(path))
    newest = reader.divergence(10)
    assert newest is not None and len(newest["diffs"]) == 101  # the divergence keeps every path
