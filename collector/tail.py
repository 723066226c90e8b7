"""``shadowreplay tail``: follow access-log files and ship their lines with acks.

Like ``tail -F``: follows each file by name across rename rotation (the old file is read
to its end before the new one is opened) and copytruncate (the size drops below our
position: start again at 0). Lines are parsed here with the collector's own line parsers
(``collector/lines.py``) and shipped as *parsed records* — nginx variable names for
nginx JSON and combined, labels for LTSV — in acknowledged PackedForward chunks, so the
collector maps them with its field map and parses nothing. The request time found in
the line (``msec``, ``time_iso8601``, ``time_local``, ``time``) becomes the EventTime.

Exactly once across restarts of either side: the position of each file (path, inode,
offset) is written to the state file only after the collector acknowledged the chunk
holding the lines before it; while the collector is down the tail retries the same
chunk with exponential backoff and reads nothing further (it holds its place in the
file, not in memory). A restarted tail resumes from the state file, also into a file
that was rotated away meanwhile (found by inode in the same directory).

Every line is accounted for: it is *shipped* once the collector acknowledged it and did
not reject it, else *rejected* with a reason — here (unparseable: ``bad_json``,
``bad_combined``, ``too_long``; ``bad_time``, ``missing_time``: no readable request time,
never "now") or by the collector, which reports the entries of each chunk it skipped in
the ack (``report_rejected``, see forward_client.py). Counts are summarised on stderr
periodically and at exit, and written to ``--metrics-file`` (Prometheus text format).

Ids: each record carries ``LINE_ID_FIELD``, a hash of the host, the file's identity
(device, inode) and the line's offset and bytes, so identical lines get distinct ids and
a line shipped twice (after a restart, or a chunk re-sent) keeps its id. A chunk keeps
its chunk id across retries.

Standard library + msgpack only: this module runs from the zipapp built by
``make tail-pyz`` with a bare ``python3``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from shadowreplay.collector.forward_client import ForwardClient, ForwardClientError, new_chunk_id
from shadowreplay.collector.lines import (
    ESCAPES,
    ESCAPES_DECODE,
    FORMATS,
    LINE_ID_FIELD,
    TIME_FIELDS,
    TIME_PARSERS,
    LineError,
    line_parser,
)
from shadowreplay.contract.errors import ShadowError

log = logging.getLogger(__name__)

READ_BYTES = 256 * 1024
STATE_VERSION = 1


class TailError(ShadowError):
    """The tail cannot run (bad flags, unreadable state file)."""


@dataclass(frozen=True)
class TailOptions:
    """Everything ``shadowreplay tail`` is told; see ``add_arguments`` for meanings."""

    files: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 24224
    tag: str = "access"
    format: str = "nginx_json"
    state_path: str = "shadowreplay-tail.state.json"
    batch_lines: int = 1000
    flush_seconds: float = 1.0
    from_start: bool = False
    time_field: str = ""
    poll_seconds: float = 0.2
    ack_timeout_seconds: float = 30.0
    backoff_initial_seconds: float = 0.2
    backoff_max_seconds: float = 10.0
    report_seconds: float = 60.0
    rotate_wait_seconds: float = 2.0
    max_line_bytes: int = 1024 * 1024
    # A chunk is shipped once its lines hold this many bytes (below the collector's
    # max_chunk_bytes, 8 MiB by default: a larger chunk is refused, never acknowledged).
    max_chunk_bytes: int = 4 * 1024 * 1024
    escapes: str = ESCAPES_DECODE
    metrics_file: str = ""
    shared_key_env: str = ""
    username: str = ""
    password_env: str = ""


@dataclass
class TailStats:
    """Counters a caller (or a test) can read while the tail runs. Every line read ends
    up in exactly one of ``lines`` (shipped) and ``rejected`` (by reason), once its chunk
    is acknowledged (rejected here: at once)."""

    lines: int = 0  # shipped: acknowledged by the collector and not rejected by it
    chunks: int = 0
    retries: int = 0
    rotations: int = 0
    truncations: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    # Chunks whose ack said nothing about rejects (a collector that does not report them):
    # their lines count as shipped, which may include lines it skipped.
    unreported_chunks: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n

    def summary(self) -> str:
        """``N lines shipped in C chunks, M rejected (reason: n, ...)``, then what else
        happened, when it did: rotations and truncations followed, and chunks the collector
        acknowledged without saying what it rejected."""
        text = f"{self.lines} lines shipped in {self.chunks} chunks, {self.rejected_total} rejected"
        if self.rejected:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected.items())) + ")"
        if self.rotations or self.truncations:
            text += f"; followed {self.rotations} rotations, {self.truncations} truncations"
        if self.unreported_chunks:
            text += (f"; {self.unreported_chunks} chunks acknowledged without reject counts "
                     "(their lines count as shipped, the collector may have skipped some)")
        return text


class _File:
    """One followed path and the file currently open for it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh: IO[bytes] | None = None
        self.inode = 0
        self.dev = 0
        self.offset = 0  # acknowledged: every line before it is on the bus
        self.read_pos = 0  # read: every line before it is acknowledged or pending
        self.skipping = False  # inside an overlong line
        self.rotated_at: float | None = None  # when a new file appeared under our name
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.pending_bytes = 0  # of the lines in events
        self.chunk_id = ""  # of the pending chunk: kept across retries
        self.since = 0.0  # monotonic time the oldest pending line was read

    def open(self, path: str, pos: int) -> None:
        self.close()
        fh = open(path, "rb")  # noqa: SIM115 - kept open while following
        st = os.fstat(fh.fileno())
        self.fh, self.inode, self.dev = fh, st.st_ino, st.st_dev
        self.offset = self.read_pos = min(pos, st.st_size) if pos >= 0 else st.st_size
        fh.seek(self.read_pos)
        self.skipping = False
        self.rotated_at = None

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class Tail:
    """Follows ``options.files`` and ships their lines; ``run`` until ``stop`` is set."""

    def __init__(self, options: TailOptions, client: ForwardClient | None = None) -> None:
        if options.format not in FORMATS:
            raise TailError(f"--format: unknown format {options.format!r} (known: {', '.join(FORMATS)})")
        if options.batch_lines < 1:
            raise TailError("--batch-lines: must be >= 1")
        if options.max_chunk_bytes < 1024:
            raise TailError("--max-chunk-bytes: must be >= 1024")
        if options.escapes not in ESCAPES:
            raise TailError(f"--escapes: {' or '.join(ESCAPES)}, got {options.escapes!r}")
        if not options.files:
            raise TailError("no files to follow")
        self.options = options
        self.stats = TailStats()
        self._parse = line_parser(options.format, options.escapes)
        self._parse_time = TIME_PARSERS["auto"]
        self._host = socket.gethostname().encode("utf-8", "surrogateescape")
        self._client = client if client is not None else _client_from(options)
        self._files = [_File(os.path.abspath(p)) for p in dict.fromkeys(options.files)]
        self._state: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._outage = False
        self._unreported_logged = False
        self._reported: dict[str, int] = {}
        self._next_report = time.monotonic() + options.report_seconds
        self._started = False

    # -- running -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to return (pending, unacknowledged lines are shipped again next time)."""
        self._stop.set()

    def run(self) -> None:
        """Follow until ``stop()``; the state file holds the position on return."""
        self._load_state()
        for f in self._files:
            self._start(f)
        self._started = True
        try:
            while not self._stop.is_set():
                busy = False
                for f in self._files:
                    busy = self._step(f) or busy
                self._report()
                if not busy:
                    self._stop.wait(self.options.poll_seconds)
        finally:
            for f in self._files:
                f.close()
            self._client.close()
            self._report(final=True)

    def _step(self, f: _File) -> bool:
        """Read what is new in ``f``; ship when a batch is full or old. True if it did work."""
        if f.fh is None:
            self._start(f)
            if f.fh is None:
                return False
        got = self._read(f)
        if (
            len(f.events) >= self.options.batch_lines
            or f.pending_bytes >= self.options.max_chunk_bytes
            or (f.read_pos > f.offset and time.monotonic() - f.since >= self.options.flush_seconds)
        ):
            self._ship(f)
        if not got:
            self._check_rotation(f)
        return got

    # -- reading -------------------------------------------------------------------------

    def _read(self, f: _File) -> bool:
        assert f.fh is not None
        room = self.options.batch_lines - len(f.events)
        if room <= 0 or f.pending_bytes >= self.options.max_chunk_bytes:
            return False
        data = f.fh.read(READ_BYTES)
        if not data:
            return False
        end = data.rfind(b"\n")
        if end < 0 and len(data) == READ_BYTES and not f.skipping:
            # A line longer than one read: read on, up to the longest line allowed.
            data += f.fh.read(max(0, self.options.max_line_bytes + 1 - len(data)))
            end = data.rfind(b"\n")
        if end < 0:
            if len(data) > self.options.max_line_bytes or f.skipping:
                if not f.skipping:
                    self.stats.reject("too_long")
                f.skipping = True
                f.read_pos += len(data)
                return True
            f.fh.seek(f.read_pos)  # a partial line: wait for its end
            return False
        if not f.read_pos > f.offset:
            f.since = time.monotonic()
        pos = f.read_pos
        lines = data[: end + 1].split(b"\n")
        lines.pop()  # the empty piece after the last newline
        for line in lines:
            if f.skipping:
                f.skipping = False
                pos += len(line) + 1
                continue
            if room <= 0 or f.pending_bytes >= self.options.max_chunk_bytes:
                break
            self._line(f, line, pos)
            pos += len(line) + 1
            room = self.options.batch_lines - len(f.events)
        f.read_pos = pos
        f.fh.seek(pos)
        return True

    def _line(self, f: _File, raw: bytes, offset: int) -> None:
        """Parse the line that starts at ``offset`` of ``f`` into a pending event, or count
        it rejected with its reason."""
        text = raw.decode("utf-8", "surrogateescape").rstrip("\r")
        if not text.strip():
            return
        if len(raw) > self.options.max_line_bytes:
            self.stats.reject("too_long")
            return
        try:
            rec = self._parse(text)
            ts = self._time_of(rec)
        except LineError as exc:
            self.stats.reject(exc.reason)
            return
        rec[LINE_ID_FIELD] = self._line_id(f, offset, raw)
        if not f.events:
            f.chunk_id = new_chunk_id()
        f.events.append((ts, rec))
        f.pending_bytes += len(raw)

    def _line_id(self, f: _File, offset: int, raw: bytes) -> str:
        """The line's id: where it is (host, device, inode, offset) and what it says."""
        h = hashlib.blake2b(digest_size=12)
        h.update(b"%s\x00%d\x00%d\x00%d\x00" % (self._host, f.dev, f.inode, offset))
        h.update(raw)
        return h.hexdigest()

    def _time_of(self, rec: dict[str, Any]) -> int:
        """The request time of ``rec``; LineError ``bad_time`` when it cannot be read,
        ``missing_time`` when there is none (never "now": a replay schedules by it)."""
        names = (self.options.time_field,) if self.options.time_field else TIME_FIELDS
        for name in names:
            value = rec.get(name)
            if value is not None and value not in ("", "-"):
                try:
                    return self._parse_time(value)
                except LineError:
                    raise LineError(f"unreadable request time in {name!r}: {value!r:.64}", "bad_time") from None
        raise LineError(f"no request time (looked for {', '.join(names)})", "missing_time")

    # -- rotation ------------------------------------------------------------------------

    def _start(self, f: _File) -> None:
        """Open ``f`` at its saved position, in the rotated-away file if need be."""
        saved = self._state.get(f.path)
        try:
            st = os.stat(f.path)
        except FileNotFoundError:
            st = None
        if saved is not None and (st is None or (st.st_ino, st.st_dev) != (saved["inode"], saved["dev"])):
            old = _find_inode(os.path.dirname(f.path), saved["inode"], saved["dev"])
            if old is not None:
                log.info("%s: resuming in the rotated file %s at offset %d", f.path, old, saved["offset"])
                f.open(old, saved["offset"])
                return
            if st is not None:
                log.warning("%s: rotated while the tail was down and the old file is gone; starting the new one", f.path)
        if st is None:
            return
        if saved is not None and (st.st_ino, st.st_dev) == (saved["inode"], saved["dev"]):
            pos = saved["offset"]
            if st.st_size < pos:
                log.warning("%s: truncated while the tail was down; starting at 0", f.path)
                pos = 0
        elif saved is not None or self.options.from_start or self._started:
            pos = 0  # a file that appeared while we run is new from its first line
        else:
            pos = -1  # a file we never saw: start at its end
        try:
            f.open(f.path, pos)
        except FileNotFoundError:
            return
        self._save(f)

    def _check_rotation(self, f: _File) -> None:
        assert f.fh is not None
        try:
            st = os.stat(f.path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_ino, st.st_dev) == (f.inode, f.dev):
            if st.st_size < f.read_pos:  # copytruncate
                self._ship(f)
                if f.read_pos > f.offset:
                    return  # not acknowledged (stopping)
                self.stats.truncations += 1
                log.info("%s: truncated (copytruncate); reading from the start", f.path)
                f.fh.seek(0)
                f.offset = f.read_pos = 0
                f.skipping = False
                self._save(f)
            return
        if st is None:
            return  # renamed and not recreated yet: keep reading the old one
        # The writer may still append to the old file until it reopens its log
        # (nginx -s reopen): keep reading it for rotate_wait_seconds.
        now = time.monotonic()
        if f.rotated_at is None:
            f.rotated_at = now
        if now - f.rotated_at < self.options.rotate_wait_seconds:
            return
        # Renamed away and recreated: the old file is read to its end (we are at EOF
        # now); a last line without a newline is the writer's final word.
        tail = f.fh.read()
        if tail and not f.skipping:
            self._line(f, tail, f.read_pos)
            f.read_pos += len(tail)
        self._ship(f)
        if f.read_pos > f.offset:
            return  # not acknowledged (stopping): keep the old file's position
        self.stats.rotations += 1
        log.info("%s: rotated; following the new file", f.path)
        try:
            f.open(f.path, 0)
        except FileNotFoundError:
            return
        self._save(f)

    # -- shipping ------------------------------------------------------------------------

    def _ship(self, f: _File) -> None:
        """Send the pending lines of ``f`` until acknowledged (or stopping), then save."""
        if f.read_pos <= f.offset:
            return
        events = f.events
        backoff = self.options.backoff_initial_seconds
        while events:
            try:
                rejected = self._client.send(self.options.tag, events, chunk_id=f.chunk_id, report_rejected=True)
            except ForwardClientError as exc:
                self.stats.retries += 1
                if not self._outage:
                    self._outage = True
                    log.warning("collector unavailable, holding position and retrying: %s", exc)
                delay = backoff * (0.5 + random.random() / 2)
                if self._stop.wait(delay):
                    return
                backoff = min(backoff * 2, self.options.backoff_max_seconds)
                continue
            if self._outage:
                self._outage = False
                log.warning("collector reachable again; shipping resumes")
            self._acknowledged(len(events), rejected)
            break
        f.events = []
        f.pending_bytes = 0
        f.offset = f.read_pos
        self._save(f)

    def _acknowledged(self, count: int, rejected: dict[str, int] | None) -> None:
        """Count a chunk of ``count`` lines the collector acknowledged, ``rejected`` of
        them (reason → n) skipped."""
        stats = self.stats
        stats.chunks += 1
        if rejected is None:
            stats.unreported_chunks += 1
            stats.lines += count
            if not self._unreported_logged:
                self._unreported_logged = True
                log.warning(
                    "the collector does not report the lines it rejects (not a shadowreplay collector, or an "
                    "older one): acknowledged lines are counted as shipped"
                )
            return
        skipped = min(count, sum(rejected.values()))
        stats.lines += count - skipped
        for reason, n in rejected.items():
            stats.reject(reason, n)

    # -- state ---------------------------------------------------------------------------

    def _load_state(self) -> None:
        path = self.options.state_path
        try:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise TailError(f"--state {path}: unreadable: {exc}") from exc
        files = raw.get("files") if isinstance(raw, dict) else None
        if not isinstance(files, dict):
            raise TailError(f"--state {path}: not a shadowreplay tail state file")
        for name, entry in files.items():
            if isinstance(entry, dict) and all(isinstance(entry.get(k), int) for k in ("inode", "dev", "offset")):
                self._state[name] = {k: entry[k] for k in ("inode", "dev", "offset")}

    def _save(self, f: _File) -> None:
        self._state[f.path] = {"inode": f.inode, "dev": f.dev, "offset": f.offset}
        path = self.options.state_path
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": STATE_VERSION, "files": self._state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _report(self, final: bool = False) -> None:
        """Every ``report_seconds`` (and at exit): the summary on stderr when rejects grew
        (at exit, always), and the metrics file."""
        now = time.monotonic()
        if not final and now < self._next_report:
            return
        self._next_report = now + self.options.report_seconds
        stats = self.stats
        if stats.rejected != self._reported or (final and stats.rejected):
            self._reported = dict(stats.rejected)
            log.warning("%s so far", stats.summary())
        elif final:
            log.info("%s", stats.summary())
        if self.options.metrics_file:
            try:
                write_metrics(self.options.metrics_file, stats)
            except OSError as exc:
                log.warning("--metrics-file %s: cannot write: %s", self.options.metrics_file, exc)


