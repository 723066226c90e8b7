"""Forward-protocol frames as raw bytes, built by hand after the specification
(../shared/FORWARD_PROTOCOL.md), with what the collector must make of each.

Shared by tests/unit/test_forward_conformance.py (the decoder) and
tests/integration/test_collector_protocol.py (the real server over TCP). Nothing here
uses msgpack.packb: every header byte is written out, so the tests cannot agree with
the decoder by sharing its library's choices.
"""

from __future__ import annotations

import gzip
import struct
from typing import NamedTuple

NOW = 1_700_000_000_000_000_123  # the decoder's clock in unit tests (time 0 = now)
SEC = 1464845619
NSEC = 123450040
ET_NS = SEC * 1_000_000_000 + NSEC


# -- msgpack by hand -----------------------------------------------------------------


def arr(n: int, form: str = "fix") -> bytes:
    if form == "fix":
        assert n < 16
        return bytes([0x90 | n])
    if form == "16":
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def mp(n: int, form: str = "fix") -> bytes:
    if form == "fix":
        assert n < 16
        return bytes([0x80 | n])
    if form == "16":
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def text(s: str | bytes, form: str = "auto") -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if form == "auto":
        form = "fix" if len(b) < 32 else "8" if len(b) < 256 else "32"
    if form == "fix":
        assert len(b) < 32
        return bytes([0xA0 | len(b)]) + b
    if form == "8":
        return b"\xd9" + struct.pack(">B", len(b)) + b
    if form == "16":
        return b"\xda" + struct.pack(">H", len(b)) + b
    return b"\xdb" + struct.pack(">I", len(b)) + b


def binary(b: bytes, form: str = "auto") -> bytes:
    if form == "auto":
        form = "8" if len(b) < 256 else "16" if len(b) < 65536 else "32"
    if form == "8":
        return b"\xc4" + struct.pack(">B", len(b)) + b
    if form == "16":
        return b"\xc5" + struct.pack(">H", len(b)) + b
    return b"\xc6" + struct.pack(">I", len(b)) + b


_INT_FORMS = {
    "u8": (b"\xcc", ">B"),
    "u16": (b"\xcd", ">H"),
    "u32": (b"\xce", ">I"),
    "u64": (b"\xcf", ">Q"),
    "i8": (b"\xd0", ">b"),
    "i16": (b"\xd1", ">h"),
    "i32": (b"\xd2", ">i"),
    "i64": (b"\xd3", ">q"),
}


def integer(v: int, form: str) -> bytes:
    if form == "fix":
        assert 0 <= v < 128
        return bytes([v])
    head, fmt = _INT_FORMS[form]
    return head + struct.pack(fmt, v)


def f64(v: float) -> bytes:
    return b"\xcb" + struct.pack(">d", v)


def f32(v: float) -> bytes:
    return b"\xca" + struct.pack(">f", v)


def et_fixext8(sec: int, nsec: int) -> bytes:
    return b"\xd7\x00" + struct.pack(">II", sec, nsec)


def et_ext8(sec: int, nsec: int) -> bytes:
    return b"\xc7\x08\x00" + struct.pack(">II", sec, nsec)


NIL = b"\xc0"
TRUE = b"\xc3"


def record(rid: str) -> bytes:
    """An nginx JSON access-log record with request id ``rid``."""
    return (
        mp(4)
        + text("request_id") + text(rid)
        + text("request_method") + text("GET")
        + text("request_uri") + text(f"/conformance/{rid}?a=1&a=2")
        + text("remote_addr") + text("192.0.2.7")
    )


def ack(chunk: bytes, *, as_bin: bool = False) -> bytes:
    """The expected ``{"ack": chunk}`` reply, byte for byte."""
    return mp(1) + text("ack") + (binary(chunk) if as_bin else text(chunk))


# -- the cases -------------------------------------------------------------------------


