"""Forward-protocol decoding from raw bytes built after the specification."""

from __future__ import annotations

import gzip
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.collector.forward import ForwardDecoder, Frame, encode_ack
from shadowreplay.contract.errors import DecodeError

NOW = 1_700_000_000_000_000_123
ET_BYTES = bytes.fromhex("d7 00 57 4f c5 33 07 5b b2 b8")  # 1464845619.123450040
ET_NS = 1464845619_123450040
REC = b"\x81\xa1a\x01"  # {"a": 1}


def decoder(**kw: int) -> ForwardDecoder:
    return ForwardDecoder(clock_ns=lambda: NOW, **kw)


def one(data: bytes, **kw: int) -> Frame:
    frames = decoder(**kw).feed(data)
    assert len(frames) == 1
    return frames[0]


def event_time(sec: int, nsec: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", sec, nsec))


def packb(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def str32(data: bytes) -> bytes:
    return b"\xdb" + struct.pack(">I", len(data)) + data


# -- time ------------------------------------------------------------------------------


def test_message_mode_event_time_fixext8() -> None:
    f = one(b"\x93\xa3app" + ET_BYTES + REC)
    assert (f.tag, f.mode, f.chunk, f.errors, f.error) == ("app", "message", None, [], None)
    assert f.events == [(ET_NS, {"a": 1})]
    assert f.events[0].time_ns == ET_NS and f.events[0].record == {"a": 1}


def test_event_time_ext8_form() -> None:
    f = one(b"\x93\xa3app" + b"\xc7\x08\x00" + ET_BYTES[2:] + REC)
    assert f.events[0].time_ns == ET_NS


def test_float_seconds() -> None:
    f = one(b"\x93\xa3app" + bytes.fromhex("cb 41 d5 d3 f1 4c e0 00 00") + REC)
    assert f.events[0].time_ns == 1464845619_500000000


def test_float_seconds_rounded_to_microseconds() -> None:
    f = one(packb(["app", 1464845619.123456, {"a": 1}]))
    assert f.events[0].time_ns == 1464845619_123456000


@pytest.mark.parametrize(
    "encoded, seconds",
    [
        ("05", 5),
        ("cc ff", 255),
        ("cd 01 00", 256),
        ("ce 57 4f c5 33", 1464845619),
        ("cf 00 00 00 00 57 4f c5 33", 1464845619),
        ("d0 05", 5),
        ("d1 01 00", 256),
        ("d2 57 4f c5 33", 1464845619),
        ("d3 00 00 00 00 57 4f c5 33", 1464845619),
    ],
)
def test_integer_seconds_of_every_width(encoded: str, seconds: int) -> None:
    f = one(b"\x93\xa3app" + bytes.fromhex(encoded) + REC)
    assert f.events[0].time_ns == seconds * 1_000_000_000


def test_time_zero_means_now() -> None:
    f = one(packb(["app", [[0, {"a": 1}], [event_time(0, 5), {"b": 2}]]]))
    assert [e.time_ns for e in f.events] == [NOW, NOW]


def test_fluent_bit_metadata_entry_form() -> None:
    f = one(packb(["app", [[[event_time(1464845619, 123450040), {"otlp": {}}], {"a": 1}]]]))
    assert f.events == [(ET_NS, {"a": 1})]
    f = one(packb(["app", [[[1464845619, None], {"a": 1}]]]))
    assert f.events == [(1464845619_000000000, {"a": 1})]


def test_msgpack_timestamp_ext_is_accepted() -> None:
    data = msgpack.packb(["app", msgpack.Timestamp(1464845619, 123450040), {"a": 1}])
    assert one(data).events[0].time_ns == ET_NS


# -- modes -----------------------------------------------------------------------------


def test_message_mode_with_option_map_and_nil_option() -> None:
    f = one(packb(["app", 1, {"a": 1}, {"chunk": "abc"}]))
    assert f.chunk == "abc" and f.mode == "message"
    f = one(packb(["app", 1, {"a": 1}, None]))
    assert f.chunk is None and len(f.events) == 1


def test_non_minimal_map32_option() -> None:
    option = b"\xdf\x00\x00\x00\x01\xa5chunk\xa3xyz"
    f = one(b"\x94\xa3app\x01" + REC + option)
    assert f.chunk == "xyz"


def test_forward_mode() -> None:
    data = packb(["web", [[1, {"a": 1}], [event_time(2, 3), {"b": 2}]], {"chunk": "c1", "size": 2}])
    f = one(data)
    assert f.mode == "forward" and f.tag == "web" and f.chunk == "c1"
    assert f.events == [(1_000_000_000, {"a": 1}), (2_000_000_003, {"b": 2})]


def entries_blob(n: int, start: int = 0) -> bytes:
    return b"".join(packb([event_time(1464845619, i), {"i": i}]) for i in range(start, start + n))


def test_packed_forward_bin_blob() -> None:
    f = one(packb(["app", entries_blob(3), {"chunk": b"\x00\xffid"}]))
    assert f.mode == "packed" and f.chunk == b"\x00\xffid"
    assert f.events == [(1464845619_000000000 + i, {"i": i}) for i in range(3)]


def test_packed_forward_str32_blob_holding_binary() -> None:
    blob = entries_blob(4)
    with pytest.raises(UnicodeDecodeError):
        blob.decode("utf-8")  # the point of this test
    data = b"\x93\xa3app" + str32(blob) + packb({"chunk": "p8n9gmxTQVC8/nh2wlKKeQ==\n", "size": 4})
    f = one(data)
    assert f.mode == "packed" and f.errors == []
    assert [e.record["i"] for e in f.events] == [0, 1, 2, 3]
    assert f.chunk == "p8n9gmxTQVC8/nh2wlKKeQ==\n"


def test_compressed_packed_forward_concatenated_gzip_members() -> None:
    blob = gzip.compress(entries_blob(2, 0)) + gzip.compress(entries_blob(3, 2))
    data = b"\x93\xa3app" + str32(blob) + packb({"compressed": "gzip", "chunk": "k"})
    f = one(data)
    assert f.mode == "compressed" and f.errors == [] and f.chunk == "k"
    assert [e.record["i"] for e in f.events] == [0, 1, 2, 3, 4]


def test_compressed_text_means_uncompressed() -> None:
    f = one(packb(["app", entries_blob(2), {"compressed": "text"}]))
    assert f.mode == "packed" and len(f.events) == 2


def test_gzip_bomb_refused_and_stream_goes_on() -> None:
    bomb = gzip.compress(packb([1, {"x": "a" * 200_000}]))
    data = packb(["app", bomb, {"compressed": "gzip", "chunk": "b"}]) + packb(["app", 1, {"a": 1}])
    frames = decoder(max_decompressed_bytes=100_000).feed(data)
    assert frames[0].error is not None and not frames[0].error.fatal
    assert frames[0].error.reason == "decompressed_too_large"
    assert frames[0].events == [] and frames[0].chunk is None
    assert frames[1].events == [(1_000_000_000, {"a": 1})]


def test_unknown_compression_refused() -> None:
    f = one(packb(["app", b"\x00", {"compressed": "lz4"}]))
    assert f.error is not None and f.error.reason == "unsupported_compression"


def test_compressed_chunks_are_bounded_and_corruption_refused() -> None:
    """Several gzip members inflate to their concatenation; past max_decompressed_bytes,
    or cut short, the chunk is refused (not acknowledged), the connection goes on."""
    first, second = entries_blob(40), entries_blob(3, start=40)
    data = gzip.compress(first) + gzip.compress(second)
    size = len(first) + len(second)

    def frame(blob: bytes, limit: int) -> Frame:
        return one(packb(["app", blob, {"compressed": "gzip", "chunk": "c"}]), max_decompressed_bytes=limit)

    whole = frame(data, size)
    assert whole.error is None and [e[1]["i"] for e in whole.events] == list(range(43))
    too_big = frame(data, size - 1)
    assert too_big.error is not None and too_big.error.reason == "decompressed_too_large" and not too_big.error.fatal
    cut = frame(data[:-3], 10 * size)
    assert cut.error is not None and cut.error.reason == "bad_gzip" and not cut.error.fatal


def test_fluent_signal_is_reported_and_its_entries_only_counted() -> None:
    f = one(packb(["app", [[1, {"m": 1}], [2, {"m": 2}]], {"fluent_signal": 1}]))
    assert f.signal == 1 and f.events == [] and f.errors == ["not_logs", "not_logs"]
    f = one(packb(["app", 1, {"m": 1}, {"fluent_signal": 2, "chunk": "c"}]))
    assert (f.signal, f.events, f.errors, f.chunk) == (2, [], ["not_logs"], "c")


# -- framing ---------------------------------------------------------------------------


def test_nil_keepalives_are_ignored() -> None:
    frames = decoder().feed(b"\xc0\xc0" + packb(["a", 1, {}]) + b"\xc0")
    assert len(frames) == 1 and frames[0].tag == "a"


def test_byte_by_byte_feeding_matches_whole() -> None:
    data = packb(["a", [[1, {"x": 1}]], {"chunk": "c"}]) + b"\xc0" + packb(["b", entries_blob(5)])
    whole = decoder().feed(data)
    d = decoder()
    pieces = [f for i in range(len(data)) for f in d.feed(data[i : i + 1])]
    assert pieces == whole and len(whole) == 2
    d.eof()


def test_many_frames_in_one_feed() -> None:
    data = b"".join(packb(["t", i, {"i": i}]) for i in range(1, 501))
    frames = decoder().feed(data)
    assert [f.events[0].record["i"] for f in frames] == list(range(1, 501))


def test_malformed_events_skipped_neighbours_kept() -> None:
    entries = [
        [1, {"i": 1}],
        ["yesterday", {"i": 2}],
        [3, "not a map"],
        [-4, {"i": 4}],
        [event_time(5, 2_000_000_000), {"i": 5}],
        "not an entry",
        [6, {"i": 6}, "extra"],
        [float("nan"), {"i": 7}],
        [[8, "not metadata"], {"i": 8}],
        [9, {"i": 9}],
    ]
    f = one(packb(["app", entries, {"chunk": "c"}]))
    assert [e.record["i"] for e in f.events] == [1, 9]
    assert sorted(f.errors) == sorted(
        ["bad_time", "bad_record", "bad_time", "bad_time", "bad_entry", "bad_entry", "bad_time", "bad_time"]
    )
    assert f.chunk == "c" and f.error is None


def test_malformed_entries_in_packed_blob() -> None:
    blob = packb([1, {"i": 1}]) + packb("junk") + packb([2, [1]]) + packb([3, {"i": 3}])
    f = one(packb(["app", blob]))
    assert [e.record["i"] for e in f.events] == [1, 3]
    assert sorted(f.errors) == ["bad_entry", "bad_record"]


def test_truncated_packed_blob_keeps_leading_entries() -> None:
    blob = packb([1, {"i": 1}]) + packb([2, {"i": 2}])[:-2]
    f = one(packb(["app", blob]))
    assert [e.record["i"] for e in f.events] == [1] and f.errors == ["bad_blob"]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (5, "bad_frame"),
        ({"tag": "x"}, "bad_frame"),
        (["only-tag"], "bad_frame"),
        ([1, 2, {}], "bad_tag"),
        (["app", 1], "bad_frame"),
        (["app", 1, {}, "not a map"], "bad_option"),
        (["app", [], {}, {}], "bad_frame"),
        (["app", b"", 5], "bad_option"),
        (["app", 1, {}, {}, {}], "bad_frame"),
    ],
)
def test_invalid_frame_is_refused_without_losing_the_stream(bad: object, reason: str) -> None:
    frames = decoder().feed(packb(["a", 1, {}]) + packb(bad) + packb(["b", 2, {}]))
    assert [f.tag for f in frames if f.error is None] == ["a", "b"]
    refused = frames[1]
    assert refused.error is not None and refused.error.reason == reason and not refused.error.fatal
    assert refused.events == [] and refused.chunk is None


