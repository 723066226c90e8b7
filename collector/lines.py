"""Access-log *lines* → record dicts, and log times → exact nanoseconds.

Standard library only: ``shadowreplay tail`` runs from a zipapp with a bare ``python3``
and imports this module, and so does the collector (``formats.py``) when a record
carries a raw line (Fluent Bit / Fluentd tail without a parser).

Every parser returns the record under nginx's own variable names where the format has
no names of its own, so one field map (``collector.fields``) serves every format:

* ``nginx_json``: the JSON object as written (``log_format ... escape=json``);
* ``ltsv``: ``label:value`` pairs separated by tabs, labels kept as written;
* ``combined``: nginx/Apache combined (and common) → ``remote_addr``, ``remote_user``,
  ``time_local``, ``request``, ``status``, ``body_bytes_sent``, ``http_referer``,
  ``http_user_agent``.

Parsers raise ``LineError`` (a ValueError) with a short ``reason``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

NS = 1_000_000_000
# The field ``shadowreplay tail`` adds to each record it ships: the line's own id (file
# identity + offset), so two identical lines keep two ids and a re-sent line keeps its id.
LINE_ID_FIELD = "shadowreplay_line_id"


class LineError(ValueError):
    """A line (or a time value) that cannot be read; ``reason`` is a metric label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- lines --------------------------------------------------------------------------------


def parse_json_line(line: str) -> dict[str, Any]:
    r"""One nginx ``escape=json`` line → its object.

    A line written by a JSON-looking ``log_format`` *without* ``escape=json`` holds
    nginx's default escapes (``\x22`` for ``"``, ``\xE2`` for a non-ASCII byte), which
    JSON does not know: such a line is read with those escapes undone."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        if "\\x" not in line:
            raise LineError(f"not JSON: {exc}", "bad_json") from exc
        try:
            obj = json.loads(_json_from_nginx_default(line))
        except ValueError:
            raise LineError(f"not JSON: {exc}", "bad_json") from exc
    if not isinstance(obj, dict):
        raise LineError("JSON line is not an object", "bad_json")
    return obj


_NGINX_HEX = re.compile(rb"\\x([0-9A-F]{2})")


def _json_from_nginx_default(line: str) -> str:
    r"""JSON text for a line nginx wrote with its default escaping (every ``"``, ``\``,
    control byte and byte >= 0x7F as ``\xHH``, uppercase): ``"`` and ``\`` become JSON's
    ``\"`` and ``\\``, control bytes ``\u00HH``, other bytes themselves."""

    def one(m: re.Match[bytes]) -> bytes:
        byte = int(m.group(1), 16)
        if byte == 0x22 or byte == 0x5C:
            return b"\\" + bytes((byte,))
        if byte < 0x20 or byte == 0x7F:
            return b"\\u%04x" % byte
        return bytes((byte,))

    raw = _NGINX_HEX.sub(one, line.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


# -- escapes in combined and LTSV values ---------------------------------------------------
#
# What the servers write (and so what ``unescape`` undoes):
#
# * nginx, ``escape=default`` (the default): ``"``, ``\``, bytes below 0x20 and bytes from
#   0x7F up as ``\xHH`` (uppercase hex); nothing else. A ``\`` in such a log always starts
#   an escape.
# * nginx, ``escape=json``: ``\"``, ``\\``, ``\n``, ``\r``, ``\t``, ``\b``, ``\f``, other
#   bytes below 0x20 as ``\u00XX``; bytes from 0x80 up are written as they are.
# * nginx, ``escape=none``: nothing is escaped (``ESCAPES_KEEP``: backslashes are data).
# * Apache (mod_log_config, ``ap_escape_logitem``) in ``%r``, ``%{...}i``, ``%u`` and the
#   like: ``\"``, ``\\``, ``\b``, ``\n``, ``\r``, ``\t``, ``\v``, other control bytes and
#   bytes from 0x7F up as ``\xhh`` (lowercase hex).
#
# None of the three escaping servers writes a bare backslash, so one decoder reads them
# all: every escape above is undone to the byte (or UTF-8 bytes) it stands for, an
# unknown escape (``\q``) is kept as written.

ESCAPES_DECODE = "decode"
ESCAPES_KEEP = "keep"
ESCAPES = (ESCAPES_DECODE, ESCAPES_KEEP)

# \uXXXX, or a surrogate pair \uD8XX\uDCXX as one; \xHH; any other escaped character.
_ESCAPE = re.compile(
    r"\\(x[0-9A-Fa-f]{2}|u[dD][89abAB][0-9A-Fa-f]{2}\\u[dD][c-fC-F][0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|.)", re.DOTALL
)
_SIMPLE_ESCAPES = {
    '"': b'"', "\\": b"\\", "/": b"/", "b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v",
}


def unescape(value: str) -> str:
    """``value`` (as logged by nginx or Apache) with its escapes undone. Bytes that are not
    UTF-8 come back surrogate-escaped (see shadowreplay/contract/record.py), so nothing is lost."""
    if "\\" not in value:
        return value
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(value):
        out += value[pos : m.start()].encode("utf-8", "surrogateescape")
        code = m.group(1)
        first = code[0]
        if first == "x" and len(code) == 3:
            out.append(int(code[1:], 16))
        elif first == "u" and len(code) >= 5:
            out += _json_unicode(code)
        else:
            out += _SIMPLE_ESCAPES.get(code) or b"\\" + code.encode("utf-8", "surrogateescape")
        pos = m.end()
    out += value[pos:].encode("utf-8", "surrogateescape")
    return out.decode("utf-8", "surrogateescape")


def _json_unicode(code: str) -> bytes:
    r"""``u00e9`` or a surrogate pair ``ud83d\ude00`` → its UTF-8 bytes; a lone surrogate
    stands for no character and is kept as written."""
    first = int(code[1:5], 16)
    if len(code) == 11:
        second = int(code[7:11], 16)
        return chr(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)).encode("utf-8")
    if 0xD800 <= first < 0xE000:
        return b"\\" + code.encode("ascii")
    return chr(first).encode("utf-8")


