"""Fluentd forward protocol v1: a pure, incremental decoder (no asyncio, no sockets).

Feed it the bytes of one connection as they arrive; it returns the complete frames.
Errors come in three sizes, so bad input never costs good records around it:

* an invalid *event* (bad time, record not a map, a record over ``max_record_bytes``)
  is skipped and its reason listed in ``Frame.errors``; its neighbours are kept;
* an invalid *frame* that still leaves the stream framed (not an array, tag not a
  string, gzip bomb, too many records) comes back as a ``Frame`` whose ``error`` is a
  non-fatal ``DecodeError``: no events, and it must not be acknowledged;
* an unparseable *stream*, or a frame over ``max_frame_bytes``, raises a fatal
  ``DecodeError``: the connection must close.

Memory is bounded by the limits, however the bytes arrive. No Python object is built
from a frame until all of its bytes are here: an incomplete frame is only *skimmed*
(msgpack's ``skip``, which builds nothing) to find where it ends, so what a connection
holds is at most ``max_frame_bytes`` of raw bytes. The declared lengths in a frame's
headers (the frame array, its tag, and its second element: blob, entries array or
map) are checked as soon as they arrive, so a frame that says it is bigger than the
limit is refused before its bytes come; any other frame is refused as soon as its
bytes pass the limit. A record's objects take up to about 120 times its msgpack size
(an empty map is one byte and a 64-byte dict), so entries are built one at a time,
never more than ``max_record_bytes`` of msgpack each; a compressed blob is inflated a
piece at a time into that same entry loop, never held whole; a frame may carry at most
``max_records`` entries. ``held_bytes`` estimates what the decoder holds now, for the
server's memory budget.

Work is cut in slices: ``decode`` is a generator that yields ``None`` after each slice
(a few thousand entries, or a piece of inflated data), so the caller can let other
connections run; ``feed`` runs it to the end.

Strings are unpacked with ``surrogateescape`` so a PackedForward blob sent as str32
(Fluentd's out_forward does) holding binary msgpack or gzip comes back byte for byte,
and so does a ``chunk`` id that is not valid UTF-8. Records may therefore hold str
values with lone surrogates where the client sent invalid UTF-8 (``orjson`` refuses
them; ``.encode("utf-8", "surrogateescape")`` restores the bytes), and msgpack ext
values inside records come back as ``(code, data)`` tuples.

Speed: a PackedForward frame (what Fluentd, Fluent Bit and ``shadowreplay tail`` send) is
recognised from its first bytes and its blob sliced straight out of the receive buffer,
instead of being skimmed and unpacked (which would decode a str32 blob into a ``str``
and back); every other frame, and any PackedForward frame the fast path does not take
(oversized option, odd encodings, a malformed option), is skimmed and then unpacked,
with the same results. The entries of a blob no bigger than ``max_record_bytes`` are
unpacked in one C loop; a bigger blob's entries are skimmed one by one first.
"""

from __future__ import annotations

import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import msgpack

from shadowreplay.contract.errors import DecodeError

DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
# An option map bigger than this refuses its frame (bad_option): options are a few
# small keys, and this bounds what building one may cost.
MAX_OPTION_BYTES = 64 * 1024
# Frames up to this size are unpacked whole; bigger ones element by element.
_SMALL_FRAME = 64 * 1024
# Bytes handed to the skimmer at a time.
_FEED_SLICE = 256 * 1024
# Inflated bytes produced per step of a compressed blob.
_INFLATE_PIECE = 64 * 1024
# Units of work (one entry, one small frame) between two yields of ``decode``; an
# inflated piece counts as _PIECE_UNITS.
_SLICE_UNITS = 500
_PIECE_UNITS = 100
# Estimated memory of one record kept while its frame is decoded, beyond its msgpack
# size (its bus message's JSON is a little bigger than its msgpack; the key, the tuple
# and the objects' headers).
RECORD_COST_BYTES = 512
_NS = 1_000_000_000
_MAX_NS = 2**63 - 1

_TIMESTAMP = msgpack.Timestamp
_SEC_NSEC_UNPACK = struct.Struct(">II").unpack
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
# _sniff / _header: the buffer ends inside a header; wait for more bytes.
_NEED_MORE = -1
_new_event = tuple.__new__
# Errors msgpack raises on bytes that are not a msgpack stream (FormatError, StackError,
# and ExtraData are UnpackException; unhashable map keys are a TypeError).
_MSGPACK_ERRORS = (msgpack.UnpackException, ValueError, TypeError, UnicodeDecodeError)
# Modes whose frames carry their events as a blob of concatenated [time, record] entries.
_PACKED = "packed"
_COMPRESSED = "compressed"


class Event(NamedTuple):
    """One log event: its time in integer nanoseconds since the epoch and its record."""

    time_ns: int
    record: dict[Any, Any]


class Frame(NamedTuple):
    """One forward-protocol message (a "chunk" when it carries ``option.chunk``).

    ``chunk`` is the chunk id exactly as received (``str`` or ``bytes``); echo it with
    :func:`encode_ack` once the events are stored. ``errors`` lists the reasons of the
    events skipped (``not_logs`` for each entry of a metrics or traces frame, whose
    entries are counted, never decoded). ``error`` is set (and ``events`` empty) when
    the whole frame was refused; such a frame must not be acknowledged.

    With a decoder given ``normalise``, a log frame carries in ``items`` what
    ``normalise`` returned for each event, and no ``events``; an event it refused is
    skipped like any malformed event, its reason in ``errors``.
    """

    tag: str
    events: list[Event]
    chunk: bytes | str | None
    errors: list[str]
    mode: str
    signal: int = 0
    error: DecodeError | None = None
    items: Sequence[Any] = ()
    # The client asked for its rejects in the ack (option "report_rejected": true; only
    # ``shadowreplay tail`` does): see ``encode_ack``.
    report: bool = False