def write_metrics(path: str, stats: TailStats) -> None:
    """``stats`` in the Prometheus text format, written atomically to ``path`` (for
    node_exporter's textfile collector, or any scraper of files)."""
    lines = [
        "# HELP shadow_tail_lines_shipped_total Log lines acknowledged by the collector and stored on the bus.",
        "# TYPE shadow_tail_lines_shipped_total counter",
        f"shadow_tail_lines_shipped_total {stats.lines}",
        "# HELP shadow_tail_lines_rejected_total Log lines not shipped, by reason (here or at the collector).",
        "# TYPE shadow_tail_lines_rejected_total counter",
    ]
    for reason, n in sorted(stats.rejected.items()):
        label = reason.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'shadow_tail_lines_rejected_total{{reason="{label}"}} {n}')
    lines += [
        "# HELP shadow_tail_chunks_total Chunks acknowledged by the collector.",
        "# TYPE shadow_tail_chunks_total counter",
        f"shadow_tail_chunks_total {stats.chunks}",
        "# HELP shadow_tail_retries_total Chunk sends that failed and were retried.",
        "# TYPE shadow_tail_retries_total counter",
        f"shadow_tail_retries_total {stats.retries}",
    ]
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _find_inode(directory: str, inode: int, dev: int) -> str | None:
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return None
    for name in sorted(names):
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (inode, dev):
            return path
    return None


