"""The built-in response parser against h11, the reference: over generated responses (well
formed and not, every framing, folded fields, interim responses, trailers, bare-LF lines,
random segmentation) both agree on status, headers and body, or both refuse."""

from __future__ import annotations

from dataclasses import dataclass

import h11
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shadowreplay.replayer.http1 import MAX_HEAD_BYTES, HTTPFailure, _Parser

Parsed = tuple[int, list[tuple[bytes, bytes]], bytes] | None  # None: refused (or incomplete at EOF)

NAMES = ["Content-Type", "X-A", "x-a", "Set-Cookie", "Server", "Vary", "X-Empty", "Link", "Connection", "ETag"]
VALUE_CHARS = list("abcXYZ019-_/;=,.\"()") + [" ", "\t", "é", "\x01", "\x7f"]
RARE_CHARS = ["\x00", "\x0b", "\r", "\x0c"]  # refused by both when they appear in a field


@dataclass
class Case:
    raw: bytes
    method: str
    segments: list[int]
    utf8: bool


def _value() -> st.SearchStrategy[str]:
    chars = st.one_of(st.sampled_from(VALUE_CHARS), st.sampled_from(RARE_CHARS))
    common = st.text(alphabet=st.sampled_from(VALUE_CHARS), max_size=16)
    return st.one_of(common, common, common, st.text(alphabet=chars, max_size=8))


@st.composite
def responses(draw: st.DrawFn) -> Case:  # noqa: C901 - one branch per framing
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    latin1 = draw(st.booleans())
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 2))):
        lines.append(f"HTTP/1.1 {draw(st.sampled_from([100, 102, 103]))} Info")
        lines.extend(f"{n}: {draw(_value())}" for n in draw(st.lists(st.sampled_from(NAMES), max_size=2)))
        lines.append("")
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    status = draw(st.sampled_from([200, 200, 201, 204, 206, 299, 304, 404, 500, 599, 999]))
    reason = draw(st.sampled_from(["", " OK", " Not Found", " x\ty", " "]))
    lines.append(f"HTTP/{version} {status}{reason}")
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=5)):
        value = draw(_value())
        if draw(st.integers(0, 5)) == 0:  # obs-fold
            lines.append(f"{name}: {value}")
            lines.append(draw(st.sampled_from([" ", "\t", "  "])) + draw(_value()))
        else:
            lines.append(f"{name}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{value}")
    body = draw(st.binary(max_size=120))
    framing = draw(st.sampled_from(["length", "chunked", "te+cl", "cl+te", "close", "cl-list", "cl-twice",
                                    "bad-cl", "cl-conflict", "te-other", "te-twice", "cl-short", "cl-long"]))
    tail = b""
    if framing in ("length", "cl-short", "cl-long"):
        delta = {"length": 0, "cl-short": -1, "cl-long": 1}[framing]
        lines.append(f"Content-Length: {max(0, len(body) + delta)}")
        tail = body
    elif framing == "cl-list":
        lines.append(f"Content-Length: {len(body)} , {len(body)}")
        tail = body
    elif framing == "cl-twice":
        lines += [f"Content-Length: {len(body)}", f"content-length: {len(body)}"]
        tail = body
    elif framing == "bad-cl":
        lines.append(f"Content-Length: {draw(st.sampled_from(['²', '-1', '+3', '0x10', '', '1 2', '٣', '9' * 21]))}")
        tail = body
    elif framing == "cl-conflict":
        lines += [f"Content-Length: {len(body)}", f"Content-Length: {len(body) + 1}"]
        tail = body
    elif framing == "te-other":
        lines.append(f"Transfer-Encoding: {draw(st.sampled_from(['gzip', 'identity', 'gzip, chunked', 'chunked, gzip']))}")
        tail = body
    elif framing == "close":
        tail = body
    else:
        if framing == "te+cl":
            lines += ["Transfer-Encoding: chunked", f"Content-Length: {len(body) + 7}"]
        elif framing == "cl+te":
            lines += [f"Content-Length: {len(body) + 7}", "Transfer-Encoding: CHUNKED"]
        elif framing == "te-twice":
            lines += ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]
        else:
            lines.append(f"Transfer-Encoding: {draw(st.sampled_from(['chunked', 'Chunked']))}")
        tail = _chunked(draw, body)
    lines.append("")
    head = (eol.join(lines) + eol).encode("latin-1" if latin1 else "utf-8", "replace")
    raw = head + tail
    if draw(st.integers(0, 6)) == 0:  # cut short somewhere: incomplete at EOF unless close-delimited
        raw = raw[: draw(st.integers(0, len(raw)))]
    return Case(raw, draw(st.sampled_from(["GET", "GET", "HEAD"])), draw(st.lists(st.integers(1, 40), max_size=30)),
                not latin1)