def test_tag_not_utf8_refused() -> None:
    f = one(b"\x93\xa2\xff\xfe\x01" + REC)
    assert f.error is not None and f.error.reason == "bad_tag"


def test_unparseable_stream_is_fatal_after_good_frames() -> None:
    d = decoder()
    frames = d.feed(packb(["a", 1, {}, {"chunk": "c"}]) + b"\xc1" + packb(["b", 2, {}]))
    assert [f.tag for f in frames] == ["a"]
    assert d.failed is not None and d.failed.fatal and d.failed.reason == "msgpack"
    with pytest.raises(DecodeError) as exc:
        d.feed(b"")
    assert exc.value.fatal and exc.value.reason == "msgpack"


def test_unparseable_first_bytes_raise() -> None:
    with pytest.raises(DecodeError) as exc:
        decoder().feed(b"\xc1\x00")
    assert exc.value.fatal and exc.value.reason == "msgpack"


def test_frame_over_limit_closes_the_stream_after_the_frames_before_it() -> None:
    # However its bytes arrive (here all at once), a frame over the limit ends the
    # stream: its end is not looked for past the limit.
    big = packb(["app", 1, {"x": "a" * 3000}, {"chunk": "c"}])
    d = decoder(max_frame_bytes=2048)
    frames = d.feed(packb(["ok", 1, {}]) + big + packb(["never", 1, {}]))
    assert [f.tag for f in frames] == ["ok"]
    assert d.failed is not None and d.failed.fatal and d.failed.reason == "chunk_too_large"