class Case(NamedTuple):
    name: str
    data: bytes
    tag: str
    events: list[tuple[str, int]]  # (request id, time ns); NOW for "now"
    ack: bytes | None  # the exact reply, or None when none is due
    mode: str


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, data: bytes, events: list[tuple[str, int]], ack_bytes: bytes | None, mode: str) -> None:
        cases.append(Case(name, data, "conf." + name, events, ack_bytes, mode))

    def tag(name: str) -> bytes:
        return text("conf." + name)

    # Message mode: 3 elements (fluent-logger-python), 4 with {} (Go, Node), nil, map32.
    n = "msg3_fixext8"
    add(n, arr(3) + tag(n) + et_fixext8(SEC, NSEC) + record(n), [(n, ET_NS)], None, "message")
    n = "msg3_ext8"
    add(n, arr(3) + tag(n) + et_ext8(SEC, NSEC) + record(n), [(n, ET_NS)], None, "message")
    n = "msg4_empty_option"
    add(n, arr(4) + tag(n) + et_fixext8(SEC, NSEC) + record(n) + mp(0), [(n, ET_NS)], None, "message")
    n = "msg4_nil_option"
    add(n, arr(4) + tag(n) + et_fixext8(SEC, NSEC) + record(n) + NIL, [(n, ET_NS)], None, "message")
    n = "msg4_map32_chunk"
    opt = mp(1, "32") + text("chunk") + text("m4-chunk\n", "32")
    add(n, arr(4) + tag(n) + et_fixext8(SEC, NSEC) + record(n) + opt, [(n, ET_NS)], ack(b"m4-chunk\n"), "message")
    # Every integer width for seconds (small values are valid times near the epoch).
    for form, value in [
        ("fix", 100), ("u8", 200), ("u16", 60000), ("u32", SEC), ("u64", SEC),
        ("i8", 100), ("i16", 30000), ("i32", SEC), ("i64", SEC),
    ]:
        n = f"msg_int_{form}"
        add(n, arr(3) + tag(n) + integer(value, form) + record(n), [(n, value * 1_000_000_000)], None, "message")
    # Float seconds: the spec's vector, and float32.
    n = "msg_float64"
    raw = bytes.fromhex("cb41d5d3f14ce00000")
    (seconds,) = struct.unpack(">d", raw[1:])
    add(n, arr(3) + tag(n) + raw + record(n), [(n, round(seconds * 1_000_000) * 1000)], None, "message")
    n = "msg_float32"
    add(n, arr(3) + tag(n) + f32(1024.5) + record(n), [(n, 1024_500_000_000)], None, "message")
    # Time 0, as an integer and as EventTime seconds 0: "now".
    n = "msg_time0_int"
    add(n, arr(3) + tag(n) + integer(0, "fix") + record(n), [(n, NOW)], None, "message")
    n = "msg_time0_eventtime"
    add(n, arr(3) + tag(n) + et_fixext8(0, 0) + record(n), [(n, NOW)], None, "message")

    # Forward mode (Fluent Bit's default), with and without option.
    n = "fwd_no_option"
    entries = arr(2) + arr(2) + et_fixext8(SEC, NSEC) + record(n + "-0") + arr(2) + et_ext8(SEC, NSEC + 1) + record(n + "-1")
    add(n, arr(2) + tag(n) + entries, [(n + "-0", ET_NS), (n + "-1", ET_NS + 1)], None, "forward")
    n = "fwd_nil_option"
    entries = arr(1) + arr(2) + integer(SEC, "u32") + record(n)
    add(n, arr(3) + tag(n) + entries + NIL, [(n, SEC * 1_000_000_000)], None, "forward")
    n = "fwd_chunk_size"
    entries = arr(2, "16") + b"".join(arr(2) + et_fixext8(SEC, NSEC + i) + record(f"{n}-{i}") for i in range(2))
    opt = mp(2) + text("size") + integer(2, "fix") + text("chunk") + text("fwd-chunk==\n")
    add(n, arr(3) + tag(n) + entries + opt, [(f"{n}-{i}", ET_NS + i) for i in range(2)], ack(b"fwd-chunk==\n"), "forward")
    # Fluent Bit >= 5.0.5: [[EventTime, metadata], record], metadata a map (or nil).
    n = "fwd_fluent_bit_metadata"
    entries = (
        arr(2)
        + arr(2) + arr(2) + et_fixext8(SEC, NSEC) + mp(1) + text("k") + text("v") + record(n + "-0")
        + arr(2) + arr(2) + et_ext8(SEC, NSEC + 2) + mp(0) + record(n + "-1")
    )
    opt = mp(1) + text("chunk") + text("fb-1")
    add(n, arr(3) + tag(n) + entries + opt, [(n + "-0", ET_NS), (n + "-1", ET_NS + 2)], ack(b"fb-1"), "forward")

    # PackedForward: the blob as bin8, bin32, str8 and str32 (Fluentd's out_forward).
    def blob(name: str, count: int) -> bytes:
        out = b""
        for i in range(count):
            t = [et_fixext8(SEC, NSEC + i), et_ext8(SEC, NSEC + i), integer(SEC, "u32"), integer(SEC, "i64")][i % 4]
            out += arr(2) + t + record(f"{name}-{i}")
        return out

    def blob_events(name: str, count: int) -> list[tuple[str, int]]:
        return [(f"{name}-{i}", ET_NS + i if i % 4 < 2 else SEC * 1_000_000_000) for i in range(count)]

    for form, count in [("bin8", 1), ("bin16", 4), ("bin32", 4), ("str8", 1), ("str16", 4), ("str32", 4)]:
        n = f"packed_{form}"
        chunk = f"packed-{form}\n".encode()
        opt = mp(2) + text("size") + integer(count, "fix") + text("chunk") + text(chunk)
        b = blob(n, count)
        packed = binary(b, form[3:]) if form.startswith("bin") else text(b, form[3:])
        add(n, arr(3) + tag(n) + packed + opt, blob_events(n, count), ack(chunk), "packed")
    n = "packed_no_option"
    add(n, arr(2) + tag(n) + binary(blob(n, 3)), blob_events(n, 3), None, "packed")
    n = "packed_compressed_text"
    opt = mp(2) + text("compressed") + text("text") + text("chunk") + binary(b"\x00bin-chunk\xff")
    add(n, arr(3) + tag(n) + binary(blob(n, 2)) + opt, blob_events(n, 2), ack(b"\x00bin-chunk\xff", as_bin=True), "packed")

    # CompressedPackedForward: several gzip members concatenated, blob as str32.
    n = "compressed_gzip_members"
    raw_blob = blob(n, 9)
    third = len(raw_blob) // 3
    gz = b"".join(gzip.compress(part) for part in (raw_blob[:third], raw_blob[third : 2 * third], raw_blob[2 * third :]))
    chunk = b"p8n9gmxTQVC8/nh2wlKKeQ==\n"
    opt = mp(3, "32") + text("size") + integer(9, "u8") + text("compressed") + text("gzip") + text("chunk") + text(chunk)
    add(n, arr(3) + tag(n) + text(gz, "32") + opt, blob_events(n, 9), ack(chunk), "compressed")
    # An option with every key, as a map32, fluent_signal 0 (logs).
    n = "option_map32_all_keys"
    opt = (
        mp(5, "32")
        + text("size") + integer(1, "u16")
        + text("chunk") + text("all-keys\n")
        + text("compressed") + text("gzip")
        + text("fluent_signal") + integer(0, "fix")
        + text("metadata") + mp(0)
    )
    add(n, arr(3) + tag(n) + binary(gzip.compress(blob(n, 1)), "32") + opt, blob_events(n, 1), ack(b"all-keys\n"), "compressed")
    # fluent_signal 1 (metrics): not log records; skipped and counted, the chunk still acked.
    n = "signal_metrics"
    opt = mp(2) + text("fluent_signal") + integer(1, "fix") + text("chunk") + text("metrics-1")
    add(n, arr(3) + tag(n) + binary(blob(n, 2)) + opt, [], ack(b"metrics-1"), "packed")
    # nil keep-alives around a frame.
    n = "keepalives_around"
    add(n, NIL + NIL + arr(3) + tag(n) + et_fixext8(SEC, NSEC) + record(n) + NIL, [(n, ET_NS)], None, "message")
    return cases


