"""Fluentd forward protocol v1: a pure, incremental decoder (no asyncio, no sockets).

Feed it the bytes of one connection as they arrive; it returns the complete frames.
Errors come in three sizes, so bad input never costs good records around it:

* an invalid *event* (bad time, record not a map) is skipped and its reason listed in
  ``Frame.errors``; its neighbours are kept;
* an invalid *frame* that still leaves the stream framed (not an array, tag not a
  string, oversized, gzip bomb) comes back as a ``Frame`` whose ``error`` is a
  non-fatal ``DecodeError``: no events, and it must not be acknowledged;
* an unparseable *stream* raises a fatal ``DecodeError``: the connection must close.

Strings are unpacked with ``surrogateescape`` so a PackedForward blob sent as str32
(Fluentd's out_forward does) holding binary msgpack or gzip comes back byte for byte,
and so does a ``chunk`` id that is not valid UTF-8. Records may therefore hold str
values with lone surrogates where the client sent invalid UTF-8 (``orjson`` refuses
them; ``.encode("utf-8", "surrogateescape")`` restores the bytes), and msgpack ext
values inside records come back as ``(code, data)`` tuples.

Speed: a PackedForward frame (what Fluentd, Fluent Bit and ``shadowreplay tail`` send) is
recognised from its first bytes and its blob sliced straight out of the receive buffer,
instead of going through the stream unpacker (which would decode a str32 blob into a
``str`` and back); every other frame, and any PackedForward frame the fast path does not
take (oversized, odd encodings, a malformed option), goes through the stream unpacker,
with the same results. The blob's entries are unpacked in one C loop each.
"""

from __future__ import annotations

import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgpack

from shadowreplay.errors import DecodeError

DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
# Bytes handed to msgpack at a time; bounds the unpacker's buffer at max frame + this.
_FEED_SLICE = 256 * 1024
_NS = 1_000_000_000
_MAX_NS = 2**63 - 1

_TIMESTAMP = msgpack.Timestamp
_SEC_NSEC_UNPACK = struct.Struct(">II").unpack
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
# An option map bigger than this is left to the stream unpacker (it never is in practice).
_MAX_FAST_OPTION = 64 * 1024
# _sniff: the buffer ends inside a frame header; wait for more bytes.
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
    events skipped. ``error`` is set (and ``events`` empty) when the whole frame was
    refused; such a frame must not be acknowledged.

    With a decoder given ``normalise``, a log frame (``signal`` 0) carries in ``items``
    what ``normalise`` returned for each event, and no ``events``; an event it refused
    is skipped like any malformed event, its reason in ``errors``.
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