def test_frame_far_over_limit_is_fatal() -> None:
    d = decoder(max_frame_bytes=1024)
    huge = packb(["app", b"x" * 2_000_000])
    with pytest.raises(DecodeError) as exc:
        for i in range(0, len(huge), 65536):
            d.feed(huge[i : i + 65536])
    assert exc.value.fatal and exc.value.reason == "chunk_too_large"


def test_eof_inside_a_frame_is_reported() -> None:
    d = decoder()
    assert d.feed(packb(["a", 1, {}])[:-1]) == []
    assert d.buffered > 0
    with pytest.raises(DecodeError) as exc:
        d.eof()
    assert exc.value.reason == "truncated"
    decoder().eof()  # nothing pending: quiet


# -- ack -------------------------------------------------------------------------------


def test_ack_vector() -> None:
    expected = bytes.fromhex(
        "81 a3 61 63 6b b8 70 38 6e 39 67 6d 78 54 51 56 43 38 2f 6e 68 32 77 6c 4b 4b 65 51 3d 3d"
    )
    assert encode_ack("p8n9gmxTQVC8/nh2wlKKeQ==") == expected


def test_ack_echoes_chunk_type_and_bytes() -> None:
    assert encode_ack(b"\x00\xff") == b"\x81\xa3ack\xc4\x02\x00\xff"
    # A str chunk that is not UTF-8 comes back as the same str bytes.
    f = one(b"\x94\xa3app\x01" + REC + b"\x81\xa5chunk\xa3\xff\xfe\n")
    assert encode_ack(f.chunk) == b"\x81\xa3ack\xa3\xff\xfe\n"  # type: ignore[arg-type]