def parse_ltsv_line(line: str, escapes: str = ESCAPES_DECODE) -> dict[str, Any]:
    """One LTSV line (``label:value<TAB>label:value``) → {label: value}, each value with
    its escapes undone (``escapes="keep"``: as written, for nginx ``escape=none``)."""
    decode = escapes != ESCAPES_KEEP
    out: dict[str, Any] = {}
    for part in line.rstrip("\r\n").split("\t"):
        label, sep, value = part.partition(":")
        if not sep or not label:
            if not part:
                continue
            raise LineError(f"LTSV field without a label: {part[:64]!r}", "bad_ltsv")
        out[label] = unescape(value) if decode and "\\" in value else value
    if not out:
        raise LineError("empty LTSV line", "bad_ltsv")
    return out


_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMBINED = re.compile(
    r"(\S+) (\S+) (\S+) \[([^\]]+)\] " + _QUOTED + r" (\d{3}|-) (\d+|-)(?: " + _QUOTED + " " + _QUOTED + r")?",
    re.DOTALL,
)


def parse_combined_line(line: str, escapes: str = ESCAPES_DECODE) -> dict[str, Any]:
    """One nginx/Apache combined or common log line → nginx-named fields, the quoted
    values with their escapes undone (``escapes="keep"``: as written)."""
    m = _COMBINED.match(line)
    if m is None:
        raise LineError(f"not a combined/common log line: {line[:64]!r}", "bad_combined")
    addr, _ident, user, when, request, status, size, referer, agent = m.groups()
    un = unescape if escapes != ESCAPES_KEEP else _same
    rec: dict[str, Any] = {
        "remote_addr": addr,
        "remote_user": un(user),
        "time_local": when,
        "request": un(request),
        "status": status,
        "body_bytes_sent": size,
    }
    if referer is not None:
        rec["http_referer"] = un(referer)
        rec["http_user_agent"] = un(agent)
    return rec


def _same(value: str) -> str:
    return value


#: The log formats (``collector.format``, ``tail --format``) and their line parsers.
LINE_PARSERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "nginx_json": parse_json_line,
    "ltsv": parse_ltsv_line,
    "combined": parse_combined_line,
}
FORMATS = tuple(LINE_PARSERS)


def line_parser(fmt: str, escapes: str = ESCAPES_DECODE) -> Callable[[str], dict[str, Any]]:
    """The parser of format ``fmt`` with ``escapes`` (``decode`` or ``keep``; JSON lines
    always decode, as JSON)."""
    if escapes not in ESCAPES:
        raise ValueError(f"escapes: {' or '.join(ESCAPES)}, got {escapes!r}")
    if fmt == "ltsv":
        return lambda line: parse_ltsv_line(line, escapes)
    if fmt == "combined":
        return lambda line: parse_combined_line(line, escapes)
    return LINE_PARSERS[fmt]


def split_request_line(line: str) -> tuple[str, str, str] | None:
    """``"GET /a?b HTTP/1.1"`` → (method, target, protocol); None when it is not one."""
    parts = line.split(" ")
    if len(parts) == 3:
        method, target, proto = parts
    elif len(parts) == 2:
        (method, target), proto = parts, ""
    elif len(parts) > 3 and parts[-1].startswith("HTTP/"):
        method, target, proto = parts[0], " ".join(parts[1:-1]), parts[-1]
    else:
        return None
    if not method or not target or not method.isascii() or not method.isalpha():
        return None
    return method, target, proto


