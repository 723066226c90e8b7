"""The decoder's limits: memory bounded however the bytes arrive, records built one at a
time within max_record_bytes, max_records per frame, work cut in slices; and the ways a
frame can be decoded (whole or element by element, a blob in one loop or skimmed entry
by entry, inflated a piece at a time) agree."""

from __future__ import annotations

import gzip
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.collector.forward import ForwardDecoder, Frame, clip
from shadowreplay.contract.errors import DecodeError

NOW = 1_700_000_000_000_000_123


def packb(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def entries(records: list[dict[str, Any]], start: int = 1) -> bytes:
    return b"".join(packb([start + i, rec]) for i, rec in enumerate(records))


def feed_in_pieces(d: ForwardDecoder, data: bytes, step: int) -> list[Frame]:
    frames: list[Frame] = []
    for i in range(0, len(data), step):
        frames += d.feed(data[i : i + step])
    return frames


# -- declared lengths are checked before the bytes arrive ---------------------------------


@pytest.mark.parametrize(
    "header, reason",
    [
        (b"\x93\xa3app\xc6" + struct.pack(">I", 100 << 20), "chunk_too_large"),  # bin32 blob
        (b"\x93\xa3app\xdb" + struct.pack(">I", 100 << 20), "chunk_too_large"),  # str32 blob
        (b"\x92\xa3app\xdd" + struct.pack(">I", 50_000_000), "too_many_records"),  # entries array32
        (b"\x92\xa3app\xdd" + struct.pack(">I", 5000), "too_many_records"),  # within bytes, over count
        (b"\x94\xa3app\x01\xdf" + struct.pack(">I", 1 << 30), "chunk_too_large"),  # record map32
        (b"\x93\xdb" + struct.pack(">I", 1 << 30), "chunk_too_large"),  # tag str32
        (b"\xdd" + struct.pack(">I", 1 << 30), "chunk_too_large"),  # frame array32
    ],
)
def test_declared_sizes_over_the_limits_refuse_the_frame_from_its_header(header: bytes, reason: str) -> None:
    d = ForwardDecoder(max_frame_bytes=1 << 20, max_records=1000)
    ok = packb(["ok", 1, {"a": 1}])
    with pytest.raises(DecodeError) as exc:
        for i in range(0, len(header), 3):  # the header alone, a few bytes at a time
            assert all(f.tag == "ok" for f in d.feed((ok if i == 0 else b"") + header[i : i + 3]))
    assert exc.value.fatal and exc.value.reason == reason
    assert d.buffered == 0 and d.held_bytes == 0


def test_streaming_an_unfinished_frame_holds_at_most_the_limit_then_fails() -> None:
    """100 MB of one array32 frame of small entries, 64 KiB at a time: nothing is built,
    the held bytes never pass the limit plus one read, and the stream fails at the limit."""
    limit = 1 << 20
    d = ForwardDecoder(max_frame_bytes=limit, max_records=10_000_000)
    piece = b"\x92\x00\x80" * 21845
    held = []
    with pytest.raises(DecodeError) as exc:
        d.feed(b"\x92\xa1t\xdd" + struct.pack(">I", 1_000_000))  # within the limit as declared
        for _ in range(1600):
            d.feed(piece)
            held.append(d.held_bytes)
    assert exc.value.reason == "chunk_too_large" and exc.value.fatal
    assert max(held) <= 2 * limit + 2 * len(piece)
    assert len(held) < 40  # refused once past the limit, not after 100 MB


def test_any_frame_over_the_limit_fails_the_same_however_it_arrives() -> None:
    big = packb(["app", [[1, {"x": "a" * 100}] for _ in range(50)]])
    for step in (1, 7, 100, len(big)):
        d = ForwardDecoder(max_frame_bytes=4096)
        with pytest.raises(DecodeError) as exc:
            feed_in_pieces(d, packb(["ok", 1, {}]) + big, step)
            d.feed(b"")
        assert exc.value.reason == "chunk_too_large"


# -- records: one at a time, each within max_record_bytes ------------------------------------


def _records(frame: Frame) -> list[Any]:
    return [e.record.get("i") for e in frame.events]


BIG = {"i": "big", "pad": "x" * 5000}


@pytest.mark.parametrize("mode", ["packed", "forward", "compressed"])
def test_a_record_over_max_record_bytes_is_skipped_and_its_neighbours_kept(mode: str) -> None:
    recs = [{"i": 1}, BIG, {"i": 3}, {"i": 4, "nested": [{}] * 10}]
    blob = entries(recs)
    if mode == "packed":
        frame = packb(["app", blob, {"chunk": "c"}])
    elif mode == "forward":
        frame = packb(["app", [[1 + i, r] for i, r in enumerate(recs)], {"chunk": "c"}])
    else:
        frame = packb(["app", gzip.compress(blob, 1), {"compressed": "gzip", "chunk": "c"}])
    for step in (97, len(frame)):
        f = feed_in_pieces(ForwardDecoder(max_record_bytes=1024), frame, step)[0]
        assert (_records(f), f.errors, f.chunk, f.error) == ([1, 3, 4], ["record_too_large"], "c", None)


def test_message_frame_with_a_record_over_max_record_bytes_is_acked_without_it() -> None:
    frame = packb(["app", 1, BIG, {"chunk": "c"}])
    f = ForwardDecoder(max_record_bytes=1024).feed(frame)[0]
    assert (f.events, f.errors, f.chunk, f.error) == ([], ["record_too_large"], "c", None)


def test_inflated_entry_over_the_limit_is_dropped_while_it_streams() -> None:
    """An entry of about 4 MiB of small values inside a compressed blob: skipped as it
    inflates, never held whole (one string, though, the skimmer holds whole: it is
    bounded by max_decompressed_bytes and counted in held_bytes)."""
    huge = packb([1, {"i": "huge", "b": list(range(1 << 20))}])
    assert len(huge) > 3 << 20
    blob = entries([{"i": 0}]) + huge + entries([{"i": 2}])
    d = ForwardDecoder(max_record_bytes=64 * 1024, max_decompressed_bytes=8 << 20)
    held = []
    out: list[Frame] = []
    compressed = gzip.compress(blob, 1)
    for got in d.decode(packb(["app", compressed, {"compressed": "gzip"}])):
        held.append(d.held_bytes)
        if got is not None:
            out.append(got)
    assert _records(out[0]) == [0, 2] and out[0].errors == ["record_too_large"]
    assert max(held) < len(compressed) + (1 << 20)  # the compressed input, a piece or two


def test_too_many_records_refuses_a_packed_frame_and_the_stream_goes_on() -> None:
    blob = entries([{"i": i} for i in range(50)])
    data = packb(["app", blob, {"chunk": "c"}]) + packb(["app", gzip.compress(blob), {"compressed": "gzip"}])
    frames = ForwardDecoder(max_records=10).feed(data + packb(["ok", 1, {"i": 1}]))
    assert [f.error and f.error.reason for f in frames] == ["too_many_records", "too_many_records", None]
    assert frames[0].chunk is None and _records(frames[2]) == [1]


def test_a_compressed_blob_of_tiny_records_is_cut_in_slices_and_refused_at_the_record_limit() -> None:
    """The 61 KB gzip of ``[0, {}]`` entries that blocked the loop for 114 s: refused once
    past max_records, and decoded in slices the caller can interleave with other work."""
    bomb = gzip.compress(b"\x92\x00\x80" * 20_000_000, 9)
    assert len(bomb) < 100_000
    d = ForwardDecoder(max_records=100_000, normalise=lambda tag, ns, rec: (tag, ns, rec))
    outs = list(d.decode(packb(["t", bomb, {"compressed": "gzip", "chunk": "c"}])))
    frames = [f for f in outs if f is not None]
    assert len(frames) == 1 and frames[0].error is not None and frames[0].error.reason == "too_many_records"
    assert outs.count(None) >= 100_000 // 2000 - 1  # a yield every slice


def test_non_log_entries_are_counted_not_kept() -> None:
    blob = entries([{"i": i} for i in range(5)])
    f = ForwardDecoder().feed(packb(["m", gzip.compress(blob), {"compressed": "gzip", "fluent_signal": 1}]))[0]
    assert (f.events, f.items, f.errors) == ([], (), ["not_logs"] * 5)


def test_held_bytes_count_the_records_of_the_frame_being_decoded() -> None:
    blob = entries([{"i": i, "pad": "y" * 200} for i in range(10_000)])
    d = ForwardDecoder(normalise=lambda tag, ns, rec: (None, b"x" * 300, ns))
    held = [d.held_bytes for _ in d.decode(packb(["app", blob]))]
    assert max(held) > 10_000 * 300  # the records kept so far are counted
    assert d.held_bytes == 0


# -- the ways of decoding agree --------------------------------------------------------------

records = st.dictionaries(
    st.text(max_size=4),
    st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=40), st.binary(max_size=40),
              st.lists(st.integers(0, 2**32), max_size=5)),
    max_size=5,
)
times = st.one_of(st.integers(0, 2**33), st.floats(allow_nan=False), st.none(),
                  st.builds(lambda s, n: msgpack.ExtType(0, struct.pack(">II", s, n)),
                            st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)))
