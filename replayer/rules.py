"""Filters and rewrites applied to each record before it is replayed, in configured order.

Pure code (no asyncio, no I/O). ``Rules.apply`` returns the record to send (rewritten)
or None when a filter dropped it, plus the label of every rule that acted, so the loop
can count each rule in a metric. The method allow-list is checked here (``Rules``); the
safety rewrites that are not configurable (hop-by-hop headers, client-address headers,
X-Shadow-Replay, Host, the target's form) happen later, in ``client.outgoing_request``.

Rule kinds (one ``[[replayer.rules]]`` table each):

* filters — ``include_path`` (drop unless ``pattern`` matches the path),
  ``exclude_path``, ``require_header`` (drop unless header ``name`` matches
  ``pattern``), ``exclude_header``, ``sample`` (keep ``percent`` % of ``key``s:
  ``client``, ``header:NAME`` or ``query:NAME``; the same key is always in or out);
* rewrites — ``rewrite_path`` (first match of ``pattern`` in the path replaced by
  ``value``, ``\\1`` groups allowed; the query is kept), ``set_header`` (``name`` =
  ``value``, replacing any), ``remove_header``, ``set_query`` (parameter ``name`` =
  ``value``; other parameters keep their raw encoding and order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

from shadowreplay.contract.config import ReplayRule
from shadowreplay.contract.errors import ConfigError
from shadowreplay.contract.record import RequestRecord

FILTERS = ("include_path", "exclude_path", "require_header", "exclude_header", "sample")
REWRITES = ("rewrite_path", "set_header", "remove_header", "set_query")
KINDS = FILTERS + REWRITES
_SAMPLE_BUCKETS = 10_000

Step = Callable[[RequestRecord], RequestRecord | None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the rules did: ``record`` to send (None: dropped by ``dropped_by``) and the
    labels of the rules that acted on it, in order."""

    record: RequestRecord | None
    acted: tuple[str, ...]
    dropped_by: str | None = None