# -- times --------------------------------------------------------------------------------


def _bad_time(value: Any) -> LineError:
    return LineError(f"unreadable time {value!r:.64}", "bad_time_field")


def parse_msec(value: Any) -> int:
    """nginx ``$msec`` (seconds with a fractional part) → exact integer nanoseconds."""
    kind = type(value)
    if kind is int and value >= 0:
        return int(value) * NS
    if kind is float:
        value = repr(value)
    elif kind is not str:
        raise _bad_time(value)
    sec, _dot, frac = value.partition(".")
    if sec.isdigit() and (not frac or frac.isdigit()) and sec.isascii() and frac.isascii():
        return int(sec) * NS + (int(frac[:9].ljust(9, "0")) if frac else 0)
    try:  # exponent forms and the like
        ns = int(Decimal(value) * NS)
    except (InvalidOperation, ValueError, OverflowError) as exc:  # OverflowError: infinity
        raise _bad_time(value) from exc
    if ns < 0:
        raise _bad_time(value)
    return ns


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _datetime_ns(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


def parse_iso8601(value: Any) -> int:
    """ISO 8601 (nginx ``$time_iso8601``) → integer nanoseconds; no offset means UTC."""
    if type(value) is not str:
        raise _bad_time(value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _bad_time(value) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ns = _datetime_ns(dt)
    # datetime keeps microseconds; take the nanoseconds beyond them from the text.
    dot = value.find(".", 17)
    if dot < 0:
        dot = value.find(",", 17)
    if dot >= 0:
        end = dot + 1
        while end < len(value) and value[end].isdigit():
            end += 1
        digits = value[dot + 7 : min(end, dot + 10)]
        if digits:
            ns += int(digits.ljust(3, "0"))
    return ns


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_CLF = re.compile(r"(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))? ([+-])(\d{2})(\d{2})")


def parse_clf(value: Any) -> int:
    """Common Log Format time (nginx ``$time_local``) ``10/Oct/2000:13:55:36 -0700`` →
    integer nanoseconds (Apache's ``%{msec_frac}``-style fractions are kept)."""
    if type(value) is not str:
        raise _bad_time(value)
    m = _CLF.fullmatch(value.strip("[]"))
    month = _MONTHS.get(m.group(2)) if m is not None else None
    if m is None or month is None:
        raise _bad_time(value)
    day, _mon, year, hh, mm, ss, frac, sign, oh, om = m.groups()
    offset = timedelta(hours=int(oh), minutes=int(om))
    try:
        dt = datetime(int(year), month, int(day), int(hh), int(mm), int(ss),
                      tzinfo=timezone(-offset if sign == "-" else offset))
    except ValueError as exc:
        raise _bad_time(value) from exc
    return _datetime_ns(dt) + (int(frac.ljust(9, "0")) if frac else 0)


def parse_time_auto(value: Any) -> int:
    """Any of the three: ``$msec`` (digits), CLF (``dd/Mon/yyyy:...``), ISO 8601."""
    kind = type(value)
    if kind is int or kind is float:
        return parse_msec(value)
    if kind is not str or not value:
        raise _bad_time(value)
    if value[0].isdigit() and len(value) > 2 and value[2] == "/":
        return parse_clf(value)
    if value[0] == "[":
        return parse_clf(value)
    if len(value) > 4 and value[4] == "-":
        return parse_iso8601(value)
    return parse_msec(value)


MAX_NS = 2**63 - 1  # a record's ts is a signed 64-bit integer (as on Kafka)


def _in_range(parse: Callable[[Any], int]) -> Callable[[Any], int]:
    def parse_in_range(value: Any) -> int:
        ns = parse(value)
        if not 0 <= ns <= MAX_NS:
            raise _bad_time(value)
        return ns

    return parse_in_range


TIME_PARSERS: dict[str, Callable[[Any], int]] = {
    "auto": _in_range(parse_time_auto),
    "msec": _in_range(parse_msec),
    "clf": _in_range(parse_clf),
    "iso8601": _in_range(parse_iso8601),
}
# Field names whose format is known without looking at the value.
TIME_FIELD_FORMATS = {"msec": "msec", "time_local": "clf", "time_iso8601": "iso8601"}
# Fields the tail looks for, in order, when no time field is configured.
TIME_FIELDS = ("msec", "time_iso8601", "time_local", "time")
