"""The diff engine: pure functions from responses to field-level differences.

No I/O and no asyncio. ``left`` is always the reference (baseline, or the logged
production origin) and ``right`` the candidate.

Paths are JSONPath: ``$`` is the body root, ``$.items[3].price`` a nested field,
``$['a b']`` a key that is not an identifier. Non-body differences use ``status``,
``error`` and ``header:<name>``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from itertools import compress
from operator import ne
from typing import Any

import orjson

from shadowreplay.endpoint import endpoint_name
from shadowreplay.record import Origin, ReplayResult, Response

#: Every ``FieldDiff.kind`` this module produces (a bounded metric label set).
KINDS: tuple[str, ...] = (
    "value",
    "type",
    "missing",
    "extra",
    "array_length",
    "status",
    "body_digest",
    "error",
)

#: At most this many diffs are reported for one pair of responses.
MAX_DIFFS = 100
#: Strings (and JSON renderings of containers) longer than this are clipped in a FieldDiff.
MAX_VALUE_CHARS = 200

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTAINERS = (dict, list)


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One difference between the reference (``left``) and the candidate (``right``)."""

    path: str
    kind: str
    left: Any
    right: Any


@dataclass(frozen=True, slots=True)
class Verdict:
    """The comparison of one ReplayResult.

    ``reference`` is ``"baseline"`` or ``"origin"``. ``error`` is set when the result
    could not be compared at all (``no_candidate``, ``no_reference``); such a verdict
    has no diffs.
    """

    endpoint: str
    reference: str
    diffs: tuple[FieldDiff, ...] = ()
    error: str | None = None

    @property
    def diverged(self) -> bool:
        return bool(self.diffs)


# -- JSON ------------------------------------------------------------------------------


def diff_json(
    left: Any, right: Any, path: str = "$", *, max_diffs: int = MAX_DIFFS
) -> list[FieldDiff]:
    """Structural differences between two decoded JSON values, at most ``max_diffs``.

    Numbers compare by value (``1`` equals ``1.0``); a boolean is not a number. Arrays
    are compared element by element over their common prefix, plus one
    ``array_length`` diff when the lengths differ.
    """
    out: list[FieldDiff] = []
    if not _same(left, right):
        _diff(left, right, path, out, max_diffs)
    return out[:max_diffs]


def _same(left: Any, right: Any) -> bool:
    """A fast, exact equality test for two JSON values (C speed for whole subtrees).

    Python's ``==`` alone would equate ``true`` with ``1``; canonical orjson text tells
    them apart. It also tells ``1`` from ``1.0``, which only costs a walk.
    """
    if left != right:
        return False
    if type(left) not in _CONTAINERS:
        return type(left) is type(right)
    canon = _canon(left)
    return canon is not None and canon == _canon(right)


def _canon(value: Any) -> bytes | None:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON (e.g. an int beyond 64 bits): compare the slow way
        return None


def _suspects(lvals: list[Any], rvals: list[Any]) -> list[int]:
    """Indexes (over the common prefix) where the two lists may differ, in order.

    ``!=`` finds most in C; the pairs it calls equal are checked all at once through
    their canonical text, and only if that disagrees is each pair tested on its own.
    """
    n = min(len(lvals), len(rvals))
    differing = list(compress(range(n), map(ne, lvals, rvals)))
    if len(differing) == n:
        return differing
    lc, rc = lvals[:n], rvals[:n]
    for i in differing:
        lc[i] = rc[i] = None
    canon = _canon(lc)
    if canon is not None and canon == _canon(rc):
        return differing
    return [i for i in range(n) if not _same(lvals[i], rvals[i])]


def _json_type(value: Any) -> str:
    # bool first: it is a subclass of int in Python but not a number in JSON.
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _diff(left: Any, right: Any, path: str, out: list[FieldDiff], limit: int) -> None:
    tl = type(left)
    if tl is type(right):
        if tl is dict:
            _diff_object(left, right, path, out, limit)
        elif tl is list:
            _diff_array(left, right, path, out, limit)
        elif left != right and not (tl is float and left != left and right != right):
            out.append(FieldDiff(path, "value", _clip(left), _clip(right)))
        return
    jl, jr = _json_type(left), _json_type(right)
    if jl != jr:
        out.append(FieldDiff(path, "type", _clip(left), _clip(right)))
    elif left != right:  # int vs float
        out.append(FieldDiff(path, "value", left, right))


def _diff_object(
    left: dict[str, Any], right: dict[str, Any], path: str, out: list[FieldDiff], limit: int
) -> None:
    keys = list(left)
    if keys == list(right):  # the common case: same keys in the same order
        suspects = _suspects(list(left.values()), list(right.values()))
    else:
        keys = [k for k in keys if k in right]
        suspects = _suspects([left[k] for k in keys], [right[k] for k in keys])
    if len(keys) == len(left):
        for i in suspects:
            if len(out) >= limit:
                return
            key = keys[i]
            _diff(left[key], right[key], _child(path, key), out, limit)
    else:
        bad = {keys[i] for i in suspects}
        for key, lv in left.items():
            if len(out) >= limit:
                return
            if key in bad:
                _diff(lv, right[key], _child(path, key), out, limit)
            elif key not in right:
                out.append(FieldDiff(_child(path, key), "missing", _clip(lv), None))
    if len(keys) == len(right):
        return
    for key, rv in right.items():
        if len(out) >= limit:
            return
        if key not in left:
            out.append(FieldDiff(_child(path, key), "extra", None, _clip(rv)))