# -- fuzz ------------------------------------------------------------------------------

VALID = [
    b"\x93\xa3app" + ET_BYTES + REC,
    packb(["web", [[1, {"a": 1}], [event_time(2, 3), {"b": [1, 2]}]], {"chunk": "c1"}]),
    b"\x93\xa3app" + str32(entries_blob(3)) + packb({"chunk": "x"}),
    packb(["app", gzip.compress(entries_blob(2)) + gzip.compress(entries_blob(1)), {"compressed": "gzip"}]),
    packb(["app", [[[event_time(1, 2), {}], {"a": 1}]]]),
]


def feed_all(data: bytes, step: int) -> None:
    d = ForwardDecoder(max_frame_bytes=4096, max_decompressed_bytes=8192)
    try:
        for i in range(0, len(data), step):
            for f in d.feed(data[i : i + step]):
                assert isinstance(f.tag, str)
                if f.chunk is not None:
                    encode_ack(f.chunk)
        d.eof()
    except DecodeError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512), st.integers(min_value=1, max_value=64))
def test_fuzz_random_bytes(data: bytes, step: int) -> None:
    feed_all(data, step)


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=6),
    st.integers(min_value=0),
    st.integers(min_value=1, max_value=64),
)
def test_fuzz_mutated_valid_frames(base: bytes, flips: list[tuple[int, int]], cut: int, step: int) -> None:
    data = bytearray(base + base)
    for pos, value in flips:
        data[pos % len(data)] = value
    feed_all(bytes(data[: len(data) - cut % 8]), step)


