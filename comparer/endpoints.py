"""Endpoint names for grouping verdicts: JSON-RPC method, configured route, or path template.

Order of precedence, first match wins:

1. JSON-RPC 2.0 request bodies: ``rpc:<method>`` (a batch whose calls share one method
   is named after it, a mixed batch is ``rpc:batch``);
2. ``routes`` from config, in order. Two forms:

   * ``"GET /api/users/{id}/cart"`` — a method (or ``*``) and a path where ``{name}``
     or ``*`` matches one segment and a trailing ``**`` any rest; the route's own text
     is the name (``*`` as method takes the request's method);
   * ``"~REGEX => NAME"`` — a regular expression searched in ``"METHOD /path"``;
     ``NAME`` may use the groups (``\\1``).

3. the name the replayer stamped on the result, else ``shadowreplay.contract.endpoint``'s
   ``METHOD /path/{template}`` (ids in the path replaced by placeholders).

A namer built with ``max_names`` keeps the first that many distinct names and answers
``other`` for any further one (logged once), so the verdict, the in-memory stats, the
divergence store and the metric labels all share one bounded set of names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shadowreplay.contract.endpoint import MAX_NAME_CHARS, endpoint_name
from shadowreplay.contract.errors import ConfigError
from shadowreplay.contract.record import RequestRecord

log = logging.getLogger(__name__)

#: The name of every endpoint past the bound (also the metrics' overflow label).
OVERFLOW = "other"
_SEGMENT = re.compile(r"^\{[^/{}]*\}$|^\*$")


@dataclass(frozen=True)
class Route:
    """One compiled route pattern."""

    spec: str
    regex: re.Pattern[str]
    name: str  # a template for ``Match.expand`` (regex form) or the fixed name
    any_method: bool = False
    expand: bool = False

    def match(self, method: str, path: str) -> str | None:
        m = self.regex.match(f"{method} {path}")
        if m is None:
            return None
        if self.expand:
            return m.expand(self.name)
        return f"{method} {self.name}" if self.any_method else self.name


def parse_route(spec: str) -> Route:
    """Compile one ``routes`` entry; ConfigError names a malformed one."""
    text = spec.strip()
    if text.startswith("~"):
        regex, sep, name = text[1:].partition("=>")
        if not sep or not regex.strip() or not name.strip():
            raise ConfigError(f"comparer.routes: {spec!r}: expected '~REGEX => NAME'")
        try:
            return Route(spec, re.compile(regex.strip()), name.strip(), expand=True)
        except re.error as exc:
            raise ConfigError(f"comparer.routes: {spec!r}: bad regex: {exc}") from exc
    method, _, path = text.partition(" ")
    if not path:
        method, path = "*", text
    path = path.strip()
    if not path.startswith("/"):
        raise ConfigError(f"comparer.routes: {spec!r}: expected 'METHOD /path/{{param}}'")
    parts = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        if seg == "**" and i == len(segments) - 1:
            parts.append(".*")
        elif _SEGMENT.match(seg):
            parts.append("[^/]+")
        else:
            parts.append(re.escape(seg))
    any_method = method == "*"
    method_re = r"[A-Z]+" if any_method else re.escape(method.upper())
    compiled = re.compile(f"{method_re} {'/'.join(parts)}$")
    name = path if any_method else f"{method.upper()} {path}"
    return Route(spec, compiled, name, any_method)


def jsonrpc_name(body: bytes | None) -> str | None:
    """``rpc:<method>`` when ``body`` is a JSON-RPC 2.0 call or batch, else None."""
    if not body or b'"jsonrpc"' not in body:
        return None
    head = body.lstrip()[:1]
    if head not in (b"{", b"["):
        return None
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    calls = doc if isinstance(doc, list) else [doc]
    methods = set()
    for call in calls:
        if not isinstance(call, dict) or call.get("jsonrpc") != "2.0" or not isinstance(call.get("method"), str):
            return None
        methods.add(call["method"])
    if len(methods) != 1:
        return "rpc:batch" if methods else None
    return "rpc:" + methods.pop()[:MAX_NAME_CHARS]


class EndpointNamer:
    """Names requests: JSON-RPC method, then ``routes`` in order, then the path template.

    ``max_names`` > 0 bounds the distinct names: the first ``max_names`` seen are kept,
    any further one is :data:`OVERFLOW`.
    """

    def __init__(self, routes: Sequence[str] = (), max_names: int = 0) -> None:
        self.routes = tuple(parse_route(r) for r in routes)
        self.max_names = max_names
        self._names: set[str] = set()
        self.overflowed = 0

    def name(self, request: RequestRecord, recorded: str = "") -> str:
        return self._bounded(self._name(request, recorded))

    def _name(self, request: RequestRecord, recorded: str) -> str:
        rpc = jsonrpc_name(request.body)
        if rpc is not None:
            return rpc
        if self.routes:
            method, path = request.method.upper(), request.path
            for route in self.routes:
                found = route.match(method, path)
                if found is not None:
                    return found[:MAX_NAME_CHARS]
        return recorded[:MAX_NAME_CHARS] or endpoint_name(request.method, request.target)

    def _bounded(self, name: str) -> str:
        if not self.max_names or name in self._names or name == OVERFLOW:
            return name
        if len(self._names) < self.max_names:
            self._names.add(name)
            return name
        self.overflowed += 1
        if self.overflowed == 1:
            log.warning(
                "more than %d endpoint names (comparer.max_endpoints): %r and any further new one are "
                "counted as %r; name routes with comparer.routes, or raise the bound",
                self.max_names,
                name,
                OVERFLOW,
            )
        return OVERFLOW