def encode_ack(chunk: bytes | str, rejected: dict[str, int] | None = None) -> bytes:
    """``{"ack": chunk}``, with the chunk in the msgpack type (str or bin) it came in.

    ``rejected`` (reason → count of the chunk's events skipped), when given, is added as
    ``"rejected"``: a frame whose option says ``"report_rejected": true`` gets it (empty
    when nothing was skipped), so the sender can tell shipped lines from rejected ones.
    Clients that never ask never see it (Fluent Bit reads acks into 512 bytes)."""
    ack: dict[str, Any] = {}
    if isinstance(chunk, str):
        # Raw str type, exact bytes even when the id was not valid UTF-8.
        ack["ack"] = chunk.encode("utf-8", "surrogateescape")
        if rejected is not None:
            ack["rejected"] = {k.encode(): v for k, v in rejected.items()}
        return msgpack.packb(ack, use_bin_type=False)
    ack["ack"] = bytes(chunk)
    if rejected is not None:
        ack["rejected"] = rejected
    return msgpack.packb(ack, use_bin_type=True)


def _ext_hook(code: int, data: bytes) -> tuple[int, bytes]:
    # Arrays unpack as lists, so a tuple can only be an ext value (EventTime is code 0).
    # Cheaper than msgpack.ExtType, whose constructor validates its arguments.
    return (code, data)


_UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False,
    "unicode_errors": "surrogateescape",
    "strict_map_key": False,
    "use_list": True,
    "ext_hook": _ext_hook,
}