# -- the PackedForward fast path agrees with the stream unpacker ----------------------------


def outcome(data: bytes, step: int, *, fast: bool) -> list[object]:
    """Everything a decoder reports for ``data`` fed ``step`` bytes at a time; without
    ``fast``, the fast path is switched off (every frame goes to the stream unpacker)."""
    import shadowreplay.collector.forward as forward

    sniff = forward._sniff
    if not fast:
        forward._sniff = lambda buf, pos, n: None  # type: ignore[assignment]
    try:
        d = ForwardDecoder(max_frame_bytes=4096, max_decompressed_bytes=8192, clock_ns=lambda: NOW)
        out: list[object] = []
        try:
            for i in range(0, len(data), step):
                for f in d.feed(data[i : i + step]):
                    out.append((f.tag, f.events, f.chunk, f.errors, f.mode, f.signal, f.error and f.error.reason))
            d.eof()
        except DecodeError as exc:
            out.append(("fatal", exc.reason, d.buffered if exc.reason == "truncated" else None))
        return out
    finally:
        forward._sniff = sniff


PACKED = [
    packb(["app", entries_blob(3), {"chunk": "c"}]),
    b"\x93\xa3app" + str32(entries_blob(4)) + packb({"chunk": b"\x00\xff", "size": 4}),
    b"\x92\xd9\x03app" + b"\xc5" + struct.pack(">H", len(entries_blob(2))) + entries_blob(2),
    b"\x93\xda\x00\x03app" + b"\xc4" + bytes([len(entries_blob(1))]) + entries_blob(1) + b"\xc0",
    b"\x93\xa3app" + str32(entries_blob(2)) + b"\xde\x00\x01" + packb("chunk") + packb("m"),
    packb(["app", gzip.compress(entries_blob(2)), {"compressed": "gzip", "chunk": "z"}]),
    packb(["app", b"x" * 5000, {"chunk": "big"}]),  # over max_frame_bytes: refused
    packb(["app", entries_blob(1), "not a map"]),
    b"\x93\xa2\xff\xfe" + packb(entries_blob(1)) + packb({}),  # tag not UTF-8
    packb(["app", packb([1, {"a": 1}]) + b"\xc1", {"fluent_signal": 2}]),
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(PACKED + VALID + [b"\xc0"]), min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3),
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=1, max_value=300),
)
def test_fast_path_matches_stream_unpacker(parts: list[bytes], flips: list[tuple[int, int]], cut: int, step: int) -> None:
    data = bytearray(b"".join(parts))
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: len(data) - cut] if cut < len(data) else data
    fast = outcome(bytes(data), step, fast=True)
    assert fast == outcome(bytes(data), step, fast=False)
    assert fast == outcome(bytes(data), len(data), fast=True)  # however the bytes arrive


def test_fast_path_frames_across_reads() -> None:
    frames_in = [packb(["t", entries_blob(50, 50 * k), {"chunk": f"c{k}"}]) for k in range(4)]
    data = b"\xc0".join(frames_in)
    d = decoder()
    got = [f for i in range(0, len(data), 333) for f in d.feed(data[i : i + 333])]
    assert [f.chunk for f in got] == ["c0", "c1", "c2", "c3"]
    assert [e.record["i"] for f in got for e in f.events] == list(range(200))
    assert d.buffered == 0