def _new_unpacker(max_buffer_size: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(
        raw=False,
        unicode_errors="surrogateescape",
        strict_map_key=False,
        use_list=True,
        ext_hook=_ext_hook,
        max_buffer_size=max_buffer_size,
    )


class ForwardDecoder:
    """Incremental decoder of one connection's forward-protocol byte stream."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
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
        self._clock_ns = clock_ns
        # Bytes received and not yet decoded, from a frame boundary on.
        self._buf = bytearray()
        # The stream unpacker, while it decodes frames the fast path does not take; it
        # was fed self._buf[self._ubase : self._ufed] (positions in the current buffer).
        self._unpacker: msgpack.Unpacker | None = None
        self._ubase = 0
        self._ufed = 0
        self._fatal: DecodeError | None = None

    @property
    def failed(self) -> DecodeError | None:
        """The fatal error that ended the stream, once there is one."""
        return self._fatal

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return every frame it completes. Raises a fatal DecodeError
        when the stream cannot be parsed (frames completed before the damage are
        returned first; the error is raised by the next call)."""
        if self._fatal is not None:
            raise self._fatal
        frames: list[Frame] = []
        buf = self._buf
        buf += data
        pos = self._drain(frames)
        if pos:
            del buf[:pos]  # O(1) at the front of a bytearray
            self._ubase -= pos
            self._ufed -= pos
        if self._fatal is not None:
            self._buf = bytearray()
            self._unpacker = None
            if not frames:
                raise self._fatal
        return frames

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

    def _drain(self, frames: list[Frame]) -> int:
        """Decode the complete frames at the start of the buffer; the bytes consumed."""
        buf = self._buf
        n = len(buf)
        pos = 0
        while pos < n:
            if self._unpacker is None:
                if buf[pos] == 0xC0:  # nil keep-alive
                    pos += 1
                    continue
                head = _sniff(buf, pos, n)
                if head == _NEED_MORE:
                    return pos
                if head is not None:
                    end = self._fast(buf, pos, n, head, frames)  # type: ignore[arg-type]
                    if end == _NEED_MORE:
                        return pos
                    if end:
                        pos = end
                        continue
                # Not a frame for the fast path: the stream unpacker takes it.
                self._unpacker = _new_unpacker(self._max_frame + _FEED_SLICE)
                self._ubase = self._ufed = pos
            end = self._slow(buf, pos, n, frames)
            if end < 0:
                return pos
            pos = end
            if self._unpacker is not None and (self._ufed == pos or _sniff(buf, pos, n) is not None):
                # Nothing fed beyond this frame, or the next one may suit the fast path.
                self._unpacker = None
        return pos

    def _fast(self, buf: bytearray, pos: int, n: int, head: tuple[int, int, int, int, int], frames: list[Frame]) -> int:
        """Decode the PackedForward frame ``_sniff`` found at ``pos``: the position after
        it, _NEED_MORE, or 0 when the stream unpacker must take it."""
        count, tag_start, tag_end, blob_start, blob_end = head
        if blob_end - pos > self._max_frame:
            return 0
        if blob_end > n:
            return _NEED_MORE
        option: Any = None
        end = blob_end
        if count == 3:
            if end >= n:
                return _NEED_MORE
            if buf[end] == 0xC0:
                end += 1
            else:
                avail = min(n - end, _MAX_FAST_OPTION)
                opt = _new_unpacker(avail)
                with memoryview(buf) as view:
                    opt.feed(view[end : end + avail])
                try:
                    option = opt.unpack()
                except msgpack.OutOfData:
                    return _NEED_MORE if n - end < _MAX_FAST_OPTION else 0
                except _MSGPACK_ERRORS:
                    return 0
                end += opt.tell()
                if end - pos > self._max_frame:
                    return 0
        try:
            tag = buf[tag_start:tag_end].decode("utf-8")
        except UnicodeDecodeError:
            return 0
        with memoryview(buf) as view:
            blob = view[blob_start:blob_end].tobytes()
        frames.append(self._packed(tag, [tag, blob, option] if count == 3 else [tag, blob]))
        return end

    def _slow(self, buf: bytearray, pos: int, n: int, frames: list[Frame]) -> int:
        """Decode one frame at ``pos`` with the stream unpacker: the position after it,
        or -1 when it needs more bytes or the stream failed (``self._fatal``)."""
        unpacker = self._unpacker
        assert unpacker is not None
        while True:
            try:
                obj = unpacker.unpack()
                break
            except msgpack.OutOfData:
                if self._ufed >= n:
                    return -1
            except _MSGPACK_ERRORS as exc:
                self._fatal = DecodeError(f"unparseable msgpack stream: {exc!r}", reason="msgpack", fatal=True)
                return -1
            piece = buf[self._ufed : self._ufed + _FEED_SLICE]
            try:
                unpacker.feed(piece)
            except msgpack.BufferFull:
                self._fatal = DecodeError(
                    f"a frame exceeds the limit of {self._max_frame} bytes",
                    reason="chunk_too_large",
                    fatal=True,
                )
                return -1
            self._ufed += len(piece)
        end = self._ubase + unpacker.tell()
        size = end - pos
        if obj is None:  # keep-alive
            return end
        if size > self._max_frame:
            frames.append(_refused(obj, "chunk_too_large", f"frame of {size} bytes exceeds the limit of {self._max_frame}"))
        else:
            frames.append(self._frame(obj))
        return end

    # -- one frame ----------------------------------------------------------------

    def _frame(self, obj: Any) -> Frame:
        if type(obj) is not list or not 2 <= len(obj) <= 4:
            return _refused(obj, "bad_frame", "frame is not an array of 2 to 4 elements")
        tag = obj[0]
        if type(tag) is not str or not _valid_text(tag):
            return _refused(obj, "bad_tag", "tag is not a UTF-8 string")
        second = obj[1]
        kind = type(second)
        if kind is str or kind is bytes:
            return self._packed(tag, obj)
        if kind is list:
            if len(obj) > 3:
                return _refused(obj, "bad_frame", "Forward frame has more than 3 elements")
            option = _option(obj, 2)
            if option is None:
                return _refused(obj, "bad_option", "option is neither nil nor a map")
            errors: list[str] = []
            events = self._entries(second, errors)
            return self._built(tag, events, errors, "forward", option)
        if len(obj) < 3:
            return _refused(obj, "bad_frame", "Message frame has fewer than 3 elements")
        option = _option(obj, 3)
        if option is None:
            return _refused(obj, "bad_option", "option is neither nil nor a map")
        errors = []
        events = []
        event = self._event(second, obj[2], errors)
        if event is not None:
            events.append(event)
        return self._built(tag, events, errors, "message", option)

    def _packed(self, tag: str, obj: list[Any]) -> Frame:
        if len(obj) > 3:
            return _refused(obj, "bad_frame", "PackedForward frame has more than 3 elements")
        option = _option(obj, 2)
        if option is None:
            return _refused(obj, "bad_option", "option is neither nil nor a map")
        blob = obj[1]
        if type(blob) is str:
            blob = blob.encode("utf-8", "surrogateescape")
        compressed = option.get("compressed")
        mode = _PACKED
        if compressed is not None and compressed != "text":
            decompress = _DECOMPRESSORS.get(compressed) if type(compressed) is str else None
            if decompress is None:
                return _refused(obj, "unsupported_compression", f"compression {compressed!r} is not supported")
            try:
                blob = decompress(blob, self._max_decompressed)
            except DecodeError as exc:
                return _refused(obj, exc.reason, str(exc))
            mode = _COMPRESSED
        errors: list[str] = []
        events: list[Any] = []
        normalise = self._normalise if _signal(option) == 0 else None
        frame = self._frame_key(option) if normalise is not None else b""
        index = -1
        if blob:
            inner = _new_unpacker(len(blob))
            inner.feed(blob)
            tell = inner.tell
            append = events.append
            event_of = self._event
            end = 0
            try:
                for entry in inner:
                    end = tell()
                    index += 1
                    if type(entry) is not list or len(entry) != 2:
                        errors.append("bad_entry")
                        continue
                    t, record = entry
                    # The common case inline: [EventTime, record].
                    if type(t) is tuple and type(record) is dict and t[0] == 0 and len(t[1]) == 8:
                        sec, nsec = _SEC_NSEC_UNPACK(t[1])
                        ns = sec * _NS + nsec if sec and nsec < _NS else -1
                    else:
                        ns = -1
                    if ns < 0:
                        event = event_of(t, record, errors)
                        if event is None:
                            continue
                        ns = event[0]
                    if normalise is None:
                        append(_new_event(Event, (ns, record)))
                        continue
                    try:
                        append(normalise(tag, ns, record, frame, index))
                    except DecodeError as exc:
                        errors.append(exc.reason)
                    except (TypeError, UnicodeEncodeError):
                        errors.append("bad_encoding")
            except _MSGPACK_ERRORS:
                errors.append("bad_blob")
            else:
                if end != len(blob):  # trailing bytes that are no complete entry
                    errors.append("bad_blob")
        if normalise is not None:
            return _built(tag, [], errors, mode, option, events)
        return _built(tag, events, errors, mode, option)

    def _built(self, tag: str, events: list[Event], errors: list[str], mode: str, option: dict[Any, Any]) -> Frame:
        normalise = self._normalise
        if normalise is None or _signal(option) != 0:
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

    def _entries(self, entries: list[Any], errors: list[str]) -> list[Event]:
        events: list[Event] = []
        entry_into = self._entry
        for entry in entries:
            entry_into(entry, events, errors)
        return events

    def _entry(self, entry: Any, events: list[Event], errors: list[str]) -> None:
        """Append the event of one ``[time, record]`` entry, or the reason it is skipped."""
        if type(entry) is list and len(entry) == 2:
            t, record = entry
            if type(record) is dict and type(t) is tuple and t[0] == 0 and len(t[1]) == 8:
                sec, nsec = _SEC_NSEC_UNPACK(t[1])  # the common case: EventTime
                if sec and nsec < _NS:
                    events.append(_new_event(Event, (sec * _NS + nsec, record)))
                    return
            event = self._event(t, record, errors)
            if event is not None:
                events.append(event)
        else:
            errors.append("bad_entry")

    def _event(self, t: Any, record: Any, errors: list[str]) -> Event | None:
        if type(record) is not dict:
            errors.append("bad_record")
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


def _sniff(buf: bytearray, pos: int, n: int) -> tuple[int, int, int, int, int] | int | None:
    """The layout of the PackedForward frame header at ``pos``: (array length, tag start,
    tag end, blob start, blob end); _NEED_MORE when the buffer ends inside the header;
    None when this is not a frame the fast path takes (other modes, a tag that is not a
    fixstr/str8/str16, a third element that is not str or bin)."""
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


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress every concatenated gzip member of ``data``, refusing to produce more
    than ``max_bytes`` (DecodeError ``decompressed_too_large``; ``bad_gzip`` if corrupt)."""
    out: list[bytes] = []
    total = 0
    rest = data
    while rest:
        d = zlib.decompressobj(wbits=31)
        pending = rest
        try:
            while not d.eof and total <= max_bytes:
                piece = d.decompress(pending, max_bytes - total + 1)
                pending = d.unconsumed_tail
                if not piece and not pending:
                    break  # input exhausted before the member's end
                total += len(piece)
                out.append(piece)
        except zlib.error as exc:
            raise DecodeError(f"corrupt gzip data: {exc}", reason="bad_gzip", fatal=False) from exc
        if total > max_bytes:
            raise DecodeError(
                f"decompressed data exceeds the limit of {max_bytes} bytes",
                reason="decompressed_too_large",
                fatal=False,
            )
        if not d.eof:
            raise DecodeError("truncated gzip data", reason="bad_gzip", fatal=False)
        rest = d.unused_data
    return b"".join(out)


# option.compressed value → decompressor(data, max_bytes). "text" means uncompressed.
_DECOMPRESSORS: dict[str, Callable[[bytes, int], bytes]] = {"gzip": gunzip}
