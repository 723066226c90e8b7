"""The diff engine: pure functions from responses to field-level differences.

No I/O and no asyncio. ``left`` is always the reference (baseline, or the logged
production origin) and ``right`` the candidate.

Paths are JSONPath: ``$`` is the body root, ``$.items[3].price`` a nested field,
``$['a b']`` a key that is not an identifier, ``$[?(@.id==7)]`` the JSON-RPC answer with
id 7. Other paths: ``status``, ``error``, ``latency``, ``size``, ``header:<name>`` and
``line:<n>`` (text bodies, 1-based line of the reference, or of the candidate for an
``extra`` line).

Entry point: :class:`Differ` (``Differ(config).compare(result) -> Verdict``), what the
comparer loop, ``compare --rediff`` and ``noise learn`` use.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from shadowreplay.comparer.endpoints import EndpointNamer
from shadowreplay.comparer.jsondiff import (
    DEFAULT_OPTIONS,
    MAX_DIFFS,
    MAX_VALUE_CHARS,
    FieldDiff,
    JsonOptions,
    _clip,
    diff_json,
    diff_jsonrpc,
)
from shadowreplay.comparer.paths import PathSet, is_within
from shadowreplay.comparer.streams import STREAM_KINDS, StreamRules, diff_streams, stream_rules
from shadowreplay.contract.config import ComparerConfig
from shadowreplay.contract.errors import ConfigError
from shadowreplay.contract.record import PROBE, Origin, ReplayResult, Response

__all__ = [
    "KINDS",
    "MAX_DIFFS",
    "PROBE",
    "UNREACHED_KINDS",
    "MAX_VALUE_CHARS",
    "DivergenceSink",
    "Differ",
    "FieldDiff",
    "JsonOptions",
    "Rules",
    "Verdict",
    "diff_bodies",
    "diff_headers",
    "diff_json",
    "diff_jsonrpc",
    "diff_text",
    "error_kind",
    "is_json_content_type",
    "is_text_content_type",
]

#: Every ``FieldDiff.kind`` this module produces (a bounded metric label set).
KINDS: tuple[str, ...] = (
    "value",
    "type",
    "missing",
    "extra",
    "array_length",
    "order",
    "status",
    "body_digest",
    "size",
    "latency",
    "error",
    *STREAM_KINDS,
)

#: Response error kinds that mean the request never reached the application (the target
#: was down, unresolvable, refused TLS) or never left the replayer: such a result is
#: "not compared", never a divergence.
UNREACHED_KINDS: tuple[str, ...] = ("connect", "dns", "tls", "request", "client")

#: A gzip body that slipped through undecoded is inflated up to this size, else digested.
MAX_GUNZIP_BYTES = 16 * 1024 * 1024
#: Text bodies with more lines than this are compared by digest only.
MAX_TEXT_LINES = 20000


@dataclass(frozen=True, slots=True)
class Verdict:
    """The comparison of one ReplayResult.

    ``reference`` is ``"baseline"`` or ``"origin"``. ``error`` is set when the result
    could not be compared at all (``no_candidate``, ``no_reference``,
    ``compare_failed``); such a verdict has no diffs.

    ``diffs`` are the differences left after per-request cancellation (the result
    *diverged in this request* when there is one; whether they are real is decided per
    endpoint and field by :mod:`shadowreplay.comparer.verdict`, over many requests); ``noise`` the
    candidate differences cancelled in this request, because the reference and its twin
    differed on the same field (or above it), or because the path is listed in
    ``noise_paths``; ``secondary`` the reference-vs-twin differences themselves (the
    evidence). ``twin`` names the twin: ``"secondary"``, ``"probe"`` (the reference asked
    a second time), or None. ``not_reached`` is ``(target, reason)`` when the candidate
    or the baseline was never reached (``error`` is then ``"not_reached"``): such a
    result is not compared. ``latency_ratio`` is candidate/baseline latency when both
    were measured.
    """

    endpoint: str
    reference: str
    diffs: tuple[FieldDiff, ...] = ()
    error: str | None = None
    noise: tuple[FieldDiff, ...] = ()
    secondary: tuple[FieldDiff, ...] = ()
    latency_ratio: float | None = None
    twin: str | None = None
    not_reached: tuple[str, str] | None = None

    @property
    def diverged(self) -> bool:
        return bool(self.diffs)


class DivergenceSink(Protocol):
    """Where the comparer loop hands differing results (the divergence store implements it).

    ``add`` is called for every verdict in a batch that differs on a field judged real or
    not yet decided (``real``: on a real one, as judged when it arrived), then ``flush``
    once, before the batch's offsets are committed: a sink that has flushed owns the
    results (at-least-once; the same result may be added again after a crash).
    """

    def add(self, result: ReplayResult, verdict: Verdict, *, real: bool = True) -> None: ...

    def flush(self) -> None: ...


# -- bodies ----------------------------------------------------------------------------


def is_json_content_type(content_type: str | None) -> bool:
    """``application/json`` or any ``+json`` media type, parameters ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


