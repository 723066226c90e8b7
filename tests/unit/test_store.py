"""The divergence store, its reader, re-diffing, reports and the `diffs`/`report` commands."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from comparer.rediff import make_differ, rediff
from comparer.report import render_html, render_markdown, render_terminal
from comparer.store import CountsSnapshot, DivergenceStore, FieldCount, StoreReader, resolve_store_path
from comparer.web import parse_since
from shadowreplay.cli import main
from shadowreplay.config import ComparerConfig, StoreConfig
from shadowreplay.errors import ShadowError
from shadowreplay.record import Origin, ReplayResult, RequestRecord, Response

JSON = (("content-type", "application/json"),)
T0 = 1_800_000_000_000_000_000


def resp(value: Any, *, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status=status, headers=JSON + headers, body=orjson.dumps(value), latency=0.01)


def result(i: int, endpoint: str, candidate: Response, baseline: Response | None) -> ReplayResult:
    method, path = endpoint.split(" ", 1)
    req = RequestRecord(id=f"r{i}", ts=T0 + i, method=method, target=path.replace("{id}", str(i)))
    responses = {"candidate": candidate}
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


def product(i: int, price: float) -> dict[str, Any]:
    return {"id": i, "name": f"p{i}", "price": price}


def test_divergences_and_counts_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "diffs.db"
    first = store_at(path)
    first.set_counts_source(lambda: CountsSnapshot({"GET /p/{id}": (10, 2, 1)}, [FieldCount("GET /p/{id}", "$.price", 2, 1)]))
    got: list[list[dict[str, Any]]] = []
    first.subscribe(got.append)
    assert add(first, result(1, "GET /p/{id}", resp(product(1, 2.0)), resp(product(1, 1.0))))
    assert add(first, result(2, "GET /p/{id}", resp(product(2, 3.0)), resp(product(2, 1.0))))
    assert not add(first, result(3, "GET /p/{id}", resp(product(3, 1.0)), resp(product(3, 1.0))))
    first.flush()
    assert [[e["paths"] for e in batch] for batch in got] == [[["$.price"], ["$.price"]]]
    first.close()

    # A second comparer session (a restart) adds its own totals; the first session's stay.
    second = store_at(path)
    second.set_counts_source(lambda: CountsSnapshot({"GET /p/{id}": (5, 1, 0), "GET /ok": (4, 0, 0)}))
    assert add(second, result(4, "GET /p/{id}", resp(product(4, 9.0), status=500), resp(product(4, 1.0))))
    second.flush()
    second.flush()  # snapshots are absolute: flushing twice does not double-count
    second.close()

    reader = StoreReader(str(path))
    views = reader.endpoints()
    assert [v.endpoint for v in views] == ["GET /p/{id}", "GET /ok"]
    p = views[0]
    assert (p.compared, p.diverged, p.stored, p.noise) == (15, 3, 3, 1)
    fields = {f.path: f for f in p.fields}
    assert (fields["$.price"].raw, fields["$.price"].noise, fields["$.price"].stored) == (2, 1, 3)
    assert fields["$.price"].kinds == ["value"] and fields["status"].kinds == ["status"]
    assert reader.totals()["compared"] == 19 and reader.totals()["diverged"] == 3

    samples = reader.samples("GET /p/{id}")
    assert [s["result_id"] for s in samples] == ["r4", "r2", "r1"]
    assert [s["result_id"] for s in reader.samples("GET /p/{id}", path="status")] == ["r4"]
    detail = reader.divergence(samples[-1]["id"])
    assert detail is not None and detail["reference"] == "baseline"
    assert detail["diffs"] == [{"path": "$.price", "kind": "value", "left": 1.0, "right": 2.0}]
    back = ReplayResult.from_wire(detail["result"])
    assert orjson.loads(back.responses["candidate"].body)["price"] == 2.0
    assert reader.divergence(999) is None


def test_bodies_are_capped_and_marked_truncated(tmp_path: Path) -> None:
    store = store_at(tmp_path / "d.db", max_body_bytes=16)
    big = {"text": "x" * 100}
    add(store, result(1, "GET /big", resp(big), resp({"text": "y"})))
    store.close()
    detail = StoreReader(str(tmp_path / "d.db")).divergence(1)
    assert detail is not None
    cand = ReplayResult.from_wire(detail["result"]).responses["candidate"]
    assert cand.truncated and len(cand.body) == 16


def test_retention_by_count_and_by_age(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "d.db"
    store = store_at(path, clock, max_count=3, max_age_seconds=100.0, prune_interval_seconds=1000.0)
    for i in range(5):
        add(store, result(i, "GET /x", resp({"v": i}), resp({"v": -1})))
        clock.now += 10**9
    store.flush()  # first flush prunes (never pruned before): keeps the newest 3
    reader = StoreReader(str(path))
    assert [s["result_id"] for s in reader.samples("GET /x")] == ["r4", "r3", "r2"]
    clock.now += 50 * 10**9
    add(store, result(5, "GET /x", resp({"v": 5}), resp({"v": -1})))
    store.flush()  # not due yet: prune runs at most once per interval
    assert len(reader.samples("GET /x")) == 4
    clock.now += 1100 * 10**9
    add(store, result(6, "GET /x", resp({"v": 6}), resp({"v": -1})))
    store.flush()  # due: everything older than 100 s goes
    assert [s["result_id"] for s in reader.samples("GET /x")] == ["r6"]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(DISTINCT divergence_id) FROM diff_fields").fetchone()[0] == 1
    conn.close()
    store.close()


def test_since_filters_stored_samples(tmp_path: Path) -> None:
    clock = Clock()
    store = store_at(tmp_path / "d.db", clock)
    add(store, result(1, "GET /x", resp({"a": 1}), resp({"a": 2})))
    clock.now += 3600 * 10**9
    add(store, result(2, "GET /y", resp({"b": 1}), resp({"b": 2})))
    store.close()
    reader = StoreReader(str(tmp_path / "d.db"))
    views = {v.endpoint: v for v in reader.endpoints(since_ns=T0 + 60 * 10**9)}
    assert "GET /x" not in views and views["GET /y"].stored == 1
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
    with_headers = make_differ(ComparerConfig(compare_headers=True, ignore_headers=()))
    store = store_at(path)
    store.set_counts_source(lambda: CountsSnapshot({"GET /h": (10, 3, 0)}, [FieldCount("GET /h", "header:x-build", 3, 0)]))
    for i in range(2):  # only a volatile header differs
        r = result(i, "GET /h", resp({"a": 1}, headers=(("X-Build", "2"),)), resp({"a": 1}, headers=(("X-Build", "1"),)))
        assert add(store, r, with_headers)
    # the header and a real field differ
    r = result(2, "GET /h", resp({"a": 2}, headers=(("X-Build", "2"),)), resp({"a": 1}, headers=(("X-Build", "1"),)))
    assert add(store, r, with_headers)
    store.close()

    outcome = rediff(str(path), make_differ(ComparerConfig(compare_headers=True, ignore_headers=("x-build",))))
    assert (outcome.examined, outcome.removed, outcome.changed, outcome.unchanged) == (3, 2, 1, 0)
    assert outcome.before["GET /h"] == 3 and outcome.after["GET /h"] == 1
    text = outcome.format()
    assert "2 no longer diverge" in text and "header:x-build" in text

    reader = StoreReader(str(path))
    (view,) = reader.endpoints()
    assert (view.compared, view.diverged, view.stored) == (10, 1, 1)
    fields = {f.path: f for f in view.fields}
    assert fields["$.a"].stored == 1 and fields["header:x-build"].raw == 0
    (sample,) = reader.samples("GET /h")
    assert [d["path"] for d in sample["diffs"]] == ["$.a"]
    again = rediff(str(path), make_differ(ComparerConfig(compare_headers=True, ignore_headers=("x-build",))))
    assert (again.examined, again.unchanged) == (1, 1)


def hostile_store(path: Path) -> StoreReader:
    store = store_at(path)
    store.set_counts_source(lambda: CountsSnapshot({"GET /<b>x</b>": (4, 1, 0)}))
    body = {"html": "<script>alert(1)</script>", "<img src=x onerror=alert(2)>": 1}
    add(store, result(1, "GET /<b>x</b>", resp(body), resp({"html": "ok"})))
    store.close()
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


def test_cli_diffs_json_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.db"
    hostile_store(path)
    assert main(["diffs", "--store", str(path), "--json"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data == [
        {
            "endpoint": "GET /<b>x</b>",
            "compared": 4,
            "diverged": 1,
            "rate": 0.25,
            "noise": 0,
            "stored": 1,
            "fields": [
                {"path": "$.html", "kinds": ["value"], "raw": 0, "noise": 0, "stored": 1},
                {"path": "$['<img src=x onerror=alert(2)>']", "kinds": ["extra"], "raw": 0, "noise": 0, "stored": 1},
            ],
        }
    ]
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


def test_endpoint_pages_count_every_endpoint_even_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store = store_at(path)
    store.set_counts_source(lambda: CountsSnapshot({f"GET /e{i}": (10, i, 0) for i in range(7)}))
    for i in range(3):
        add(store, result(i, "GET /stored-only", resp({"v": i}), resp({"v": -1})))
    store.close()
    reader = StoreReader(str(path))
    first = reader.endpoints_page(limit=3, fields_limit=0)
    assert first.total == 8 and [v.endpoint for v in first.items] == ["GET /e6", "GET /e5", "GET /e4"]
    rest = reader.endpoints_page(limit=10, offset=3, fields_limit=0)
    assert [v.endpoint for v in rest.items] == ["GET /e3", "GET /e2", "GET /e1", "GET /e0", "GET /stored-only"]
    assert reader.endpoints_page(limit=3, offset=50).total == 8
    assert [v.endpoint for v in reader.endpoints_page(limit=3).items] == [v.endpoint for v in reader.endpoints()[:3]]


def test_the_field_index_pools_paths_past_the_bound_and_the_divergence_keeps_them(tmp_path: Path) -> None:
    from comparer.diff import FieldDiff, Verdict
    from comparer.noise import MAX_FIELDS_PER_ENDPOINT, OTHER_FIELDS

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
    (view,) = reader.endpoints()
    assert view.fields[0].path == "status" and view.fields[0].stored == 10
    assert {f.path for f in view.fields if f.stored == 8} == {OTHER_FIELDS}  # divergences 2..9 went past the bound
    assert len(reader.samples("GET /wide", path=OTHER_FIELDS)) == 8
    newest = reader.divergence(reader.samples("GET /wide", limit=1)[0]["id"])
    assert newest is not None and len(newest["diffs"]) == 101  # the divergence keeps every path
