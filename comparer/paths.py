"""Path patterns for ignore, noise and unordered-array rules. Pure, no I/O.

A pattern that starts with ``$`` is a JSONPath over the paths the diff engine writes
(``$.items[3].price``, ``$['a b']``, ``$[?(@.id==7)]``):

* ``.name`` / ``['name']`` — that key; ``[3]`` — that index;
* ``.*`` / ``[*]`` — any one child (key, index or JSON-RPC id);
* ``..name`` — ``name`` at any depth below; ``..*`` — anything below.

A pattern matches a path and everything beneath it: ``$.meta`` covers ``$.meta.ts``.
Any other pattern (``status``, ``header:x-*``, ``line:*``, ``latency``) is a shell glob
over the whole path string (``fnmatch``, case-sensitive).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable

from shadowreplay.contract.errors import ConfigError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_QUOTED = r"\['(?:[^'\\]|\\.)*'\]"
_CHILD = rf"(?:\.{_NAME}|{_QUOTED}|\[\d+\]|\[\?\(@\.id==(?:[^)]|\)(?!\]))*\)\])"
_TOKEN = re.compile(
    rf"(?P<deep>\.(?=[.\[]))?(?:(?P<star>\.\*|\[\*\])|\.(?P<name>{_NAME})|(?P<quoted>{_QUOTED})|\[(?P<index>\d+)\])"
)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """One pattern as a regex over diff paths; ConfigError names a malformed pattern."""
    if not pattern.startswith("$"):
        return re.compile(fnmatch.translate(pattern))
    out = [r"\$"]
    pos = 1
    while pos < len(pattern):
        m = _TOKEN.match(pattern, pos)
        if m is None or m.end() == pos:
            raise ConfigError(f"bad path pattern {pattern!r} at character {pos + 1}")
        if m["deep"]:
            out.append(f"(?:{_CHILD})*")
        if m["star"] is not None:
            out.append(_CHILD)
        elif m["name"] is not None:
            # A plain name is written ".name" by the engine; quoted form matches too.
            name = m["name"]
            out.append(rf"(?:\.{re.escape(name)}|\['{re.escape(name)}'\])")
        elif m["quoted"] is not None:
            out.append(re.escape(m["quoted"]))
        else:
            out.append(re.escape(f"[{m['index']}]"))
        pos = m.end()
    out.append(f"(?:{_CHILD})*")
    return re.compile("".join(out))


class PathSet:
    """A set of path patterns; ``path in s`` says whether any of them covers ``path``."""

    __slots__ = ("patterns", "_regex")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns: tuple[str, ...] = tuple(dict.fromkeys(patterns))
        regexes = [compile_pattern(p).pattern for p in self.patterns]
        self._regex = re.compile("|".join(f"(?:{r})" for r in regexes)) if regexes else None

    def __contains__(self, path: object) -> bool:
        return self._regex is not None and isinstance(path, str) and self._regex.fullmatch(path) is not None

    def __bool__(self) -> bool:
        return self._regex is not None

    def __or__(self, other: PathSet) -> PathSet:
        return PathSet((*self.patterns, *other.patterns))

    def __repr__(self) -> str:
        return f"PathSet({list(self.patterns)!r})"


def is_within(path: str, ancestor: str) -> bool:
    """``path`` is ``ancestor`` or lies beneath it (``$.a[2].b`` is within ``$.a``)."""
    if not path.startswith(ancestor):
        return False
    rest = path[len(ancestor) :]
    return not rest or (ancestor.startswith("$") and rest[0] in ".[")


# ``[?(@.id==7)][1]`` (the second answer with a duplicate id) is one element too.
_RPC_ID = re.compile(r"\[\?\(@\.id==(?:[^)]|\)(?!\]))*\)\](?:\[\d+\])?")
_INDEX = re.compile(r"\[\d+\]")


@functools.lru_cache(maxsize=65536)
def field_key(path: str) -> str:
    """The field a diff path belongs to, for counting per endpoint: array indexes and
    JSON-RPC ids become ``[*]`` (``$.items[3].ts`` → ``$.items[*].ts``,
    ``$[?(@.id==7)].result`` → ``$[*].result``); other paths are their own field."""
    if not path.startswith("$") or "[" not in path:
        return path
    return _INDEX.sub("[*]", _RPC_ID.sub("[*]", path))
