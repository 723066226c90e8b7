"""Endpoint names: the low-cardinality label results are grouped by.

HTTP requests are named by method and path template, e.g. ``GET /users/{id}/orders``:
a segment that looks like an identifier is replaced by a placeholder, so a name never
carries an id from a path. Shared by the replayer (which stamps ``ReplayResult.endpoint``)
and the comparer (which groups by it and bounds how many names it keeps).

Placeholders, first rule that matches a segment:

* ``{uuid}`` — a UUID; ``{hash}`` — 16 or more hex digits;
* ``{id}`` — any other segment holding a digit (``42``, ``ord_8f3k``, ``2024-05-01``,
  ``a.3f9c.js``), except a word ending in one digit or a version (``v2``, ``oauth2``,
  ``v1.2``), which stay as they are because they name routes;
* ``{value}`` — a segment longer than 32 characters, or holding ``@`` or ``%`` (tokens,
  e-mail addresses, percent-encoded text).

Slugs without digits (``/blog/my-first-post``) cannot be told from route names; name
them with ``comparer.routes``. The comparer keeps at most ``comparer.max_endpoints``
names and counts the rest under ``other``.
"""

from __future__ import annotations

import re
from functools import lru_cache

from shadowreplay.contract.record import readable

#: A name is cut to this many characters (a template of a very deep path).
MAX_NAME_CHARS = 120
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^[0-9a-fA-F]{16,}$")
_DIGIT = re.compile(r"\d")
_ROUTE_WORD = re.compile(r"^(?:[A-Za-z]+\d|[vV]\d+(?:\.\d+)*)$")
_MAX_LITERAL_CHARS = 32


def _segment(seg: str) -> str:
    if _UUID.match(seg):
        return "{uuid}"
    if _HEX.match(seg):
        return "{hash}"
    if _DIGIT.search(seg) and not _ROUTE_WORD.match(seg):
        return "{id}"
    if len(seg) > _MAX_LITERAL_CHARS or "@" in seg or "%" in seg:
        return "{value}"
    return seg


def path_template(path: str) -> str:
    """``/users/42/orders/9f1c…`` → ``/users/{id}/orders/{hash}``."""
    parts = path.split("/")
    for i, seg in enumerate(parts):
        if seg:
            parts[i] = _segment(seg)
    return "/".join(parts) or "/"


def endpoint_name(method: str, target: str) -> str:
    """The endpoint a request belongs to: ``METHOD /path/{template}``."""
    return _named(method, target.split("?", 1)[0])


@lru_cache(maxsize=16_384)  # paths repeat: a hit is a dict lookup, far cheaper than templating
def _named(method: str, path: str) -> str:
    # A path holding bytes that are not UTF-8 is named by its readable form (U+FFFD):
    # names become metric labels and JSON, which take text only.
    name = f"{method.upper()[:16]} {path_template(readable(path))}"
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"