def _client_from(options: TailOptions) -> ForwardClient:
    key = None
    if options.shared_key_env:
        value = os.environ.get(options.shared_key_env)
        if not value:
            raise TailError(f"--shared-key-env: environment variable {options.shared_key_env} is not set")
        key = value.encode()
    password = b""
    if options.password_env:
        password = os.environ.get(options.password_env, "").encode()
    return ForwardClient(
        options.host,
        options.port,
        timeout_seconds=options.ack_timeout_seconds,
        shared_key=key,
        username=options.username,
        password=password,
    )


# -- command line (shared by `shadowreplay tail` and the zipapp) ---------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="access-log files to follow (by name, like tail -F)")
    p.add_argument("--collector", default="127.0.0.1:24224", metavar="HOST:PORT", help="default 127.0.0.1:24224")
    p.add_argument("--tag", default="access", help="forward-protocol tag (default access)")
    p.add_argument("--format", default="nginx_json", choices=FORMATS, help="line format (default nginx_json)")
    p.add_argument(
        "--escapes", default=ESCAPES_DECODE, choices=ESCAPES,
        help="ltsv/combined values: decode (default) undoes the \\xHH, \\\", \\\\, \\n... escapes nginx "
        "(escape=default or json) and Apache write; keep takes them as written (nginx escape=none)",
    )
    p.add_argument(
        "--state", default="shadowreplay-tail.state.json", metavar="FILE",
        help="where file positions are kept, written after each ack (default shadowreplay-tail.state.json)",
    )
    p.add_argument("--batch-lines", type=int, default=1000, metavar="N", help="lines per chunk (default 1000)")
    p.add_argument(
        "--max-chunk-bytes", type=int, default=4 * 1024 * 1024, metavar="N",
        help="ship a chunk once its lines hold N bytes (default 4 MiB; keep it below the collector's max_chunk_bytes)",
    )
    p.add_argument("--flush-seconds", type=float, default=1.0, metavar="S", help="ship a partial chunk after S (default 1)")
    p.add_argument("--from-start", action="store_true", help="read files never seen before from the start (default: end)")
    p.add_argument("--time-field", default="", metavar="NAME", help="field with the request time (default: msec, time_iso8601, time_local, time)")
    p.add_argument("--ack-timeout", type=float, default=30.0, metavar="S", help="wait this long for an ack (default 30)")
    p.add_argument("--max-backoff", type=float, default=10.0, metavar="S", help="longest wait between retries (default 10)")
    p.add_argument(
        "--rotate-wait", type=float, default=2.0, metavar="S",
        help="after a rename rotation, keep reading the old file this long (default 2)",
    )
    p.add_argument(
        "--report-seconds", type=float, default=60.0, metavar="S",
        help="period of the stderr summary (lines shipped, rejected by reason) and of --metrics-file (default 60)",
    )
    p.add_argument(
        "--metrics-file", default="", metavar="FILE",
        help="write shipped/rejected counts here in the Prometheus text format, every --report-seconds and at exit",
    )
    p.add_argument("--shared-key-env", default="", metavar="VAR", help="environment variable holding the forward shared key")
    p.add_argument("--username", default="", help="forward-protocol user (with --password-env)")
    p.add_argument("--password-env", default="", metavar="VAR", help="environment variable holding the user's password")