CASES = _cases()

# -- handshake vectors -----------------------------------------------------------------

HS_NONCE = bytes(range(0x00, 0x10))
HS_AUTH = bytes(range(0x10, 0x20))
HS_SALT = "0123456789abcdef0123456789abcdef"
HS_KEY = "secret"
HS_CLIENT = "client.example.com"
HS_SERVER = "server.example.com"
HS_PING_DIGEST = (
    "c04595ac2136aee29622265d29f517a8f5ac08375f131395a0d0e89d5494bd30"
    "60d2d4f48f757b6caa3bab42127669cf6d775250a56a076ad55920925500a35f"
)
HS_PONG_DIGEST = (
    "84f113ff067cc7c078417277349c6e49a4c889eabad5ef2c82b364c62f27b9ef"
    "e6889ec4d4430509b6b8006d44042d3dd95873fc519269ad6928003ddd1daeb1"
)
HS_PASSWORD_DIGEST = (
    "9f48c52936da01248e1c3e2ffab158a8a3cc201cc13aeca8b9d689a6ea13e98f"
    "0d661aa675e93490805b0d8834cccc5df9028c9a3a2797e71086eedb85069223"
)


def ping(hostname: str, salt: str | bytes, digest: str, username: str = "", pw_digest: str = "") -> bytes:
    """A PING, by hand; a bytes salt goes in a str (as Fluent Bit sends it)."""
    return arr(6) + text("PING") + text(hostname) + text(salt) + text(digest) + text(username) + text(pw_digest)


def pong_ok(hostname: str, digest: str) -> bytes:
    return arr(5) + text("PONG") + TRUE + text("") + text(hostname) + text(digest)


def pong_refused(reason: str) -> bytes:
    return arr(5) + text("PONG") + b"\xc2" + text(reason) + text("") + text("")