def _new_unpacker(max_buffer_size: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(max_buffer_size=max_buffer_size, **_UNPACK_OPTIONS)


def _unpackb(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, **_UNPACK_OPTIONS)


class ForwardDecoder:
    """Incremental decoder of one connection's forward-protocol byte stream."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        clock_ns: Callable[[], int] = time.time_ns,
        normalise: Callable[[str, int, dict[Any, Any], bytes, int], Any] | None = None,
    ) -> None:
        """``normalise(tag, time_ns, record, frame, index)``, when given, is applied to
        each event of a log frame as it is unpacked (while the record is still in the CPU
        cache), and may refuse one with a non-fatal DecodeError (its ``reason`` is
        recorded), or with TypeError/UnicodeEncodeError (recorded as ``bad_encoding``).
        ``frame`` identifies the frame (``b"c" + chunk id``: the same when a client
        re-sends the chunk; without a chunk id, this connection's frame number) and
        ``index`` is the entry's position in it, so equal records get distinct ids."""
        self._normalise = normalise
        self._nonce = os.urandom(8)  # frames without a chunk id: unique per connection
        self._frames = 0
        self._max_frame = max_frame_bytes
        self._max_decompressed = max_decompressed_bytes
        self._max_records = max_records
        self._max_record = max_record_bytes
        # Frames up to this size are unpacked whole, blobs up to this are not skimmed
        # entry by entry (tests lower them to check both ways agree).
        self._small = min(_SMALL_FRAME, max_record_bytes)
        self._skim_over = max_record_bytes
        self._clock_ns = clock_ns
        # Bytes received and not yet taken as frames; a frame boundary at position 0.
        self._buf = bytearray()
        # The skimmer of the frame at position 0 (and maybe of frames after it): it
        # was fed self._buf[: self._sfed], and its stream offset self._soff is
        # position 0 of the buffer.
        self._skim: msgpack.Unpacker | None = None
        self._sfed = 0
        self._soff = 0
        # Whether the declared lengths of the frame at position 0 were checked.
        self._checked = False
        self._job: _Entries | None = None
        self._fatal: DecodeError | None = None

    @property
    def failed(self) -> DecodeError | None:
        """The fatal error that ended the stream, once there is one."""
        return self._fatal

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buf)

    @property
    def held_bytes(self) -> int:
        """An estimate of the memory this decoder holds: raw bytes of the incomplete
        frame, the skimmer's copy, and the frame being decoded with its records."""
        held = len(self._buf)
        if self._skim is not None:
            held += self._sfed - (self._skim.tell() - self._soff)
        if self._job is not None:
            held += self._job.held_bytes
        return held

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return every frame it completes. Raises a fatal DecodeError
        when the stream cannot be parsed (frames completed before the damage are
        returned first; the error is raised by the next call)."""
        frames: list[Frame] = []
        try:
            for frame in self.decode(data):
                if frame is not None:
                    frames.append(frame)
        except DecodeError:
            if not frames:
                raise
        return frames

    def decode(self, data: bytes) -> Iterator[Frame | None]:
        """Add ``data``; yield every frame it completes, and ``None`` after each slice of
        work. The generator must be run to its end before the next call. A fatal
        DecodeError is raised after the frames completed before the damage."""
        if self._fatal is not None:
            raise self._fatal
        if self._job is not None:
            raise RuntimeError("ForwardDecoder.decode: the previous call was not run to its end")
        self._buf += data
        units = 0
        while True:
            try:
                got = self._take()
            except DecodeError as exc:
                self._fatal = exc
                self._buf = bytearray()
                self._skim = None
                raise
            if got is None:
                return
            if type(got) is Frame:
                yield got
                units += 1
            else:
                assert isinstance(got, _Entries)
                self._job = got
                frame = None
                while frame is None:
                    if units >= _SLICE_UNITS:
                        yield None
                        units = 0
                    frame, used = got.run(_SLICE_UNITS - units)
                    units += used
                self._job = None
                yield frame
            if units >= _SLICE_UNITS:
                yield None
                units = 0

    def eof(self) -> None:
        """The peer closed. Raises the pending fatal error, or a fatal DecodeError
        (reason ``truncated``) when a frame was left incomplete."""
        if self._fatal is not None:
            raise self._fatal
        if self.buffered:
            raise DecodeError(
                f"connection closed inside a frame ({self.buffered} bytes pending)",
                reason="truncated",
                fatal=True,
            )

    # -- framing -------------------------------------------------------------------------

    def _take(self) -> Frame | _Entries | None:
        """Take the next complete frame off the buffer (a Frame, or the job that
        decodes its entries); None when it has not fully arrived."""
        buf = self._buf
        while True:
            n = len(buf)
            if not n:
                return None
            if self._skim is None:
                if buf[0] == 0xC0:  # nil keep-alive
                    del buf[:1]  # O(1) at the front of a bytearray
                    continue
                if not self._checked:
                    self._checked = self._check_declared(buf, n)
                head = _sniff(buf, 0, n)
                if head == _NEED_MORE:
                    return None
                if head is not None:
                    got = self._fast(buf, n, head)  # type: ignore[arg-type]
                    if got is None:
                        return None
                    if got is not _SLOW:
                        self._checked = False
                        return got  # type: ignore[return-value]
                self._skim = msgpack.Unpacker(max_buffer_size=self._max_frame + _FEED_SLICE)
                self._sfed = 0
                self._soff = 0
            elif not self._checked:
                self._checked = self._check_declared(buf, n)
            end = self._skim_frame(buf, n)
            if end < 0:
                return None
            if end > self._max_frame:
                raise _too_large(f"a frame of {end} bytes exceeds the limit of {self._max_frame}")
            data = bytes(buf[:end])
            del buf[:end]
            self._checked = False
            self._soff += end
            self._sfed -= end
            if self._sfed == 0 or _sniff(buf, 0, len(buf)) is not None:
                # Nothing fed beyond this frame, or the next one may suit the fast path.
                self._skim = None
            if data == b"\xc0":
                continue
            return self._slow(data)

    def _check_declared(self, buf: bytearray, n: int) -> bool:
        """Refuse (fatal DecodeError) a frame whose headers declare more than the
        limits allow, before its bytes arrive: the frame array, its tag, and its second
        element (blob, entries array, map). False while those headers are incomplete."""
        limit = self._max_frame
        head = _header(buf, 0, n)
        if head is None:
            return False
        kind, count, p = head
        if kind != _ARRAY:
            return True
        if count > limit:
            raise _too_large(f"a frame declares {count} elements, over the limit of {limit} bytes")
        if count < 2:
            return True
        tag = _header(buf, p, n)
        if tag is None:
            return False
        kind, size, p = tag
        if kind != _RAW:
            return True
        p += size
        if p > limit:
            raise _too_large(f"a frame's tag declares {size} bytes, over the limit of {limit}")
        second = _header(buf, p, n)
        if second is None:
            return False
        kind, size, p = second
        if kind == _OTHER and count >= 3:
            # Message mode: a time (a few bytes) and then the record's header.
            if p >= n or (buf[p] == 0xC7 and p + 1 >= n):
                return False
            width = _scalar_size(buf, p, n)
            if width is None:
                return True
            third = _header(buf, p + width, n)
            if third is None:
                return False
            kind, size, p = third
        if kind == _ARRAY:
            if size > self._max_records:
                raise DecodeError(
                    f"a Forward frame declares {size} entries, over the limit of {self._max_records}",
                    reason="too_many_records",
                    fatal=True,
                )
            least = p + size  # every entry takes at least one byte
        elif kind == _MAP:
            least = p + 2 * size
        elif kind == _RAW:
            least = p + size
        else:
            return True
        if least > limit:
            raise _too_large(f"a frame declares at least {least} bytes, over the limit of {limit}")
        return True

    def _skim_frame(self, buf: bytearray, n: int) -> int:
        """The end of the frame at position 0 once its bytes are all here, else -1.
        Raises a fatal DecodeError on bytes that are no msgpack, or once the frame is
        known to pass the size limit."""
        skim = self._skim
        assert skim is not None
        limit = self._max_frame
        while True:
            try:
                skim.skip()
                return skim.tell() - self._soff
            except msgpack.OutOfData:
                pass
            except _MSGPACK_ERRORS as exc:
                raise DecodeError(f"unparseable msgpack stream: {clip(repr(exc))}", reason="msgpack", fatal=True) from None
            if self._sfed > limit:
                raise _too_large(f"a frame exceeds the limit of {limit} bytes")
            if self._sfed >= n:
                return -1
            piece = buf[self._sfed : min(n, self._sfed + _FEED_SLICE, limit + 1)]
            try:
                skim.feed(piece)
            except msgpack.BufferFull:
                raise _too_large(f"a frame exceeds the limit of {limit} bytes") from None
            self._sfed += len(piece)

    def _fast(self, buf: bytearray, n: int, head: tuple[int, int, int, int, int]) -> Frame | _Entries | _StandIn | None:
        """Decode the PackedForward frame ``_sniff`` found at position 0: the frame or its
        job, None when more bytes are needed, or _SLOW when the skimmer must take it."""
        count, tag_start, tag_end, blob_start, blob_end = head
        if blob_end > self._max_frame:
            raise _too_large(f"a frame declares at least {blob_end} bytes, over the limit of {self._max_frame}")
        if blob_end > n:
            return None
        option: Any = None
        end = blob_end
        if count == 3:
            if end >= n:
                return None
            if buf[end] == 0xC0:
                end += 1
            else:
                avail = min(n - end, MAX_OPTION_BYTES)
                opt = _new_unpacker(avail)
                with memoryview(buf) as view:
                    opt.feed(view[end : end + avail])
                try:
                    option = opt.unpack()
                except msgpack.OutOfData:
                    return None if n - end < MAX_OPTION_BYTES else _SLOW
                except _MSGPACK_ERRORS:
                    return _SLOW
                end += opt.tell()
                if end > self._max_frame:
                    return _SLOW
        try:
            tag = buf[tag_start:tag_end].decode("utf-8")
        except UnicodeDecodeError:
            return _SLOW
        with memoryview(buf) as view:
            blob = view[blob_start:blob_end].tobytes()
        del buf[:end]
        return self._packed(tag, [tag, blob, option] if count == 3 else [tag, blob])

    # -- one frame ------------------------------------------------------------------------

    def _slow(self, data: bytes) -> Frame | _Entries:
        """A complete frame that is not for the fast path: unpacked whole when small,
        else element by element, so that no element is built past its own limit."""
        if len(data) <= self._small:
            try:
                return self._frame(_unpackb(data))
            except _MSGPACK_ERRORS:
                pass  # e.g. an unhashable key: the element path says which element
        try:
            obj = self._elements(data)
        except _MSGPACK_ERRORS as exc:
            return _refused(None, "bad_frame", f"frame is not valid msgpack: {clip(repr(exc))}")
        return self._frame(obj)

    def _elements(self, data: bytes) -> Any:
        """The frame as ``_frame`` takes it, built element by element: elements that
        would be refused anyway are replaced by stand-ins that are refused the same way,
        without building them; a Forward frame's entries stay bytes (an _Region)."""
        head = _header(data, 0, len(data))
        if head is None or head[0] != _ARRAY or not 2 <= head[1] <= 4:
            # Not a frame: only its tag (for the refusal's log line) is worth building.
            return _NOT_A_FRAME if head is None or head[0] != _ARRAY else _Unbuilt(self._tag_only(data, head))
        _, count, p = head
        walk = msgpack.Unpacker(max_buffer_size=len(data))
        walk.feed(data)
        walk.read_array_header()
        bounds = [p]
        for _ in range(count):
            walk.skip()
            bounds.append(walk.tell())
        parts = [memoryview(data)[bounds[i] : bounds[i + 1]] for i in range(count)]
        obj: list[Any] = [_unpackb(parts[0]) if _kind(data[bounds[0]]) == _RAW else _NOT_A_TAG]
        second = _header(data, bounds[1], bounds[2])
        assert second is not None
        kind, size, start = second
        if kind == _RAW:
            obj.append(data[start : start + size])
        elif kind == _ARRAY:
            obj.append(_Region(data[start : bounds[2]], size))
        else:
            # Message: [tag, time, record, option]. Times are a few bytes (Fluent Bit's
            # [time, metadata] a few more); the record is built only within the limit.
            obj.append(_unpackb(parts[1]) if len(parts[1]) <= self._max_record else _NOT_A_TIME)
            if count > 2:
                record = parts[2]
                if _kind(data[bounds[2]]) != _MAP:
                    obj.append(_NOT_A_RECORD)
                elif len(record) > self._max_record:
                    obj.append(_TOO_LARGE)
                else:
                    obj.append(_unpackb(record))
        for i in range(len(obj), count):
            obj.append(_unpackb(parts[i]) if len(parts[i]) <= MAX_OPTION_BYTES else _NOT_AN_OPTION)
        return obj

    def _tag_only(self, data: bytes, head: tuple[int, int, int]) -> Any:
        p = head[2]
        if head[1] == 0 or _kind(data[p]) != _RAW:
            return None
        tag = _header(data, p, len(data))
        if tag is None:
            return None
        end = tag[2] + tag[1]
        return _unpackb(data[p:end]) if end <= len(data) else None

    def _frame(self, obj: Any) -> Frame | _Entries:
        if type(obj) is _Unbuilt:
            return _refused([obj.tag], "bad_frame", "frame is not an array of 2 to 4 elements")
        if type(obj) is not list or not 2 <= len(obj) <= 4:
            return _refused(obj, "bad_frame", "frame is not an array of 2 to 4 elements")
        tag = obj[0]
        if type(tag) is not str or not _valid_text(tag):
            return _refused(obj, "bad_tag", "tag is not a UTF-8 string")
        second = obj[1]
        kind = type(second)
        if kind is str or kind is bytes:
            return self._packed(tag, obj)
        if kind is list or kind is _Region:
            if len(obj) > 3:
                return _refused(obj, "bad_frame", "Forward frame has more than 3 elements")
            option = _option(obj, 2)
            if option is None:
                return _refused(obj, "bad_option", "option is neither nil nor a map of at most 64 KiB")
            return _Entries(self, tag, option, "forward", second)
        if len(obj) < 3:
            return _refused(obj, "bad_frame", "Message frame has fewer than 3 elements")
        option = _option(obj, 3)
        if option is None:
            return _refused(obj, "bad_option", "option is neither nil nor a map of at most 64 KiB")
        errors: list[str] = []
        signal = _signal(option)
        if signal != 0:
            errors.append("not_logs")
            return _built(tag, [], errors, "message", option)
        events = []
        event = self._event(second, obj[2], errors)
        if event is not None:
            events.append(event)
        return self._normalised(tag, events, errors, "message", option)

    def _packed(self, tag: str, obj: list[Any]) -> Frame | _Entries:
        if len(obj) > 3:
            return _refused(obj, "bad_frame", "PackedForward frame has more than 3 elements")
        option = _option(obj, 2)
        if option is None:
            return _refused(obj, "bad_option", "option is neither nil nor a map of at most 64 KiB")
        blob = obj[1]
        if type(blob) is str:
            blob = blob.encode("utf-8", "surrogateescape")
        compressed = option.get("compressed")
        if compressed is not None and compressed != "text":
            if compressed != "gzip":
                return _refused(obj, "unsupported_compression", f"compression {clip(repr(compressed))} is not supported")
            return _Entries(self, tag, option, _COMPRESSED, _Inflater(blob, self._max_decompressed))
        return _Entries(self, tag, option, _PACKED, blob)

    def _normalised(self, tag: str, events: list[Event], errors: list[str], mode: str, option: dict[Any, Any]) -> Frame:
        normalise = self._normalise
        if normalise is None:
            return _built(tag, events, errors, mode, option)
        items = []
        frame = self._frame_key(option)
        for index, (time_ns, record) in enumerate(events):
            try:
                items.append(normalise(tag, time_ns, record, frame, index))
            except DecodeError as exc:
                errors.append(exc.reason)
            except (TypeError, UnicodeEncodeError):
                errors.append("bad_encoding")
        return _built(tag, [], errors, mode, option, items)

    def _frame_key(self, option: dict[Any, Any]) -> bytes:
        chunk = option.get("chunk")
        if type(chunk) is bytes:
            return b"c" + chunk
        if type(chunk) is str:
            return b"c" + chunk.encode("utf-8", "surrogateescape")
        self._frames += 1
        return b"n" + self._nonce + self._frames.to_bytes(8, "big")

    def _event(self, t: Any, record: Any, errors: list[str]) -> Event | None:
        if type(record) is not dict:
            errors.append("record_too_large" if record is _TOO_LARGE else "bad_record")
            return None
        if type(t) is list:  # Fluent Bit: [[time, metadata], record]
            ns = _time_ns(t[0]) if len(t) == 2 and (t[1] is None or type(t[1]) is dict) else -1
        else:
            ns = _time_ns(t)
        if ns < 0:
            errors.append("bad_time")
            return None
        if ns == 0:
            ns = self._clock_ns()
        return _new_event(Event, (ns, record))


class _Entries:
    """The entries of one Forward, PackedForward or CompressedPackedForward frame,
    decoded a slice at a time (``run``). The source is a list of unpacked entries (a
    small Forward frame), a blob of concatenated entries (PackedForward, or a big
    Forward frame's _Region), or an _Inflater (CompressedPackedForward)."""

    def __init__(self, dec: ForwardDecoder, tag: str, option: dict[Any, Any], mode: str, source: Any) -> None:
        self._dec = dec
        self._tag = tag
        self._option = option
        self._mode = mode
        self._signal = _signal(option)
        self._normalise = dec._normalise if self._signal == 0 else None
        # Ids of the records: this frame's key and each entry's index in it (self._count - 1).
        self._frame = dec._frame_key(option) if self._normalise is not None else b""
        self._max_record = dec._max_record
        self._errors: list[str] = []
        self._out: list[Any] = []
        self._count = 0
        self._cost = 0  # estimated bytes of the records kept so far
        self._held = 0  # bytes of the source and its unpackers
        self._list: list[Any] | None = None
        self._pos = 0
        self._inflater: _Inflater | None = None
        self._unpacker: msgpack.Unpacker | None = None
        self._skim: msgpack.Unpacker | None = None
        self._window = bytearray()  # inflated bytes not yet taken as entries
        self._whole: bytes | None = None  # or, for a plain blob, the blob
        self._wstart = 0  # stream offset of self._window[0]
        self._estart = 0  # stream offset where the next entry starts
        self._fed = 0  # bytes fed to the skimmer (or the unpacker)
        self._dropping = False  # the entry in progress is over max_record: only skim it
        self._done = False
        if type(source) is list:
            self._list = source
        elif type(source) is _Inflater:
            self._inflater = source
            self._held = len(source.data)
            self._skim = msgpack.Unpacker(max_buffer_size=dec._max_decompressed + _INFLATE_PIECE)
        else:
            blob = source.data if type(source) is _Region else source
            self._held = len(blob)
            if len(blob) <= dec._skim_over:
                self._unpacker = _new_unpacker(max(len(blob), 1))
                self._unpacker.feed(blob)
                self._fed = len(blob)
            else:
                self._skim = msgpack.Unpacker(max_buffer_size=len(blob))
                self._skim.feed(blob)
                self._whole = blob  # the window is the blob itself: no copy
                self._fed = len(blob)
            self._done = not blob

    @property
    def held_bytes(self) -> int:
        held = self._held + self._cost + len(self._window)
        if self._skim is not None:
            held += self._fed - self._skim.tell()
        elif self._unpacker is not None:
            held += self._fed - self._unpacker.tell()
        return held

    def run(self, units: int) -> tuple[Frame | None, int]:
        """Decode up to about ``units`` entries; (the frame once complete, units used)."""
        used = 0
        try:
            if self._list is not None:
                used = self._from_list(units)
            elif self._skim is not None:
                used = self._skimmed(units)
            elif self._unpacker is not None and not self._done:
                used = self._unpacked(units)
            else:
                self._done = True
        except DecodeError as exc:
            return _refused([self._tag], exc.reason, str(exc)), used + 1
        if not self._done:
            return None, used
        if self._normalise is not None:
            return _built(self._tag, [], self._errors, self._mode, self._option, self._out), used
        return _built(self._tag, self._out, self._errors, self._mode, self._option), used

    def _counted(self) -> None:
        self._count += 1
        if self._count > self._dec._max_records:
            raise DecodeError(
                f"a frame holds more than {self._dec._max_records} entries",
                reason="too_many_records",
                fatal=False,
            )

    def _entry(self, entry: Any, size: int) -> None:
        """One decoded ``[time, record]`` entry of ``size`` msgpack bytes."""
        if self._signal != 0:
            self._errors.append("not_logs")
            return
        if type(entry) is not list or len(entry) != 2:
            self._errors.append("bad_entry")
            return
        t, record = entry
        # The common case inline: [EventTime, record].
        if type(t) is tuple and type(record) is dict and t[0] == 0 and len(t[1]) == 8:
            sec, nsec = _SEC_NSEC_UNPACK(t[1])
            ns = sec * _NS + nsec if sec and nsec < _NS else -1
        else:
            ns = -1
        if ns < 0:
            event = self._dec._event(t, record, self._errors)
            if event is None:
                return
            ns = event[0]
        normalise = self._normalise
        if normalise is None:
            self._out.append(_new_event(Event, (ns, record)))
        else:
            try:
                self._out.append(normalise(self._tag, ns, record, self._frame, self._count - 1))
            except DecodeError as exc:
                self._errors.append(exc.reason)
                return
            except (TypeError, UnicodeEncodeError):
                self._errors.append("bad_encoding")
                return
        self._cost += size + RECORD_COST_BYTES

    def _from_list(self, units: int) -> int:
        entries = self._list
        assert entries is not None
        stop = min(len(entries), self._pos + units)
        # A small frame's entries (64 KiB at most in all): their sizes are not known
        # one by one; the server counts the records' real size once the frame is done.
        for i in range(self._pos, stop):
            self._counted()
            self._entry(entries[i], 0)
        used = stop - self._pos
        self._pos = stop
        self._done = stop == len(entries)
        return used

    def _unpacked(self, units: int) -> int:
        """A blob within max_record_bytes, fed whole to one unpacker: its entries in
        one C loop. The hot path (what Fluentd, Fluent Bit and tail send): what
        ``_entry`` does is written out here, with everything in locals."""
        unpacker = self._unpacker
        assert unpacker is not None
        if self._signal != 0:
            return self._unpacked_generic(units)
        tell = unpacker.tell
        errors = self._errors
        append = self._out.append
        errors_append = errors.append
        event_of = self._dec._event
        normalise = self._normalise
        tag = self._tag
        frame = self._frame
        base = self._count - 1  # the index of the entry in hand is base + used
        left = min(units, self._dec._max_records - self._count + 1)
        used = kept = 0
        first = end = tell()
        try:
            for entry in unpacker:
                end = tell()
                used += 1
                if used >= left:
                    if self._count + used > self._dec._max_records:
                        raise DecodeError(
                            f"a frame holds more than {self._dec._max_records} entries",
                            reason="too_many_records",
                            fatal=False,
                        )
                if type(entry) is not list or len(entry) != 2:
                    errors_append("bad_entry")
                else:
                    t, record = entry
                    # The common case inline: [EventTime, record].
                    if type(t) is tuple and type(record) is dict and t[0] == 0 and len(t[1]) == 8:
                        sec, nsec = _SEC_NSEC_UNPACK(t[1])
                        ns = sec * _NS + nsec if sec and nsec < _NS else -1
                    else:
                        ns = -1
                    if ns < 0:
                        event = event_of(t, record, errors)
                        ns = -1 if event is None else event[0]
                    if ns >= 0:
                        if normalise is None:
                            append(_new_event(Event, (ns, record)))
                            kept += 1
                        else:
                            try:
                                append(normalise(tag, ns, record, frame, base + used))
                                kept += 1
                            except DecodeError as exc:
                                errors_append(exc.reason)
                            except (TypeError, UnicodeEncodeError):
                                errors_append("bad_encoding")
                if used >= units:
                    return used
        except _MSGPACK_ERRORS:
            errors_append("bad_blob")
        else:
            # tell() counts the bytes of a partial entry too: compare the last end.
            if end != self._fed:  # trailing bytes that are no complete entry
                errors_append("bad_blob")
        finally:
            self._count += used
            self._cost += end - first + kept * RECORD_COST_BYTES
        self._done = True
        self._unpacker = None
        return used

    def _unpacked_generic(self, units: int) -> int:
        unpacker = self._unpacker
        assert unpacker is not None
        tell = unpacker.tell
        used = 0
        start = tell()
        try:
            for entry in unpacker:
                end = tell()
                self._counted()
                self._entry(entry, end - start)
                start = end
                used += 1
                if used >= units:
                    return used
        except _MSGPACK_ERRORS:
            self._errors.append("bad_blob")
        else:
            if start != self._fed:  # trailing bytes that are no complete entry
                self._errors.append("bad_blob")
        self._done = True
        self._unpacker = None
        return used

    def _skimmed(self, units: int) -> int:
        """A big blob or an inflated stream: each entry is skimmed before it is built,
        and one over max_record_bytes is skipped (``record_too_large``) unbuilt."""
        skim = self._skim
        assert skim is not None
        used = 0
        while used < units:
            try:
                skim.skip()
            except msgpack.OutOfData:
                if self._inflater is None or not self._inflate():
                    if self._fed > self._estart:  # trailing bytes that are no complete entry
                        self._errors.append("bad_blob")
                    break
                used += _PIECE_UNITS
                continue
            except _MSGPACK_ERRORS:
                self._errors.append("bad_blob")
                break
            end = skim.tell()
            size = end - self._estart
            self._counted()
            used += 1
            if self._dropping or size > self._max_record:
                self._errors.append("record_too_large")
                self._dropping = False
            else:
                lo = self._estart - self._wstart
                try:
                    with memoryview(self._window if self._whole is None else self._whole) as view:
                        entry = _unpackb(view[lo : lo + size])
                except _MSGPACK_ERRORS:
                    self._errors.append("bad_blob")
                    break
                self._entry(entry, size)
            self._estart = end
            if self._whole is None and end - self._wstart >= _INFLATE_PIECE:
                del self._window[: end - self._wstart]
                self._wstart = end
        else:
            return used
        self._done = True
        self._skim = None
        self._window = bytearray()
        self._whole = None
        return used

    def _inflate(self) -> bool:
        """Feed the skimmer the next inflated piece; False at the end of the data."""
        inflater = self._inflater
        assert inflater is not None and self._skim is not None
        piece = inflater.read(_INFLATE_PIECE)
        if not piece:
            return False
        self._skim.feed(piece)
        if self._dropping or self._fed - self._estart > self._max_record:
            # The entry in progress is over the limit: keep only the newest piece,
            # where it will end.
            self._dropping = True
            self._window = bytearray(piece)
            self._wstart = self._fed
        else:
            self._window += piece
        self._fed += len(piece)
        return True


class _Region:
    """The entries of a big Forward frame, as bytes: ``count`` entries back to back."""

    __slots__ = ("data", "count")

    def __init__(self, data: bytes, count: int) -> None:
        self.data = data
        self.count = count


class _Unbuilt:
    """A big frame that is not an array of 2 to 4 elements: only its tag was built."""

    __slots__ = ("tag",)

    def __init__(self, tag: Any) -> None:
        self.tag = tag


class _StandIn:
    """An element left unbuilt; ``_frame`` refuses it as it would the element."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}>"


_SLOW = _StandIn("slow path")
_NOT_A_FRAME = _StandIn("not a frame")
_NOT_A_TAG = _StandIn("not a tag")
_NOT_A_TIME = _StandIn("not a time")
_NOT_A_RECORD = _StandIn("not a record")
_NOT_AN_OPTION = _StandIn("not an option")
_TOO_LARGE = _StandIn("record over max_record_bytes")


class _Inflater:
    """Every concatenated gzip member of ``data``, inflated a piece at a time, refusing
    to produce more than ``max_bytes`` (DecodeError ``decompressed_too_large``;
    ``bad_gzip`` if corrupt or truncated)."""

    def __init__(self, data: bytes, max_bytes: int) -> None:
        self.data = data
        self._max = max_bytes
        self._total = 0
        self._rest = data
        self._member: Any = None  # zlib decompressobj of the member being inflated
        self._pending = b""

    def read(self, size: int) -> bytes:
        """Up to ``size`` inflated bytes; b"" once every member was read."""
        while True:
            member = self._member
            if member is None:
                if not self._rest:
                    return b""
                member = self._member = zlib.decompressobj(wbits=31)
                self._pending, self._rest = self._rest, b""
            try:
                piece = member.decompress(self._pending, min(size, self._max - self._total + 1))
            except zlib.error as exc:
                raise DecodeError(f"corrupt gzip data: {exc}", reason="bad_gzip", fatal=False) from exc
            progressed = piece or len(member.unconsumed_tail) != len(self._pending)
            self._pending = member.unconsumed_tail
            self._total += len(piece)
            if self._total > self._max:
                raise DecodeError(
                    f"decompressed data exceeds the limit of {self._max} bytes",
                    reason="decompressed_too_large",
                    fatal=False,
                )
            if member.eof:
                self._rest = member.unused_data
                self._member = None
            elif not progressed or (not piece and not self._pending):
                raise DecodeError("truncated gzip data", reason="bad_gzip", fatal=False)
            if piece:
                return piece


_MAX_SECONDS = _MAX_NS // _NS


def _time_ns(t: Any) -> int:
    """Nanoseconds for an EventTime, int or float seconds; 0 for "now"; -1 if invalid."""
    kind = type(t)
    if kind is tuple:  # ext value from _ext_hook
        if t[0] != 0 or len(t[1]) != 8:
            return -1
        sec, nsec = _SEC_NSEC_UNPACK(t[1])
        if nsec >= _NS:
            return -1
        return 0 if sec == 0 else sec * _NS + nsec
    if kind is int:
        return t * _NS if 0 <= t <= _MAX_SECONDS else -1
    if kind is float:
        if not (math.isfinite(t) and 0 <= t <= _MAX_SECONDS):
            return -1
        # A float64 epoch has ~0.2 µs resolution: round to the microsecond.
        return round(t * 1_000_000) * 1000
    if kind is _TIMESTAMP:
        ns = t.to_unix_nano()
        return ns if 0 <= ns <= _MAX_NS else -1
    return -1


# _header kinds.
_RAW = 1  # str or bin: size is a byte length
_ARRAY = 2  # size is an element count
_MAP = 3  # size is a pair count
_OTHER = 0


def _kind(first: int) -> int:
    if 0xA0 <= first <= 0xBF or first in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6):
        return _RAW
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        return _ARRAY
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return _MAP
    return _OTHER


# First byte → (kind, bytes of the length field) of the headers with a length field.
_SIZED = {
    0xD9: (_RAW, 1), 0xDA: (_RAW, 2), 0xDB: (_RAW, 4),
    0xC4: (_RAW, 1), 0xC5: (_RAW, 2), 0xC6: (_RAW, 4),
    0xDC: (_ARRAY, 2), 0xDD: (_ARRAY, 4),
    0xDE: (_MAP, 2), 0xDF: (_MAP, 4),
}


def _header(buf: bytes | bytearray, p: int, n: int) -> tuple[int, int, int] | None:
    """(kind, size, position after the header) of the msgpack header at ``p``; None
    when the buffer ends inside it (or at ``p``). Kinds other than str, bin, array
    and map come back as (_OTHER, 0, p)."""
    if p >= n:
        return None
    first = buf[p]
    if 0xA0 <= first <= 0xBF:
        return _RAW, first & 0x1F, p + 1
    if 0x90 <= first <= 0x9F:
        return _ARRAY, first & 0x0F, p + 1
    if 0x80 <= first <= 0x8F:
        return _MAP, first & 0x0F, p + 1
    sized = _SIZED.get(first)
    if sized is None:
        return _OTHER, 0, p
    kind, width = sized
    if p + 1 + width > n:
        return None
    if width == 1:
        size = buf[p + 1]
    elif width == 2:
        size = _U16(buf, p + 1)[0]
    else:
        size = _U32(buf, p + 1)[0]
    return kind, size, p + 1 + width


# First byte → size of the scalars a time can be (ints, floats, nil, bools, fixext8,
# ext8); fixints are one byte.
_SCALARS = {
    0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9,
    0xCA: 5, 0xCB: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18,
}


def _scalar_size(buf: bytes | bytearray, p: int, n: int) -> int | None:
    """The size of the scalar at ``p`` (a fixint, int, float, nil, bool or fixext, or an
    ext8); None for anything else, or when the buffer ends first."""
    if p >= n:
        return None
    first = buf[p]
    if first <= 0x7F or first >= 0xE0:
        return 1
    if first == 0xC7:  # ext8: length byte, type byte, data
        return 3 + buf[p + 1] if p + 1 < n else None
    return _SCALARS.get(first)


def _sniff(buf: bytearray, pos: int, n: int) -> tuple[int, int, int, int, int] | int | None:
    """The layout of the PackedForward frame header at ``pos``: (array length, tag start,
    tag end, blob start, blob end); _NEED_MORE when the buffer ends inside the header;
    None when this is not a frame the fast path takes (other modes, a tag that is not a
    fixstr/str8/str16, a third element that is not str or bin)."""
    if pos >= n:
        return None
    first = buf[pos]
    if first != 0x92 and first != 0x93:
        return None
    p = pos + 1
    if p >= n:
        return _NEED_MORE
    b = buf[p]
    if 0xA0 <= b <= 0xBF:
        size = b & 0x1F
        p += 1
    elif b == 0xD9:
        if p + 2 > n:
            return _NEED_MORE
        size = buf[p + 1]
        p += 2
    elif b == 0xDA:
        if p + 3 > n:
            return _NEED_MORE
        size = _U16(buf, p + 1)[0]
        p += 3
    else:
        return None
    tag_start = p
    p += size
    tag_end = p
    if p >= n:
        return _NEED_MORE
    b = buf[p]
    if 0xA0 <= b <= 0xBF:
        size = b & 0x1F
        p += 1
    elif b == 0xD9 or b == 0xC4:
        if p + 2 > n:
            return _NEED_MORE
        size = buf[p + 1]
        p += 2
    elif b == 0xDA or b == 0xC5:
        if p + 3 > n:
            return _NEED_MORE
        size = _U16(buf, p + 1)[0]
        p += 3
    elif b == 0xDB or b == 0xC6:
        if p + 5 > n:
            return _NEED_MORE
        size = _U32(buf, p + 1)[0]
        p += 5
    else:
        return None
    return first & 0x0F, tag_start, tag_end, p, p + size


def _valid_text(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _option(obj: list[Any], index: int) -> dict[Any, Any] | None:
    """The frame's option map ({} when absent or nil), or None when it is malformed."""
    if len(obj) <= index:
        return {}
    option = obj[index]
    if option is None:
        return {}
    return option if type(option) is dict else None


def _signal(option: dict[Any, Any]) -> int:
    signal = option.get("fluent_signal", 0)
    return signal if type(signal) is int else 0


def _built(
    tag: str,
    events: list[Event],
    errors: list[str],
    mode: str,
    option: dict[Any, Any],
    items: Sequence[Any] = (),
) -> Frame:
    chunk = option.get("chunk")
    if chunk is not None and type(chunk) is not str and type(chunk) is not bytes:
        chunk = None  # an id we cannot echo is no id
    return Frame(tag, events, chunk, errors, mode, _signal(option), None, items, option.get("report_rejected") is True)


def _refused(obj: Any, reason: str, message: str) -> Frame:
    tag = ""
    if type(obj) is list and obj and type(obj[0]) is str and _valid_text(obj[0]):
        tag = obj[0]
    return Frame(tag, [], None, [], "invalid", 0, DecodeError(message, reason=reason, fatal=False))


def _too_large(message: str) -> DecodeError:
    return DecodeError(message, reason="chunk_too_large", fatal=True)


def clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: client-sent values
    in messages and log lines stay bounded."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} chars)"
