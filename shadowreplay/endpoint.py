"""Endpoint names: the low-cardinality label results are grouped by.

HTTP requests are named by method and path template (numeric ids, UUIDs and long hex
hashes collapsed to placeholders), e.g. ``GET /users/{id}/orders``. Shared by the
replayer (which stamps ``ReplayResult.endpoint``) and the comparer (which groups by it).
"""

from __future__ import annotations

import re
from functools import lru_cache

from shadowreplay.record import readable

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^[0-9a-fA-F]{16,}$")
_NUM = re.compile(r"^-?\d+(\.\d+)?$")


def path_template(path: str) -> str:
    """``/users/42/orders/9f1c…`` → ``/users/{id}/orders/{hash}``."""
    parts = path.split("/")
    for i, seg in enumerate(parts):
        if not seg:
            continue
        if _NUM.match(seg):
            parts[i] = "{id}"
        elif _UUID.match(seg):
            parts[i] = "{uuid}"
        elif _HEX.match(seg):
            parts[i] = "{hash}"
    return "/".join(parts) or "/"


def endpoint_name(method: str, target: str) -> str:
    """The endpoint a request belongs to: ``METHOD /path/{template}``."""
    return _named(method, target.split("?", 1)[0])


@lru_cache(maxsize=16_384)  # paths repeat: a hit costs a dict lookup, a template ~1 µs
def _named(method: str, path: str) -> str:
    # A path holding bytes that are not UTF-8 is named by its readable form (U+FFFD):
    # names become metric labels and JSON, which take text only.
    return f"{method.upper()} {path_template(readable(path))}"