def _chunked(draw: st.DrawFn, body: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(body):
        size = draw(st.integers(1, max(1, len(body) - pos)))
        ext = draw(st.sampled_from(["", "", ";a=1", ';q="x;y"', ";", " \t"]))
        size_text = draw(st.sampled_from(["%x", "%X", "%04x"])) % size
        out += f"{size_text}{ext}\r\n".encode() + body[pos : pos + size] + b"\r\n"
        pos += size
    fault = draw(st.sampled_from(["none"] * 8 + ["bad-size", "no-crlf", " size"]))
    if fault == "bad-size":
        out += b"zz\r\n"
    elif fault == "no-crlf" and out:
        out = out[:-2] + b"XX"
    elif fault == " size":
        out += b" 1\r\nx\r\n"
    out += b"0\r\n"
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["X-Trailer", "Server-Timing", "X-Sum", "bad name"]))
        out += f"{name}: {draw(_value())}\r\n".encode()
    out += b"\r\n"
    return bytes(out)


def h11_parse(raw: bytes, method: str) -> Parsed:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")  # the peer closed after these bytes
    status = 0
    headers: list[tuple[bytes, bytes]] = []
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status, headers = event.status_code, [(bytes(n), bytes(v)) for n, v in event.headers.raw_items()]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, body
            elif not isinstance(event, h11.InformationalResponse):
                return None  # NEED_DATA or ConnectionClosed: incomplete
    except h11.RemoteProtocolError:
        return None


def ours_parse(raw: bytes, method: str, segments: list[int], utf8: bool) -> Parsed:
    parser = _Parser(method == "HEAD", 1 << 20)
    pos = 0
    sizes = iter(segments)
    try:
        done = False
        while pos < len(raw) and not done:
            step = next(sizes, len(raw))
            done = parser.feed(raw[pos : pos + step])
            pos += step
        if not done and not parser.feed_eof():
            return None
    except HTTPFailure as exc:
        assert exc.kind == "protocol"
        return None
    encoding = "utf-8" if utf8 else "latin-1"
    return parser.status, _like_h11([(n.encode(encoding), v.encode(encoding)) for n, v in parser.headers]), bytes(parser.body)


def _like_h11(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Our fields are kept as received; h11 rewrites two: Content-Length to its one value
    (repeats dropped), Transfer-Encoding lowercased."""
    out = []
    seen_length = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            if seen_length:
                continue
            seen_length = True
            value = value.split(b",")[0].strip()
        elif lname == b"transfer-encoding":
            value = value.lower()
        out.append((name, value))
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
@example(Case(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok", "GET", [1], True))
@example(Case(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "GET", [], True))
@example(Case("HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\n".encode(), "GET", [], True))
def test_agrees_with_h11(case: Case) -> None:
    reference = h11_parse(case.raw, case.method)
    ours = ours_parse(case.raw, case.method, case.segments, case.utf8)
    assert ours == reference
    whole = ours_parse(case.raw, case.method, [], case.utf8)
    one_by_one = ours_parse(case.raw, case.method, [1] * len(case.raw), case.utf8)
    assert whole == ours == one_by_one