_TEXT_MEDIA = frozenset(
    {
        "application/xml",
        "application/javascript",
        "application/x-www-form-urlencoded",
        "application/yaml",
        "application/x-yaml",
        "application/x-ndjson",
    }
)


def is_text_content_type(content_type: str | None) -> bool:
    """``text/*``, XML, JavaScript, YAML, forms and NDJSON: compared by normalised lines."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media.endswith("+xml") or media in _TEXT_MEDIA


@dataclass(frozen=True, slots=True)
class _Body:
    kind: str  # "json", "text", "binary", "truncated"
    raw: bytes
    value: Any = None


def _view(response: Response) -> _Body:
    body = response.body
    if response.truncated:
        return _Body("truncated", body)
    if body[:2] == b"\x1f\x8b":
        body = _gunzip(body)
    ctype = response.header("content-type")
    if is_json_content_type(ctype) or (not ctype and body[:1] in (b"{", b"[")):
        try:
            return _Body("json", body, orjson.loads(body))
        except orjson.JSONDecodeError:
            return _Body("binary", body)
    if is_text_content_type(ctype):
        return _Body("text", body)
    return _Body("binary", body)


def _gunzip(body: bytes) -> bytes:
    try:
        d = zlib.decompressobj(wbits=31)
        out = d.decompress(body, MAX_GUNZIP_BYTES)
    except zlib.error:
        return body
    return out if d.eof and not d.unconsumed_tail else body


def diff_bodies(
    left: Response,
    right: Response,
    *,
    max_diffs: int = MAX_DIFFS,
    options: JsonOptions = DEFAULT_OPTIONS,
) -> list[FieldDiff]:
    """Body differences by content type (a gzip body is inflated first).

    JSON structurally when both sides are JSON and parse (JSON-RPC batches by id); text
    types by normalised lines; anything else by sha256. A truncated body cannot be
    compared structurally, so when either side is truncated only the digests of what
    was captured are compared.
    """
    if left.body == right.body:
        return []
    return _diff_views(_view(left), _view(right), max_diffs, options)


def _diff_views(lb: _Body, rb: _Body, max_diffs: int, options: JsonOptions) -> list[FieldDiff]:
    if lb.raw == rb.raw:
        return []
    if lb.kind == rb.kind == "json":
        if _is_rpc_batch(lb.value) or _is_rpc_batch(rb.value):
            return diff_jsonrpc(lb.value, rb.value, max_diffs=max_diffs, options=options)
        return diff_json(lb.value, rb.value, max_diffs=max_diffs, options=options)
    if lb.kind == rb.kind == "text":
        diffs = diff_text(lb.raw, rb.raw, max_diffs=max_diffs)
        if diffs is not None:
            return [d for d in diffs if d.path not in options.ignore]
    if "$" in options.ignore:
        return []
    return [FieldDiff("$", "body_digest", _sha256(lb.raw), _sha256(rb.raw))]


def _is_rpc_batch(value: Any) -> bool:
    # A batch may open with invalid answers (bare values): look a little past the first
    # element, but not through every element of a large plain array.
    return isinstance(value, list) and any(type(x) is dict and "jsonrpc" in x for x in value[:16])


def _lines(body: bytes) -> list[str]:
    lines = [line.rstrip() for line in body.decode("utf-8", "replace").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def diff_text(left: bytes, right: bytes, *, max_diffs: int = MAX_DIFFS) -> list[FieldDiff] | None:
    """Line differences after normalising (line endings, trailing blanks, final newlines).

    None when a side has more than MAX_TEXT_LINES lines (the caller digests instead).
    """
    ll, rl = _lines(left), _lines(right)
    if ll == rl:
        return []
    if len(ll) > MAX_TEXT_LINES or len(rl) > MAX_TEXT_LINES:
        return None
    out: list[FieldDiff] = []
    matcher = difflib.SequenceMatcher(None, ll, rl, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        n = max(i2 - i1, j2 - j1)
        for k in range(n):
            i, j = i1 + k, j1 + k
            if i < i2 and j < j2:
                out.append(FieldDiff(f"line:{i + 1}", "value", _clip(ll[i]), _clip(rl[j])))
            elif i < i2:
                out.append(FieldDiff(f"line:{i + 1}", "missing", _clip(ll[i]), None))
            else:
                out.append(FieldDiff(f"line:{j + 1}", "extra", None, _clip(rl[j])))
            if len(out) >= max_diffs:
                return out
    return out


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


def unreached(response: Response | None) -> str | None:
    """The reason ``response`` never reached its target (one of UNREACHED_KINDS), else None."""
    if response is None or response.error is None:
        return None
    kind = error_kind(response.error)
    return kind if kind in UNREACHED_KINDS else None


# -- rules -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """The diff rules in force for one endpoint (``[comparer]`` plus matching ``[[comparer.endpoints]]``)."""

    ignore_headers: frozenset[str]
    compare_headers: bool
    json: JsonOptions
    noise: PathSet = field(default_factory=PathSet)
    latency_ratio_threshold: float = 0.0
    latency_min_delta_seconds: float = 0.05
    compare_origin_size: bool = False
    origin_size_tolerance_relative: float = 0.05
    streams: StreamRules = field(default_factory=StreamRules)


def _pathset(patterns: tuple[str, ...], key: str) -> PathSet:
    try:
        return PathSet(patterns)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _rules(c: ComparerConfig, endpoint: str) -> Rules:
    ignore_headers = set(h.lower() for h in c.ignore_headers)
    ignore, noise, unordered = list(c.ignore_paths), list(c.noise_paths), list(c.unordered_paths)
    tol_abs, tol_rel, latency = c.tolerance_absolute, c.tolerance_relative, c.latency_ratio_threshold
    for rule in c.endpoints:
        if rule.match != endpoint and not fnmatch.fnmatchcase(endpoint, rule.match):
            continue
        ignore_headers.update(h.lower() for h in rule.ignore_headers)
        ignore += rule.ignore_paths
        noise += rule.noise_paths
        unordered += rule.unordered_paths
        tol_abs = rule.tolerance_absolute if rule.tolerance_absolute >= 0 else tol_abs
        tol_rel = rule.tolerance_relative if rule.tolerance_relative >= 0 else tol_rel
        latency = rule.latency_ratio_threshold if rule.latency_ratio_threshold >= 0 else latency
    return Rules(
        ignore_headers=frozenset(ignore_headers),
        compare_headers=c.compare_headers,
        json=JsonOptions(
            ignore=_pathset(tuple(ignore), "comparer.ignore_paths"),
            unordered=_pathset(tuple(unordered), "comparer.unordered_paths"),
            tolerance_absolute=tol_abs,
            tolerance_relative=tol_rel,
        ),
        noise=_pathset(tuple(noise), "comparer.noise_paths"),
        latency_ratio_threshold=latency,
        latency_min_delta_seconds=c.latency_min_delta_seconds,
        compare_origin_size=c.compare_origin_size,
        origin_size_tolerance_relative=c.origin_size_tolerance_relative,
        streams=stream_rules(c.streams),
    )


# -- one result ------------------------------------------------------------------------


class Differ:
    """Compares ReplayResults under one ComparerConfig. Pure and reusable; not thread-safe.

    ``Differ(config).compare(result) -> Verdict`` is the one comparison used by the
    comparer loop, by ``compare --rediff`` (re-diffing stored results under the current
    rules) and by ``noise learn``. Construction compiles every route and path pattern
    and raises ConfigError naming a bad one.
    """

    MAX_CACHED_ENDPOINTS = 4096

    def __init__(self, config: ComparerConfig) -> None:
        self.config = config
        self.namer = EndpointNamer(config.routes, config.max_endpoints)
        self._rules: dict[str, Rules] = {}
        self.rules("")  # compile the global patterns now, so bad ones fail at start-up
        for i, rule in enumerate(config.endpoints):
            for key in ("ignore_paths", "noise_paths", "unordered_paths"):  # each named by its own key
                _pathset(getattr(rule, key), f"comparer.endpoints[{i}].{key}")
            self.rules(rule.match)

    def rules(self, endpoint: str) -> Rules:
        """The rules for ``endpoint`` (cached)."""
        found = self._rules.get(endpoint)
        if found is None:
            if len(self._rules) >= self.MAX_CACHED_ENDPOINTS:
                self._rules.clear()
            found = self._rules[endpoint] = _rules(self.config, endpoint)
        return found

    def endpoint(self, result: ReplayResult) -> str:
        """The endpoint name of ``result`` (JSON-RPC method, configured route, else the stamped name)."""
        return self.namer.name(result.request, result.endpoint)

    def compare(self, result: ReplayResult) -> Verdict:
        """Compare the candidate with the baseline (noise-cancelled by its twin), or with the logged origin.

        A candidate or baseline that was never reached (UNREACHED_KINDS) makes the result
        "not compared" (``error="not_reached"``). With a baseline: errors (the same error
        kind on both sides is no diff; when either side errored nothing else is
        compared), status, headers when ``compare_headers``, bodies, latency. The twin is
        the secondary, else the probe (the baseline asked twice); each candidate diff on
        a path where the baseline and the twin also differ (or above it) in this same
        request, or on a ``noise_paths`` path, moves to ``Verdict.noise``. Without a
        baseline: the candidate's status against ``origin.status``, its size against
        ``origin.bytes`` when ``compare_origin_size``, and its body's sha256 against
        ``origin.body_sha256`` when logged (and the body was not truncated); the twin is
        then the probe (the candidate asked twice), and a status or error difference
        between two answers of the candidate is never taken as noise — against what
        production logged, a status change is always worth seeing.
        """
        endpoint = self.endpoint(result)
        responses = result.responses
        candidate = responses.get("candidate")
        baseline = responses.get("baseline")
        reference = "baseline" if baseline is not None else "origin"
        if candidate is None:
            return Verdict(endpoint, reference, (), "no_candidate")
        for name, response in (("candidate", candidate), ("baseline", baseline)):
            reason = unreached(response)
            if reason is not None:
                return Verdict(endpoint, reference, (), "not_reached", not_reached=(name, reason))
        rules = self.rules(endpoint)
        ratio = None
        twin_name: str | None = None
        evidence: list[FieldDiff] = []
        if baseline is not None:
            base_view = _view(baseline) if baseline.error is None else None
            raw = self.diff_pair(baseline, candidate, rules, base_view)
            ratio = _latency_ratio(baseline, candidate)
            if ratio is not None and rules.latency_ratio_threshold > 0:
                assert baseline.latency is not None and candidate.latency is not None
                slower = candidate.latency - baseline.latency
                if ratio > rules.latency_ratio_threshold and slower > rules.latency_min_delta_seconds:
                    raw.append(FieldDiff("latency", "latency", baseline.latency, candidate.latency))
            for name in ("secondary", PROBE):
                twin = responses.get(name)
                if twin is not None and unreached(twin) is None:
                    twin_name = name
                    evidence = self.diff_pair(baseline, twin, rules, base_view)
                    break
        elif result.origin is not None:
            raw = _against_origin(result.origin, candidate, rules)
            probe = responses.get(PROBE)
            if probe is not None and unreached(probe) is None:
                twin_name = PROBE
                evidence = [d for d in _against_origin(_as_origin(candidate), probe, rules) if d.kind not in ("status", "error")]
        else:
            return Verdict(endpoint, reference, (), "no_reference")
        if rules.json.ignore:
            raw = [d for d in raw if d.path not in rules.json.ignore]
            evidence = [d for d in evidence if d.path not in rules.json.ignore]
        real, noise = split_noise(raw, evidence, rules.noise)
        return Verdict(
            endpoint, reference, tuple(real[:MAX_DIFFS]), None, tuple(noise), tuple(evidence), ratio, twin_name
        )

    def diff_pair(
        self, reference: Response, other: Response, rules: Rules, reference_view: _Body | None = None
    ) -> list[FieldDiff]:
        """Every difference between two responses to the same request under ``rules``."""
        if reference.error is not None or other.error is not None:
            if error_kind(reference.error) != error_kind(other.error):
                return [FieldDiff("error", "error", reference.error, other.error)]
            return []
        diffs: list[FieldDiff] = []
        if reference.status != other.status:
            diffs.append(FieldDiff("status", "status", reference.status, other.status))
        if rules.compare_headers:
            diffs.extend(diff_headers(reference, other, rules.ignore_headers))
        # -- streams (issue 21, comparer/streams.py): arrival cadence, and event-stream
        # bodies event by event (then not compared again below) --
        streamed = diff_streams(reference, other, rules.streams, rules.json, max(0, MAX_DIFFS - len(diffs)))
        diffs.extend(streamed.diffs)
        if reference.body != other.body and not streamed.body_compared:
            left = reference_view if reference_view is not None else _view(reference)
            budget = max(0, MAX_DIFFS - len(diffs))
            diffs.extend(_diff_views(left, _view(other), budget, rules.json))
        return diffs


def split_noise(
    raw: list[FieldDiff], evidence: list[FieldDiff], noise_paths: PathSet
) -> tuple[list[FieldDiff], list[FieldDiff]]:
    """(real, noise): a diff is noise when its path is in ``noise_paths`` or lies at or
    beneath a path where the baseline and the secondary differ (``evidence``)."""
    if not evidence and not noise_paths:
        return raw, []
    noisy = [e.path for e in evidence]
    real: list[FieldDiff] = []
    noise: list[FieldDiff] = []
    for d in raw:
        if d.path in noise_paths or any(is_within(d.path, p) for p in noisy):
            noise.append(d)
        else:
            real.append(d)
    return real, noise


def _latency_ratio(baseline: Response, candidate: Response) -> float | None:
    if baseline.error is not None or candidate.error is not None:
        return None
    if baseline.latency is None or candidate.latency is None or baseline.latency <= 0:
        return None
    return candidate.latency / baseline.latency


def _as_origin(response: Response) -> Origin:
    """A first answer of the candidate in the shape of a logged origin (to diff its probe against)."""
    body_sha = None if response.truncated else _sha256(response.body)
    return Origin(status=response.status, bytes=len(response.body), body_sha256=body_sha)


def _against_origin(origin: Origin, candidate: Response, rules: Rules) -> list[FieldDiff]:
    if candidate.error is not None:
        return [FieldDiff("error", "error", None, candidate.error)]
    diffs: list[FieldDiff] = []
    if origin.status is not None and origin.status != candidate.status:
        diffs.append(FieldDiff("status", "status", origin.status, candidate.status))
    if rules.compare_origin_size and origin.bytes is not None and not candidate.truncated:
        size = len(candidate.body)
        if abs(size - origin.bytes) > rules.origin_size_tolerance_relative * max(size, origin.bytes):
            diffs.append(FieldDiff("size", "size", origin.bytes, size))
    if origin.body_sha256 is not None and not candidate.truncated:
        digest = _sha256(candidate.body)
        if digest != origin.body_sha256.lower():
            diffs.append(FieldDiff("$", "body_digest", origin.body_sha256, digest))
    return diffs