def sample_bucket(key: str) -> int:
    """A stable bucket in [0, 10000) for a sampling key (the same on every machine)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _SAMPLE_BUCKETS


def query_param(target: str, name: str) -> str | None:
    """The first value of query parameter ``name`` in a raw request-target (decoded)."""
    _, sep, query = target.partition("?")
    if not sep:
        return None
    for piece in query.split("&"):
        k, _, v = piece.partition("=")
        if unquote_plus(k) == name:
            return unquote_plus(v)
    return None


def set_query_param(target: str, name: str, value: str) -> str:
    """``target`` with parameter ``name`` set to ``value`` (first occurrence replaced,
    repeats removed, appended when absent); everything else keeps its raw spelling."""
    path, sep, query = target.partition("?")
    pieces = query.split("&") if sep and query else []
    encoded = f"{quote(name, safe='')}={quote(value, safe='')}"
    out: list[str] = []
    placed = False
    for piece in pieces:
        if unquote_plus(piece.partition("=")[0]) == name:
            if not placed:
                out.append(encoded)
                placed = True
            continue
        out.append(piece)
    if not placed:
        out.append(encoded)
    return path + "?" + "&".join(out)


def _with_path(record: RequestRecord, path: str) -> RequestRecord:
    _, sep, query = record.target.partition("?")
    return dataclasses.replace(record, target=path + sep + query)


def _compile(rule: ReplayRule, where: str) -> re.Pattern[str]:
    try:
        return re.compile(rule.pattern)
    except re.error as exc:
        raise ConfigError(f"{where}.pattern: not a valid regex {rule.pattern!r}: {exc}") from exc


def _sample_key(key: str, where: str) -> Callable[[RequestRecord], str]:
    if key == "client":
        return lambda r: r.client or ""
    kind, sep, name = key.partition(":")
    if sep and name and kind == "header":
        return lambda r: r.header(name) or ""
    if sep and name and kind == "query":
        return lambda r: query_param(r.target, name) or ""
    raise ConfigError(f"{where}.key: expected client, header:NAME or query:NAME, got {key!r}")


def _step(rule: ReplayRule, where: str) -> Step:  # noqa: C901 - one branch per kind
    kind = rule.kind
    if kind in ("include_path", "exclude_path", "rewrite_path", "require_header", "exclude_header"):
        rx = _compile(rule, where)
    if kind in ("require_header", "exclude_header", "set_header", "remove_header", "set_query") and not rule.name:
        raise ConfigError(f"{where}.name: rule {kind!r} needs a name")
    if kind == "include_path":
        return lambda r: r if rx.search(r.path) else None
    if kind == "exclude_path":
        return lambda r: None if rx.search(r.path) else r
    if kind == "require_header":
        return lambda r: r if rx.search(r.header(rule.name) or "") and r.header(rule.name) is not None else None
    if kind == "exclude_header":
        return lambda r: None if r.header(rule.name) is not None and rx.search(r.header(rule.name) or "") else r
    if kind == "sample":
        if not 0 <= rule.percent <= 100:
            raise ConfigError(f"{where}.percent: must be within 0..100, got {rule.percent}")
        threshold = round(rule.percent * _SAMPLE_BUCKETS / 100)
        key_of = _sample_key(rule.key, where)
        return lambda r: r if sample_bucket(key_of(r)) < threshold else None
    if kind == "rewrite_path":
        try:  # the replacement's group references, checked now rather than on the first record
            rx.sub(rule.value, "")
        except re.error as exc:
            raise ConfigError(f"{where}.value: not a valid replacement {rule.value!r}: {exc}") from exc

        def rewrite(r: RequestRecord) -> RequestRecord:
            new = rx.sub(rule.value, r.path, count=1)
            return r if new == r.path else _with_path(r, new)

        return rewrite
    lname = rule.name.lower()
    if kind == "set_header":
        return lambda r: dataclasses.replace(
            r, headers=tuple(h for h in r.headers if h[0].lower() != lname) + ((rule.name, rule.value),)
        )
    if kind == "remove_header":

        def remove(r: RequestRecord) -> RequestRecord:
            kept = tuple(h for h in r.headers if h[0].lower() != lname)
            return r if len(kept) == len(r.headers) else dataclasses.replace(r, headers=kept)

        return remove
    if kind == "set_query":
        return lambda r: dataclasses.replace(r, target=set_query_param(r.target, rule.name, rule.value))
    raise ConfigError(f"{where}.kind: unknown rule kind {kind!r} (known: {', '.join(KINDS)})")


class Rules:
    """The method allow-list, then the configured rules in order.

    The allow-list is written in any case (``get`` means GET) and a record is sent only if
    its method is spelled exactly as an allowed one: methods are case-sensitive on the
    wire (RFC 9110 §9.1), so a logged ``get`` is not a GET. It is dropped (reason
    ``methods``), neither sent lowercase past a list that did not name it, nor sent as a
    GET that production never received."""

    def __init__(self, methods: Sequence[str], rules: Sequence[ReplayRule]) -> None:
        self.methods = frozenset(m.upper() for m in methods)
        self.labels: list[str] = []
        self._steps: list[tuple[str, Step]] = []
        for i, rule in enumerate(rules):
            label = f"{i}:{rule.kind}"
            self._steps.append((label, _step(rule, f"replayer.rules[{i}]")))
            self.labels.append(label)

    def apply(self, record: RequestRecord) -> Outcome:
        """Filter and rewrite ``record``; see ``Outcome``."""
        if record.method not in self.methods:
            return Outcome(None, ("methods",), "methods")
        if not self._steps:
            return Outcome(record, ())
        acted: list[str] = []
        current = record
        for label, step in self._steps:
            after = step(current)
            if after is None:
                acted.append(label)
                return Outcome(None, tuple(acted), label)
            if after is not current:
                acted.append(label)
                current = after
        return Outcome(current, tuple(acted))
