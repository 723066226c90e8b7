"""Process-wide settings: logging (every command) and the garbage collector (the
long-running stages: ``run``, ``collect``, ``replay``, ``compare``, ``demo``).

Logging: ``--log-format text`` (the default) writes ``time level logger: message``
lines; ``json`` writes one JSON object per line, for log shippers (see
``JsonFormatter``). Both go to standard error.


Each request or event allocates a few dozen short-lived containers (decoded records,
headers, responses, results); with CPython's default collector thresholds a
young-generation collection then runs every ten or so requests and a full one, which
walks every object the process holds (imported modules, aiohttp, kafka-python), every
few thousand. ``tune_gc`` moves what start-up created out of the collector's sight
(``gc.freeze``) and collects the young generation ten times less often. Cycles are
still collected; memory grows by at most a few thousand young objects. The CPU it saves
per replayed request shows in bench/replayer.py.
"""

from __future__ import annotations

import gc
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

import orjson

YOUNG_THRESHOLD = 10_000  # CPython's default is 700
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601 with
    microseconds), ``level``, ``logger``, ``message``, and ``exc`` (the formatted
    traceback) when the record carries an exception. Newlines inside values are escaped,
    so a record is always exactly one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Log at ``level`` (one of LOG_LEVELS) in ``fmt`` (text or json) to ``stream``
    (standard error), replacing whatever the root logger had."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