def _diff_array(
    left: list[Any], right: list[Any], path: str, out: list[FieldDiff], limit: int
) -> None:
    if len(left) != len(right):
        out.append(FieldDiff(path, "array_length", len(left), len(right)))
    for i in _suspects(left, right):
        if len(out) >= limit:
            return
        _diff(left[i], right[i], f"{path}[{i}]", out, limit)


def _child(path: str, key: str) -> str:
    if _IDENT.match(key):
        return f"{path}.{key}"
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"{path}['{escaped}']"


def _clip(value: Any) -> Any:
    """Keep a FieldDiff value small: long strings clipped, big containers as clipped JSON text."""
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "…"
    if isinstance(value, (dict, list)):
        text = orjson.dumps(value).decode()
        return value if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"
    return value


# -- bodies ----------------------------------------------------------------------------


def is_json_content_type(content_type: str | None) -> bool:
    """``application/json`` or any ``+json`` media type, parameters ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def diff_bodies(left: Response, right: Response, *, max_diffs: int = MAX_DIFFS) -> list[FieldDiff]:
    """Body differences: JSON structurally when both sides are JSON and parse, else by sha256.

    A truncated body cannot be compared structurally, so when either side is
    truncated only the digests of what was captured are compared.
    """
    if left.body == right.body:
        return []
    if not (left.truncated or right.truncated) and (
        is_json_content_type(left.header("content-type"))
        and is_json_content_type(right.header("content-type"))
    ):
        try:
            lv, rv = orjson.loads(left.body), orjson.loads(right.body)
        except orjson.JSONDecodeError:
            pass
        else:
            return diff_json(lv, rv, max_diffs=max_diffs)
    return [FieldDiff("$", "body_digest", _sha256(left.body), _sha256(right.body))]


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# -- headers and errors ----------------------------------------------------------------


def diff_headers(left: Response, right: Response, ignore: frozenset[str]) -> list[FieldDiff]:
    """Header differences by lower-cased name; repeated headers are joined with ", "."""
    lh, rh = _header_map(left, ignore), _header_map(right, ignore)
    out: list[FieldDiff] = []
    for name, lv in lh.items():
        rv = rh.get(name)
        if rv is None:
            out.append(FieldDiff(f"header:{name}", "missing", _clip(lv), None))
        elif rv != lv:
            out.append(FieldDiff(f"header:{name}", "value", _clip(lv), _clip(rv)))
    for name, rv in rh.items():
        if name not in lh:
            out.append(FieldDiff(f"header:{name}", "extra", None, _clip(rv)))
    return out


def _header_map(response: Response, ignore: frozenset[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in response.headers:
        lname = name.lower()
        if lname in ignore:
            continue
        out[lname] = f"{out[lname]}, {value}" if lname in out else value
    return out


def error_kind(error: str | None) -> str | None:
    """The kind of a response error: the text before the first ':' (``"timeout: 10s"``)."""
    if error is None:
        return None
    return error.split(":", 1)[0].strip()


# -- one result ------------------------------------------------------------------------


def compare(
    result: ReplayResult, *, ignore_headers: frozenset[str], compare_headers: bool
) -> Verdict:
    """Compare the candidate's response with the baseline's, or with the logged origin.

    With a baseline: errors (same error kind on both sides is no diff; when either side
    errored nothing else is compared), status, headers when ``compare_headers`` (names
    in ``ignore_headers``, lower case, skipped), then bodies. Without one: the candidate
    status against ``origin.status``, and the candidate body's sha256 against
    ``origin.body_sha256`` when the log carried one and the body was not truncated.
    """
    endpoint = result.endpoint or endpoint_name(result.request.method, result.request.target)
    candidate = result.responses.get("candidate")
    baseline = result.responses.get("baseline")
    reference = "baseline" if baseline is not None else "origin"
    if candidate is None:
        return Verdict(endpoint, reference, (), "no_candidate")
    if baseline is not None:
        diffs = _against_baseline(baseline, candidate, ignore_headers, compare_headers)
    elif result.origin is not None:
        diffs = _against_origin(result.origin, candidate)
    else:
        return Verdict(endpoint, reference, (), "no_reference")
    return Verdict(endpoint, reference, tuple(diffs[:MAX_DIFFS]))


def _against_baseline(
    baseline: Response, candidate: Response, ignore_headers: frozenset[str], compare_headers: bool
) -> list[FieldDiff]:
    if baseline.error is not None or candidate.error is not None:
        if error_kind(baseline.error) != error_kind(candidate.error):
            return [FieldDiff("error", "error", baseline.error, candidate.error)]
        return []
    diffs: list[FieldDiff] = []
    if baseline.status != candidate.status:
        diffs.append(FieldDiff("status", "status", baseline.status, candidate.status))
    if compare_headers:
        diffs.extend(diff_headers(baseline, candidate, ignore_headers))
    diffs.extend(diff_bodies(baseline, candidate, max_diffs=max(0, MAX_DIFFS - len(diffs))))
    return diffs


def _against_origin(origin: Origin, candidate: Response) -> list[FieldDiff]:
    if candidate.error is not None:
        return [FieldDiff("error", "error", None, candidate.error)]
    diffs: list[FieldDiff] = []
    if origin.status is not None and origin.status != candidate.status:
        diffs.append(FieldDiff("status", "status", origin.status, candidate.status))
    if origin.body_sha256 is not None and not candidate.truncated:
        digest = _sha256(candidate.body)
        if digest != origin.body_sha256.lower():
            diffs.append(FieldDiff("$", "body_digest", origin.body_sha256, digest))
    return diffs
