"""Structural JSON differences with JSONPath paths. Pure, no I/O.

``left`` is the reference (baseline), ``right`` the candidate. Equal subtrees are
skipped at C speed (``==`` plus canonical orjson text), so the cost follows the number
of differences, not the size of the documents; ignore and unordered rules are only
consulted on nodes that differ.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import compress
from operator import ne
from typing import Any

import orjson

from shadowreplay.comparer.paths import PathSet

#: At most this many diffs are reported for one pair of responses.
MAX_DIFFS = 100
#: Strings (and JSON renderings of containers) longer than this are clipped in a FieldDiff.
MAX_VALUE_CHARS = 200

_CONTAINERS = (dict, list)
_EMPTY = PathSet()


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One difference between the reference (``left``) and the candidate (``right``).

    ``kind`` is one of ``shadowreplay.comparer.diff.KINDS``; ``left``/``right`` are JSON values
    (clipped), so a FieldDiff always serialises with orjson.
    """

    path: str
    kind: str
    left: Any
    right: Any


@dataclass(frozen=True, slots=True)
class JsonOptions:
    """How two JSON documents are compared.

    ``ignore``: paths never reported. ``unordered``: arrays compared as multisets
    (elements that do not pair up exactly are diffed pairwise in order, the rest are
    ``missing``/``extra``). Numbers within ``tolerance_absolute`` or within
    ``tolerance_relative`` × the larger magnitude are equal.
    """

    ignore: PathSet = _EMPTY
    unordered: PathSet = _EMPTY
    tolerance_absolute: float = 0.0
    tolerance_relative: float = 0.0


DEFAULT_OPTIONS = JsonOptions()


def diff_json(
    left: Any,
    right: Any,
    path: str = "$",
    *,
    max_diffs: int = MAX_DIFFS,
    options: JsonOptions = DEFAULT_OPTIONS,
) -> list[FieldDiff]:
    """Structural differences between two decoded JSON values, at most ``max_diffs``.

    Numbers compare by value (``1`` equals ``1.0``); a boolean is not a number. Arrays
    are compared element by element over their common prefix, plus one
    ``array_length`` diff when the lengths differ; an array whose elements are the
    same but in another order gives a single ``order`` diff.
    """
    out: list[FieldDiff] = []
    if max_diffs > 0 and not _same(left, right) and path not in options.ignore:
        _Walker(out, max_diffs, options).diff(left, right, path)
    return out[:max_diffs]


def diff_jsonrpc(
    left: Any, right: Any, *, max_diffs: int = MAX_DIFFS, options: JsonOptions = DEFAULT_OPTIONS
) -> list[FieldDiff]:
    """JSON-RPC 2.0 responses: batches matched by ``id``, never by position.

    Answers are grouped by id on each side (``1`` and ``1.0`` are one id; ``null`` is an
    id too: servers answer unparseable calls with it). Within a group, identical answers
    pair up first whatever their order, the rest pair in order, and what is left over is
    ``missing``/``extra``. So a batch answered in another order, with duplicate ids or
    with several ``null`` answers, differs only where an answer does.

    Paths: ``$[?(@.id==7)]`` when each side has at most one answer with id 7, else
    ``$[?(@.id==7)][k]``, the k-th answer with that id on its side (the reference's for
    a pair and a ``missing`` one, the candidate's for an ``extra`` one). Elements that are
    not objects with an ``id`` (invalid answers) pair the same way among themselves and
    are addressed by their position in their batch, ``$[3]``. Notifications are never
    answered, so they take no part. Anything that is not a batch on both sides (a single
    call, or a batch answered by one object) is compared as plain JSON.
    """
    if not (isinstance(left, list) and isinstance(right, list)):
        return diff_json(left, right, max_diffs=max_diffs, options=options)
    out: list[FieldDiff] = []
    if max_diffs <= 0 or _same(left, right):
        return out
    walker = _Walker(out, max_diffs, options)
    lgroups, rgroups = _rpc_groups(left), _rpc_groups(right)
    for key, lidx in lgroups.items():
        _rpc_group(walker, key, left, lidx, right, rgroups.get(key, []))
    for key, ridx in rgroups.items():
        if key not in lgroups:
            _rpc_group(walker, key, left, [], right, ridx)
    return out[:max_diffs]