def options_from_args(args: argparse.Namespace) -> TailOptions:
    host, sep, port = str(args.collector).rpartition(":")
    if not sep or not port.isdigit():
        raise TailError(f"--collector: expected HOST:PORT, got {args.collector!r}")
    return TailOptions(
        files=tuple(args.files),
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        tag=args.tag,
        format=args.format,
        escapes=args.escapes,
        state_path=args.state,
        batch_lines=args.batch_lines,
        max_chunk_bytes=args.max_chunk_bytes,
        metrics_file=args.metrics_file,
        flush_seconds=args.flush_seconds,
        from_start=args.from_start,
        time_field=args.time_field,
        ack_timeout_seconds=args.ack_timeout,
        backoff_max_seconds=args.max_backoff,
        report_seconds=args.report_seconds,
        rotate_wait_seconds=args.rotate_wait,
        shared_key_env=args.shared_key_env,
        username=args.username,
        password_env=args.password_env,
    )


def run_from_args(args: argparse.Namespace) -> TailStats:
    """Run until SIGINT/SIGTERM; used by the CLI and the zipapp."""
    import signal

    tail = Tail(options_from_args(args))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: tail.stop())
    tail.run()
    return tail.stats


def main(argv: Sequence[str] | None = None) -> int:
    """The zipapp's entry point."""
    p = argparse.ArgumentParser(prog="shadowreplay-tail", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--log-level", default="INFO")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        run_from_args(args)
    except ShadowError as exc:
        print(f"shadowreplay-tail: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
