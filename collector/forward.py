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
"""

from __future__ import annotations

import math
import struct
import time
import zlib
from collections.abc import Callable
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
    """

    tag: str
    events: list[Event]
    chunk: bytes | str | None
    errors: list[str]
    mode: str
    signal: int = 0
    error: DecodeError | None = None


def encode_ack(chunk: bytes | str) -> bytes:
    """``{"ack": chunk}``, with the chunk in the msgpack type (str or bin) it came in."""
    if isinstance(chunk, str):
        # Raw str type, exact bytes even when the id was not valid UTF-8.
        return msgpack.packb({"ack": chunk.encode("utf-8", "surrogateescape")}, use_bin_type=False)
    return msgpack.packb({"ack": bytes(chunk)}, use_bin_type=True)


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
    ) -> None:
        self._max_frame = max_frame_bytes
        self._max_decompressed = max_decompressed_bytes
        self._clock_ns = clock_ns
        self._unpacker = _new_unpacker(max_frame_bytes + _FEED_SLICE)
        self._fed = 0
        self._pos = 0
        self._fatal: DecodeError | None = None

    @property
    def failed(self) -> DecodeError | None:
        """The fatal error that ended the stream, once there is one."""
        return self._fatal

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return self._fed - self._pos

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return every frame it completes. Raises a fatal DecodeError
        when the stream cannot be parsed (frames completed before the damage are
        returned first; the error is raised by the next call)."""
        if self._fatal is not None:
            raise self._fatal
        frames: list[Frame] = []
        view = memoryview(data)
        for start in range(0, len(view), _FEED_SLICE):
            piece = view[start : start + _FEED_SLICE]
            try:
                self._unpacker.feed(piece)
            except msgpack.BufferFull:
                self._fatal = DecodeError(
                    f"a frame exceeds the limit of {self._max_frame} bytes",
                    reason="chunk_too_large",
                    fatal=True,
                )
                break
            self._fed += len(piece)
            if not self._drain(frames):
                break
        if self._fatal is not None and not frames:
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

    def _drain(self, frames: list[Frame]) -> bool:
        unpacker = self._unpacker
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                return True
            except _MSGPACK_ERRORS as exc:
                self._fatal = DecodeError(f"unparseable msgpack stream: {exc!r}", reason="msgpack", fatal=True)
                return False
            end = unpacker.tell()
            size = end - self._pos
            self._pos = end
            if obj is None:  # keep-alive
                continue
            if size > self._max_frame:
                frames.append(
                    _refused(obj, "chunk_too_large", f"frame of {size} bytes exceeds the limit of {self._max_frame}")
                )
                continue
            frames.append(self._frame(obj))

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
            return _built(tag, events, errors, "forward", option)
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
        return _built(tag, events, errors, "message", option)

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
        events: list[Event] = []
        if blob:
            inner = _new_unpacker(len(blob))
            inner.feed(blob)
            end = 0
            try:
                for entry in inner:
                    end = inner.tell()
                    self._entry(entry, events, errors)
            except _MSGPACK_ERRORS:
                errors.append("bad_blob")
            else:
                if end != len(blob):  # trailing bytes that are no complete entry
                    errors.append("bad_blob")
        return _built(tag, events, errors, mode, option)

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


def _built(tag: str, events: list[Event], errors: list[str], mode: str, option: dict[Any, Any]) -> Frame:
    chunk = option.get("chunk")
    if chunk is not None and type(chunk) is not str and type(chunk) is not bytes:
        chunk = None  # an id we cannot echo is no id
    signal = option.get("fluent_signal", 0)
    if type(signal) is not int:
        signal = 0
    return Frame(tag, events, chunk, errors, mode, signal)


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