#: Group key of batch elements that are not objects holding an ``id`` member.
_NO_ID = b""


def _rpc_groups(batch: list[Any]) -> dict[bytes, list[int]]:
    """Positions of the batch's elements by canonical id (``_NO_ID`` for those without one)."""
    groups: dict[bytes, list[int]] = {}
    for i, item in enumerate(batch):
        key = _NO_ID
        if isinstance(item, dict) and "id" in item:
            ident = item["id"]
            if type(ident) is float and ident.is_integer():
                ident = int(ident)
            key = _canon(ident) or repr(ident).encode()
        groups.setdefault(key, []).append(i)
    return groups


def _rpc_group(walker: _Walker, key: bytes, left: list[Any], lidx: list[int], right: list[Any], ridx: list[int]) -> None:
    """Diff the answers of one id: identical ones pair first, then the rest in order."""
    out, limit = walker.out, walker.limit
    if len(out) >= limit:
        return
    pool: defaultdict[bytes | None, list[int]] = defaultdict(list)
    for j in ridx:
        pool[_canon(right[j])].append(j)
    lrest: list[int] = []
    for i in lidx:
        canon = _canon(left[i])
        matches = pool.get(canon) if canon is not None else None
        if matches:
            matches.pop(0)
        else:
            lrest.append(i)
    rrest = sorted(j for js in pool.values() for j in js)
    if not lrest and not rrest:
        return
    multi = len(lidx) > 1 or len(ridx) > 1
    lpos, rpos = {i: k for k, i in enumerate(lidx)}, {j: k for k, j in enumerate(ridx)}

    def path(batch_index: int, group_pos: int) -> str:
        if key == _NO_ID:
            return f"$[{batch_index}]"
        base = f"$[?(@.id=={key.decode('utf-8', 'replace')})]"
        return f"{base}[{group_pos}]" if multi else base

    for i, j in zip(lrest, rrest, strict=False):
        if len(out) >= limit:
            return
        walker._child(left[i], right[j], path(i, lpos[i]))
    for i in lrest[len(rrest) :]:
        if len(out) >= limit:
            return
        walker._record(path(i, lpos[i]), "missing", _clip(left[i]), None)
    for j in rrest[len(lrest) :]:
        if len(out) >= limit:
            return
        walker._record(path(j, rpos[j]), "extra", None, _clip(right[j]))


# -- equality fast paths ---------------------------------------------------------------


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


# -- the walk --------------------------------------------------------------------------