entry = st.one_of(st.tuples(times, records).map(list), times, records, st.lists(times, max_size=3))
options = st.one_of(st.none(), st.fixed_dictionaries({}, optional={"chunk": st.text(max_size=8), "size": st.integers(0, 9)}))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    tag = draw(st.sampled_from(["app", "a.b", ""]))
    es = draw(st.lists(entry, max_size=12))
    opt = draw(options)
    mode = draw(st.sampled_from(["message", "forward", "packed", "compressed"]))
    if mode == "message":
        return packb([tag, draw(times), draw(records), opt])
    if mode == "forward":
        return packb([tag, es, opt])
    blob = b"".join(packb(e) for e in es) + draw(st.binary(max_size=3))
    if mode == "compressed":
        return packb([tag, gzip.compress(blob, 1), {**(opt or {}), "compressed": "gzip"}])
    return packb([tag, blob, opt])


def outcome(data: bytes, step: int, *, small: int | None = None, skim_over: int | None = None) -> list[object]:
    d = ForwardDecoder(max_frame_bytes=1 << 20, clock_ns=lambda: NOW)
    if small is not None:
        d._small = small
    if skim_over is not None:
        d._skim_over = skim_over
    out: list[object] = []
    try:
        for f in feed_in_pieces(d, data, step):
            out.append((f.tag, f.events, f.chunk, f.errors, f.mode, f.signal, f.error and f.error.reason))
        d.eof()
    except DecodeError as exc:
        out.append(("fatal", exc.reason))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=4), st.integers(1, 200), st.integers(0, 5))
def test_whole_and_element_by_element_and_skimmed_decoding_agree(parts: list[bytes], step: int, cut: int) -> None:
    data = b"".join(parts)
    data = data[: len(data) - cut] if cut < len(data) else data
    plain = outcome(data, len(data))
    assert outcome(data, step) == plain
    assert outcome(data, step, small=0) == plain  # every frame element by element
    assert outcome(data, step, skim_over=0) == plain  # every blob skimmed entry by entry
    assert outcome(data, step, small=0, skim_over=0) == plain


def test_clip_bounds_what_it_is_given() -> None:
    assert clip("short") == "short"
    long = clip("x" * 4_000_000, 100)
    assert len(long) < 130 and long.endswith("(4000000 chars)")