def test_normalise_maps_log_events_and_skips_the_refused() -> None:
    def normalise(tag: str, time_ns: int, rec: dict[str, object], frame: bytes, index: int) -> tuple[str, int, object]:
        if rec.get("i") == 1:
            raise DecodeError("no", reason="missing_method", fatal=False)
        if rec.get("i") == 2:
            raise TypeError("str is not valid UTF-8: surrogates not allowed")
        return (tag, time_ns, rec["i"])

    d = ForwardDecoder(clock_ns=lambda: NOW, normalise=normalise)
    packed, forward, message, metrics = d.feed(
        packb(["app", entries_blob(4), {"chunk": "c"}])
        + packb(["fwd", [[1, {"i": 0}], [2, {"i": 1}], [3, "bad"]]])
        + packb(["msg", 0, {"i": 3}])
        + packb(["app", entries_blob(2), {"fluent_signal": 2}])
    )
    assert packed.events == [] and packed.chunk == "c"
    assert packed.items == [("app", 1464845619_000000000, 0), ("app", 1464845619_000000003, 3)]
    assert sorted(packed.errors) == ["bad_encoding", "missing_method"]
    assert forward.items == [("fwd", 1_000_000_000, 0)] and sorted(forward.errors) == ["bad_record", "missing_method"]
    assert message.items == [("msg", NOW, 3)]
    # Not logs: only counted, for the server to skip; never decoded into events.
    assert metrics.items == () and metrics.events == [] and metrics.errors == ["not_logs", "not_logs"]


def test_frames_tell_normalise_where_each_entry_sits() -> None:
    seen: list[tuple[bytes, int, object]] = []

    def normalise(tag: str, time_ns: int, rec: dict[str, object], frame: bytes, index: int) -> int:
        seen.append((frame, index, rec.get("i")))
        return index

    d = ForwardDecoder(clock_ns=lambda: NOW, normalise=normalise)
    chunked = packb(["app", entries_blob(3), {"chunk": "abc"}])
    d.feed(chunked + packb(["fwd", [[1, {"i": 0}], [2, {"i": 1}]], {"chunk": b"\xff\x00"}]) + packb(["msg", 1, {"i": 9}]))
    d.feed(packb(["msg", 1, {"i": 9}]))
    assert seen[:5] == [(b"cabc", 0, 0), (b"cabc", 1, 1), (b"cabc", 2, 2), (b"c\xff\x00", 0, 0), (b"c\xff\x00", 1, 1)]
    # Frames without a chunk id: a frame number of this connection, never repeated.
    (f1, i1, _), (f2, i2, _) = seen[5:]
    assert f1.startswith(b"n") and f2.startswith(b"n") and f1 != f2 and i1 == i2 == 0
    # The same chunk sent again (a retry, or on another connection) is told the same.
    seen.clear()
    ForwardDecoder(normalise=normalise).feed(chunked)
    assert [(f, i) for f, i, _ in seen] == [(b"cabc", 0), (b"cabc", 1), (b"cabc", 2)]


def test_rejects_go_back_in_the_ack_only_when_asked() -> None:
    d = decoder(normalise=lambda tag, ns, rec, frame, index: index)
    plain, asking = d.feed(
        packb(["app", entries_blob(2), {"chunk": "c1"}])
        + packb(["app", entries_blob(2) + packb([1, "not a map"]), {"chunk": "c2", "report_rejected": True}])
    )
    assert not plain.report and asking.report and asking.errors == ["bad_record"]
    assert msgpack.unpackb(encode_ack("c1")) == {"ack": "c1"}
    assert msgpack.unpackb(encode_ack("c2", {"bad_record": 1})) == {"ack": "c2", "rejected": {"bad_record": 1}}
    assert msgpack.unpackb(encode_ack(b"\x01\n", {})) == {"ack": b"\x01\n", "rejected": {}}
    # Still a small map: Fluent Bit reads acks into 512 bytes, Fluentd looks up "ack" only.
    assert len(encode_ack("p8n9gmxTQVC8/nh2wlKKeQ==", {f"reason_{i}": 10**6 for i in range(12)})) < 512
