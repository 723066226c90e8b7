"""Send one RequestRecord to one target and capture what it answers.

The sending is done by the built-in HTTP/1.1 client (``replayer/http1.py``); this module
decides what is sent (``outgoing_request``: the safety rewrites, all in one function) and
turns what came back into a ``Response``. docs/http-client.md is the user's page.

The request-target is sent as logged (no re-encoding, query order kept), always to the
target's own address: an absolute-form target loses its scheme and authority, anything
else is a path on the target (``@host`` or ``//host`` included). Hop-by-hop headers are
dropped, Host is the target's unless kept, the client-address headers (X-Forwarded-For,
Forwarded, X-Real-Ip) carry the trusted client address instead of what was logged, and
X-Shadow-Replay carries the record id. The response is read streaming up to a cap, with
time to first byte and the body's arrival timeline; a stream is read within its window
(``[replayer.streams]``). Failures never raise: they come back as a ``Response`` whose
``error`` names the kind and whose ``status`` is None.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from dataclasses import dataclass

from shadowreplay.replayer.http1 import ConnectionPool, HTTPFailure, StreamWindow
from shadowreplay.contract.config import StreamsConfig
from shadowreplay.contract.record import RequestRecord, Response

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Who the client was: never taken from the log, set from the trusted client address.
CLIENT_ADDRESS = frozenset({"x-forwarded-for", "forwarded", "x-real-ip"})
# Recomputed or set by the replayer, never copied from the record.
_REPLACED = frozenset({"content-length", "host", "x-shadow-replay"}) | CLIENT_ADDRESS
_DROPPED = HOP_BY_HOP | _REPLACED
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass(slots=True)
class Outgoing:
    """A record's request as it goes on the wire, after the safety rewrites. ``target`` is
    origin-form, relative to the target's base URL (whose path prefix goes before it);
    ``host`` "" means the target's own authority."""

    method: str
    target: str
    host: str
    headers: list[tuple[str, str]]
    body: bytes | None


def outgoing_request(record: RequestRecord, *, keep_host: bool) -> Outgoing:
    """The safety rewrites of a replay, all here: the target made origin-form (the host
    never comes from it), Host the target's unless ``keep_host``, headers by
    ``outgoing_headers``. The values are checked for the wire by ``http1.build_request``."""
    host = logged_host(record) if keep_host else ""
    return Outgoing(record.method, origin_form(record.target), host, outgoing_headers(record), record.body)


def outgoing_headers(record: RequestRecord) -> list[tuple[str, str]]:
    """The headers a replay of ``record`` carries (Host apart: see ``outgoing_request``).

    Dropped: hop-by-hop ones (and those that Connection names), ``Proxy-*``,
    Content-Length (recomputed), Host, X-Shadow-Replay. X-Forwarded-For is the trusted
    client address; Forwarded and X-Real-Ip, when logged, are too (in place of what was
    logged; without a client address they are dropped). X-Shadow-Replay is the record id."""
    dropped: frozenset[str] | set[str] = _DROPPED
    for name, value in record.headers:
        if name.lower() == "connection":  # names listed in Connection are hop-by-hop too
            dropped = set(dropped)
            dropped.update(t.strip().lower() for t in value.split(",") if t.strip())
    # Repeats keep their order; each name is spelled as at its first occurrence.
    spelling: dict[str, str] = {}
    out = [
        (spelling.setdefault(k.lower(), k), v)
        for k, v in record.headers
        if k.lower() not in dropped and not k.lower().startswith("proxy-")
    ]
    client = record.client
    if client:
        out.append(("X-Forwarded-For", client))
        logged = {k.lower() for k, _ in record.headers}
        if "forwarded" in logged:
            out.append(("Forwarded", _forwarded_for(client)))
        if "x-real-ip" in logged:
            out.append(("X-Real-Ip", client))
    out.append(("X-Shadow-Replay", record.id))
    return out


def _forwarded_for(client: str) -> str:
    """``Forwarded: for=`` of an address (RFC 7239: an IPv6 one bracketed and quoted)."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return 'for="{}"'.format(client.replace("\\", "\\\\").replace('"', '\\"'))
    return f'for="[{ip}]"' if ip.version == 6 else f"for={ip}"


def logged_host(record: RequestRecord) -> str:
    """The Host production saw: the record's host, else its Host header, else ""."""
    return record.host or record.header("Host") or ""