class _Walker:
    __slots__ = ("out", "limit", "ignore", "unordered", "tol_abs", "tol_rel")

    def __init__(self, out: list[FieldDiff], limit: int, options: JsonOptions) -> None:
        self.out = out
        self.limit = limit
        self.ignore = options.ignore if options.ignore else None
        self.unordered = options.unordered if options.unordered else None
        self.tol_abs = options.tolerance_absolute
        self.tol_rel = options.tolerance_relative

    def diff(self, left: Any, right: Any, path: str) -> None:
        tl = type(left)
        if tl is type(right):
            if tl is dict:
                self.object(left, right, path)
            elif tl is list:
                if self.unordered is not None and path in self.unordered:
                    self.unordered_array(left, right, path)
                else:
                    self.array(left, right, path)
            elif left != right and not (tl is float and left != left and right != right):
                if tl is str or not self._within_tolerance(left, right):
                    self.out.append(FieldDiff(path, "value", _clip(left), _clip(right)))
            return
        jl, jr = _json_type(left), _json_type(right)
        if jl != jr:
            self.out.append(FieldDiff(path, "type", _clip(left), _clip(right)))
        elif left != right and not self._within_tolerance(left, right):  # int vs float
            self.out.append(FieldDiff(path, "value", left, right))

    def _within_tolerance(self, left: Any, right: Any) -> bool:
        if not (self.tol_abs or self.tol_rel) or not isinstance(left, (int, float)) or left is True or left is False:
            return False
        delta = abs(left - right)
        scale = max(abs(left), abs(right))
        # A float epsilon, so that 1.01 - 1.0 is within an absolute tolerance of 0.01.
        return delta <= self.tol_abs + 1e-12 * scale or delta <= self.tol_rel * scale * (1 + 1e-12)

    def _record(self, path: str, kind: str, left: Any, right: Any) -> None:
        if self.ignore is None or path not in self.ignore:
            self.out.append(FieldDiff(path, kind, left, right))

    def _child(self, left: Any, right: Any, path: str) -> None:
        if self.ignore is None or path not in self.ignore:
            self.diff(left, right, path)

    def object(self, left: dict[str, Any], right: dict[str, Any], path: str) -> None:
        out, limit = self.out, self.limit
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
                self._child(left[key], right[key], _child(path, key))
        else:
            bad = {keys[i] for i in suspects}
            for key, lv in left.items():
                if len(out) >= limit:
                    return
                if key in bad:
                    self._child(lv, right[key], _child(path, key))
                elif key not in right:
                    self._record(_child(path, key), "missing", _clip(lv), None)
        if len(keys) == len(right):
            return
        for key, rv in right.items():
            if len(out) >= limit:
                return
            if key not in left:
                self._record(_child(path, key), "extra", None, _clip(rv))

    def array(self, left: list[Any], right: list[Any], path: str) -> None:
        suspects = _suspects(left, right)
        if len(left) == len(right) and len(suspects) > 1 and _same_multiset(left, right):
            self._record(path, "order", None, None)
            return
        if len(left) != len(right):
            self._record(path, "array_length", len(left), len(right))
        for i in suspects:
            if len(self.out) >= self.limit:
                return
            self._child(left[i], right[i], f"{path}[{i}]")

    def unordered_array(self, left: list[Any], right: list[Any], path: str) -> None:
        lcanon, rcanon = [_canon(v) for v in left], [_canon(v) for v in right]
        pool: defaultdict[bytes | None, list[int]] = defaultdict(list)
        for j, c in enumerate(rcanon):
            pool[c].append(j)
        lrest: list[int] = []
        for i, c in enumerate(lcanon):
            if c is not None and pool.get(c):
                pool[c].pop(0)
            else:
                lrest.append(i)
        rrest = sorted(j for c, js in pool.items() for j in js)
        if not lrest and not rrest:
            return
        if len(left) != len(right):
            self._record(path, "array_length", len(left), len(right))
        for i, j in zip(lrest, rrest, strict=False):  # leftovers pair up in order
            if len(self.out) >= self.limit:
                return
            self._child(left[i], right[j], f"{path}[{i}]")
        for i in lrest[len(rrest) :]:
            self._record(f"{path}[{i}]", "missing", _clip(left[i]), None)
        for j in rrest[len(lrest) :]:
            self._record(f"{path}[{j}]", "extra", None, _clip(right[j]))


def _same_multiset(left: list[Any], right: list[Any]) -> bool:
    lc, rc = [_canon(v) for v in left], [_canon(v) for v in right]
    if None in lc or None in rc:
        return False
    return sorted(lc) == sorted(rc)  # type: ignore[type-var]


def _child(path: str, key: str) -> str:
    if key.isascii() and key.isidentifier():  # [A-Za-z_][A-Za-z0-9_]*, faster than a regex
        return f"{path}.{key}"
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"{path}['{escaped}']"


def _clip(value: Any) -> Any:
    """Keep a FieldDiff value small: long strings clipped, big containers as clipped JSON text."""
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "…"
    if isinstance(value, (dict, list)):
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            return repr(value)[:MAX_VALUE_CHARS]
        return value if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"
    return value
