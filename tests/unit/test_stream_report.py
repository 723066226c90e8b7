"""Stream differences where people read them: ``shadowreplay diffs`` (table and JSON) and
``shadowreplay report`` name the kind and the delays in ms (``shadowreplay.comparer.streams.describe``),
a status change still first; the stored result keeps its arrival timeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from comparer_session import ComparerSession
from shadowreplay.comparer.report import render_html, render_markdown, render_terminal
from shadowreplay.comparer.store import StoreReader
from shadowreplay.cli import main
from shadowreplay.contract.record import ReplayResult, RequestRecord, Response

T0 = 1_800_000_000_000_000_000
TEXT = (("content-type", "text/plain"),)
SSE = (("content-type", "text/event-stream"),)
LINES = b"".join(b"line %02d of the deploy log\n" % i for i in range(20))
PROGRESSIVE = tuple((round(0.002 + 0.1 * i, 6), 27 * (i + 1)) for i in range(20))
HELD = ((2.015, 91),)
LATE = tuple((round(t + 0.8, 6), n) for t, n in PROGRESSIVE)
BUFFERING = (
    "buffering: first byte 2.0 → 2015.0 ms, average byte 952.0 → 2015.0 ms, last byte 1902.0 → 2015.0 ms, "
    "largest burst 10 % → 100 % of the body"
)


def lines(timeline: tuple[tuple[float, int], ...], status: int = 200, **kw: Any) -> Response:
    return Response(status=status, headers=TEXT, body=LINES, latency=timeline[-1][0], ttfb=timeline[0][0],
                    timeline=timeline, **kw)


def events(n: int) -> Response:
    body = b"".join(b"id: %d\ndata: {\"n\": %d}\n\n" % (i, i) for i in range(n))
    return Response(status=200, headers=SSE, body=body, latency=0.5, ttfb=0.001, timeline=((0.001, len(body)),),
                    stream=True)


def result(i: int, endpoint: str, target: str, baseline: Response, candidate: Response) -> ReplayResult:
    req = RequestRecord(id=f"r{i}", ts=T0 + i, method="GET", target=target)
    return ReplayResult(id=req.id, request=req, endpoint=endpoint, scheduled=req.ts, sent=req.ts,
                        responses={"baseline": baseline, "candidate": candidate})


def stream_store(path: Path) -> StoreReader:
    """Eight of each kind (enough for the noise model to call them real); on the deploy
    log, three requests answered 500 after the held ones (a status change, newest)."""
    session = ComparerSession(path)
    session.feed(*[result(k, "GET /deploys/{id}/log", f"/deploys/{k}/log", lines(PROGRESSIVE, stream=True),
                          lines(HELD)) for k in range(8)])
    session.feed(*[result(10 + k, "GET /exports/{id}", f"/exports/{k}", lines(PROGRESSIVE, stream=True),
                          lines(LATE)) for k in range(8)])
    session.feed(*[result(20 + k, "GET /events", "/events", events(30), events(10)) for k in range(8)])
    session.feed(*[result(30 + k, "GET /deploys/{id}/log", f"/deploys/{30 + k}/log\x1b[2J",
                          lines(PROGRESSIVE, stream=True), lines(HELD, status=500)) for k in range(3)])
    session.close()
    return StoreReader(str(path))


def test_diffs_names_each_stream_kind_with_its_delays_in_ms(tmp_path: Path) -> None:
    text = render_terminal(stream_store(tmp_path / "d.db").endpoints())
    lines_ = text.splitlines()
    deploy = lines_.index(next(x for x in lines_ if x.startswith("GET /deploys/{id}/log ")))
    # The status change first, then the stream field and its newest difference, one line,
    # worded in ms; the logged target's control character shown as an escape, never sent.
    assert lines_[deploy + 2 : deploy + 5] == [
        "    status  [status]  real  raw 3, diverged 3, stored 3",
        "    cadence:buffering  [buffering]  real  raw 11, diverged 11, stored 11",
        f"      #27 GET /deploys/32/log\\x1b[2J: {BUFFERING}",
    ]
    assert "\x1b" not in text
    assert "    $.events  [event_count]  real  raw 8, diverged 8, stored 8\n      #24 GET /events: event_count: 30 → 10 events" in text
    assert (
        "    cadence:first_byte  [first_byte_delay]  real  raw 8, diverged 8, stored 8\n"
        "      #16 GET /exports/7: first_byte_delay: first body byte 2.0 → 802.0 ms"
    ) in text


def test_diffs_json_adds_the_newest_stream_difference_and_keeps_every_other_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.db"
    stream_store(path)
    assert main(["diffs", "--store", str(path), "--json", "--endpoint", "GET /deploys/{id}/log"]) == 0
    (view,) = orjson.loads(capsys.readouterr().out)
    status, buffering = view["fields"]
    # A field that is no stream keeps exactly the documented keys.
    assert status == {"path": "status", "real": True, "verdict": "real", "kinds": ["status"], "raw": 3, "noise": 0,
                      "twin": 0, "diverged": 3, "stored": 3}
    latest = buffering.pop("latest")
    assert buffering == {"path": "cadence:buffering", "real": True, "verdict": "real", "kinds": ["buffering"],
                         "raw": 11, "noise": 0, "twin": 0, "diverged": 11, "stored": 11}
    assert latest["id"] == 27 and latest["method"] == "GET" and latest["target"] == "/deploys/32/log\x1b[2J"
    assert (latest["path"], latest["kind"], latest["text"]) == ("cadence:buffering", "buffering", BUFFERING)
    assert latest["left"]["first_byte_ms"] == 2.0 and latest["right"] == {
        "first_byte_ms": 2015.0, "mean_byte_ms": 2015.0, "last_byte_ms": 2015.0, "spread_ms": 0.0,
        "largest_burst": 1.0, "bytes": 91,
    }
    assert main(["diffs", "--store", str(path), "--json", "--endpoint", "GET /exports/{id}"]) == 0
    (view,) = orjson.loads(capsys.readouterr().out)
    assert view["fields"][0]["latest"]["left"] == 2.0 and view["fields"][0]["latest"]["right"] == 802.0


def test_report_words_stream_differences_after_the_status_change(tmp_path: Path) -> None:
    reader = stream_store(tmp_path / "d.db")
    md = render_markdown(reader)
    deploy = md[md.index("## `GET /deploys/{id}/log`") : md.index("## `GET /events`")]
    assert f"Streams, newest stored difference:\n\n- #27 `GET /deploys/32/log\x1b[2J`: {BUFFERING}\n" in deploy
    example = deploy[deploy.index("- #27 `GET") + 1 :]
    example = example[example.index("- #27") :]
    assert example.splitlines()[1:3] == ["  - `status` (status): `200` → `500`", f"  - `cadence:buffering`: {BUFFERING}"]
    assert "- `cadence:first_byte`: first_byte_delay: first body byte 2.0 → 802.0 ms" in md
    assert "- `$.events`: event_count: 30 → 10 events" in md
    assert "first_byte_ms" not in md  # words, not the raw objects

    page = render_html(reader)
    assert f"<td colspan='2'>{BUFFERING}</td>" in page
    assert "<td colspan='2'>first_byte_delay: first body byte 2.0 → 802.0 ms</td>" in page
    assert f"<li>#27 <code>GET /deploys/32/log\x1b[2J</code>: {BUFFERING}</li>" in page
    assert "first_byte_ms" not in page
    row = page.index("<code>GET /deploys/32/log")
    assert page.index("<td><code>status</code></td>", row) < page.index("<td><code>cadence:buffering</code></td>", row)


def test_a_capped_stream_keeps_its_timeline_for_the_chart(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    session = ComparerSession(path, max_body_bytes=16)
    session.feed(result(1, "GET /deploys/{id}/log", "/deploys/1/log", lines(PROGRESSIVE, stream=True), lines(HELD)))
    session.close()
    detail = StoreReader(str(path)).divergence(1)
    assert detail is not None
    responses = ReplayResult.from_wire(detail["result"]).responses
    assert responses["baseline"].truncated and len(responses["baseline"].body) == 16
    assert responses["baseline"].timeline == PROGRESSIVE and responses["baseline"].stream
    assert responses["candidate"].timeline == HELD