def origin_form(target: str) -> str:
    """The logged request-target as a path and query on the target: absolute-form
    (``http://prod/p?q``, any scheme, any case) loses its scheme and authority; anything
    not starting with "/" gets one, so ``@evil/x`` is the path ``/@evil/x``."""
    if target.startswith("/"):
        return target
    m = _ABSOLUTE_FORM.match(target)
    if m is not None:
        rest = target[m.end() :]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=-1)
        if cut < 0:
            return "/"
        return rest[cut:] if rest[cut] == "/" else "/" + rest[cut:]
    return "/" + target


class TargetClient:
    """One replay target (e.g. ``candidate`` at ``http://staging:8080``) with its own pool."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout_seconds: float,
        max_body_bytes: int,
        concurrency: int,
        keep_host: bool = False,
        tls_verify: bool = True,
        streams: StreamsConfig | None = None,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self.base_url = base_url
        self._tls_verify = tls_verify
        self._timeout_seconds = timeout_seconds
        self._max_body_bytes = max_body_bytes
        self._keep_host = keep_host
        self._pool: ConnectionPool | None = None
        streams = streams or StreamsConfig()
        default_bytes = min(streams.window_bytes or max_body_bytes, max_body_bytes)
        self._window = StreamWindow(streams.window_seconds, default_bytes, streams.chunked_after_seconds)
        self._stream_endpoints = [
            (
                re.compile(e.path),
                e.method,
                StreamWindow(
                    e.window_seconds or streams.window_seconds,
                    min(e.window_bytes or default_bytes, max_body_bytes),
                    streams.chunked_after_seconds,
                    forced=True,
                ),
            )
            for e in streams.endpoints
        ]

    async def start(self) -> None:
        self._pool = ConnectionPool(self.base_url, limit=self.concurrency, tls_verify=self._tls_verify)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def __aenter__(self) -> TargetClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def prepare(self, record: RequestRecord) -> Outgoing:
        """``record`` as this target gets it (see ``outgoing_request``)."""
        return outgoing_request(record, keep_host=self._keep_host)

    def stream_window(self, record: RequestRecord) -> StreamWindow:
        """How ``record``'s response is read if it streams: its endpoint's window when a
        ``[[replayer.streams.endpoints]]`` entry matches (then it is a stream from its head
        on), else the ``[replayer.streams]`` one."""
        for rx, method, window in self._stream_endpoints:
            if (not method or method == record.method) and rx.search(record.path):
                return window
        return self._window

    def as_sent(self, record: RequestRecord) -> RequestRecord:
        """``record`` as this target got it (what a result records): ``prepare``'s request
        with the target URL's path prefix before the request-target, Host first (the
        target's unless kept) and Content-Length when a body goes out, as the built-in
        client writes them (``http1.build_request``)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"target {self.name!r}: as_sent() before start()")
        out = self.prepare(record)
        host = out.host or pool.authority
        headers = [("Host", host), *out.headers]
        if out.body or (out.body is not None and out.method in ("POST", "PUT", "PATCH")):
            headers.append(("Content-Length", str(len(out.body))))
        # Built field by field: dataclasses.replace costs three times as much, once per request.
        return RequestRecord(record.id, record.ts, out.method, pool.prefix + out.target, record.tag, record.scheme,
                             host, tuple(headers), out.body, record.client, record.origin, record.seq)

    async def send(self, record: RequestRecord) -> Response:
        """Replay ``record`` on this target. Never raises for network or HTTP failures."""
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"target {self.name!r}: send() before start()")
        out = self.prepare(record)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_seconds) as deadline:
                raw = await pool.request(
                    out.method, out.target, out.host, out.headers, out.body, self._max_body_bytes,
                    sent_at=t0, window=self.stream_window(record), deadline=deadline,
                )
        except HTTPFailure as exc:
            kind, detail = exc.kind, str(exc)
        except TimeoutError:
            kind, detail = "timeout", f"no complete response within {self._timeout_seconds} s"
        except OSError as exc:  # not expected from the pool; still a result, not a crash
            kind, detail = "connect", str(exc)
        else:
            return Response(
                status=raw.status,
                headers=raw.headers,
                body=raw.body,
                truncated=raw.truncated,
                latency=time.perf_counter() - t0,
                ttfb=raw.ttfb - t0,
                timeline=raw.timeline,
                stream=raw.stream,
                stream_window_reached=raw.window_reached,
            )
        log.debug("target %s: %s %s failed: %s: %s", self.name, record.method, record.id, kind, detail)
        return Response(status=None, latency=time.perf_counter() - t0, error=kind)
