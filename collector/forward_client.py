"""A small, blocking Fluentd forward-protocol client that waits for acks.

Used by ``shadowreplay tail``, so it needs only the standard library and msgpack (the
zipapp carries msgpack's pure-Python fallback). Each ``send`` writes one PackedForward
frame ``[tag, entries, {"chunk": <id>, "size": n}]`` and returns only once the server
answered ``{"ack": <that id>}``; anything else (timeout, closed connection, wrong ack,
refused handshake) raises ``ForwardClientError`` and closes the connection, so the
caller can retry the same chunk (with the same id) on a fresh connection.

With ``report_rejected`` the option also says ``"report_rejected": true``, and the
shadowreplay collector adds ``"rejected": {reason: count}`` to the ack: the entries of
the chunk it skipped (a Fluentd server ignores the option and never adds it).

With a shared key the client answers the server's HELO with PING and checks the PONG
(see FORWARD_PROTOCOL.md); TLS is optional (``ssl_context``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
from typing import Any

import msgpack

from shadowreplay.contract.errors import ShadowError

_READ = 64 * 1024


class ForwardClientError(ShadowError):
    """The chunk was not acknowledged; it may or may not have been stored (resend it)."""


def event_time(ns: int) -> msgpack.ExtType:
    """Integer nanoseconds → msgpack EventTime (ext 0: uint32 seconds, uint32 nanoseconds)."""
    sec, nsec = divmod(ns, 1_000_000_000)
    return msgpack.ExtType(0, struct.pack(">II", sec & 0xFFFFFFFF, nsec))


def pack_entries(events: list[tuple[int, dict[str, Any]]]) -> bytes:
    """The PackedForward blob: concatenated ``[EventTime, record]`` entries.

    Text that was not valid UTF-8 (surrogate-escaped when read) goes out as the original
    bytes; the collector unpacks with ``surrogateescape`` too."""
    packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
    return b"".join(packer.pack([event_time(ns), rec]) for ns, rec in events)


def new_chunk_id() -> str:
    """A unique chunk id, base64 like Fluentd's."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def pack_chunk(tag: str, blob: bytes, count: int, chunk_id: str, report_rejected: bool = False) -> bytes:
    option: dict[str, Any] = {"chunk": chunk_id, "size": count}
    if report_rejected:
        option["report_rejected"] = True
    return msgpack.packb([tag, blob, option], use_bin_type=True)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha512()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def _raw(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise ForwardClientError(f"handshake: expected text, got {type(value).__name__}")


def _rejected(value: Any) -> dict[str, int] | None:
    """The ``rejected`` map of an ack, or None when there is none (or it is malformed)."""
    if not isinstance(value, dict):
        return None
    out: dict[str, int] = {}
    for reason, count in value.items():
        if not isinstance(reason, (str, bytes)) or type(count) is not int or count < 0:
            return None
        out[_raw(reason).decode("utf-8", "replace")] = count
    return out


class ForwardClient:
    """One connection to a forward-protocol server (reconnects lazily after errors)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_seconds: float = 30.0,
        shared_key: bytes | None = None,
        hostname: str | None = None,
        username: str = "",
        password: bytes = b"",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_seconds = timeout_seconds
        self._shared_key = shared_key
        self._hostname = hostname or socket.gethostname()
        self._username = username
        self._password = password
        self._ssl = ssl_context
        self._sock: socket.socket | None = None
        self._unpacker: msgpack.Unpacker | None = None

    def send(
        self,
        tag: str,
        events: list[tuple[int, dict[str, Any]]],
        *,
        chunk_id: str | None = None,
        report_rejected: bool = False,
    ) -> dict[str, int] | None:
        """Send ``events`` as one acknowledged PackedForward chunk (``chunk_id``: the same
        id for every attempt at the same chunk; default a new one). Returns the reasons
        and counts of the entries the server skipped, when asked (``report_rejected``)
        and reported; None when the server reported nothing."""
        chunk_id = chunk_id or new_chunk_id()
        frame = pack_chunk(tag, pack_entries(events), len(events), chunk_id, report_rejected)
        try:
            sock = self._connect()
            sock.sendall(frame)
            reply = self._read_object()
        except (OSError, ValueError, msgpack.UnpackException) as exc:
            self.close()
            raise ForwardClientError(f"forward {self.host}:{self.port}: no ack: {exc!r}") from exc
        ack = reply.get(b"ack", reply.get("ack")) if isinstance(reply, dict) else None
        if not isinstance(ack, (str, bytes)) or _raw(ack) != chunk_id.encode():
            self.close()
            raise ForwardClientError(f"forward {self.host}:{self.port}: unexpected reply {reply!r:.200}")
        return _rejected(reply.get(b"rejected", reply.get("rejected")))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._unpacker = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> ForwardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_seconds)
        if self._ssl is not None:
            sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
        sock.settimeout(self.timeout_seconds)
        self._sock = sock
        self._unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", strict_map_key=False)
        if self._shared_key is not None:
            try:
                self._handshake()
            except BaseException:
                self.close()
                raise
        return sock

    def _read_object(self) -> Any:
        sock, unpacker = self._sock, self._unpacker
        assert sock is not None and unpacker is not None
        while True:
            for obj in unpacker:
                if obj is not None:  # nil is a keep-alive
                    return obj
            data = sock.recv(_READ)
            if not data:
                raise ConnectionError("connection closed by the server")
            unpacker.feed(data)

    def _handshake(self) -> None:
        assert self._sock is not None and self._shared_key is not None
        helo = self._read_object()
        if not (isinstance(helo, list) and len(helo) == 2 and helo[0] == "HELO" and isinstance(helo[1], dict)):
            raise ForwardClientError(f"handshake: expected HELO, got {helo!r:.200}")
        opts = helo[1]
        nonce = _raw(opts.get("nonce", b""))
        auth = _raw(opts.get("auth", b""))
        salt = base64.b16encode(os.urandom(16)).decode().lower()
        hostname = self._hostname.encode()
        digest = _digest(salt.encode(), hostname, nonce, self._shared_key)
        password_digest = _digest(auth, self._username.encode(), self._password) if self._username else ""
        ping = ["PING", self._hostname, salt, digest, self._username, password_digest]
        self._sock.sendall(msgpack.packb(ping, use_bin_type=True))
        pong = self._read_object()
        if not (isinstance(pong, list) and len(pong) == 5 and pong[0] == "PONG"):
            raise ForwardClientError(f"handshake: expected PONG, got {pong!r:.200}")
        _, ok, reason, server_host, server_digest = pong
        if ok is not True:
            raise ForwardClientError(f"handshake refused by the server: {reason}")
        if server_host == self._hostname:
            raise ForwardClientError("handshake: the server claims our own hostname")
        expected = _digest(salt.encode(), _raw(server_host), nonce, self._shared_key)
        if server_digest != expected:
            raise ForwardClientError("handshake: the server does not know the shared key")
