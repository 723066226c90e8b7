"""Forward-protocol shared-key handshake (HELO / PING / PONG): pure, no sockets.

1. the server sends ``["HELO", {"nonce", "auth", "keepalive"}]`` on connect;
2. the client answers ``["PING", hostname, salt, hex(sha512(salt + hostname + nonce +
   key)), username, hex(sha512(auth + username + password))]``;
3. the server answers ``["PONG", true, "", server_hostname, hex(sha512(salt +
   server_hostname + nonce + key))]``, or ``["PONG", false, reason, "", ""]`` and closes.

Every value is hashed exactly as received: a ``str`` that arrived holding raw bytes
(Fluent Bit sends its salt so; the decoder keeps such bytes with ``surrogateescape``)
is turned back into those bytes. Each HELO carries fresh random nonce and auth salt,
so a PING recorded on one connection fails on any other. Failure reasons are Fluentd's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgpack

from shadowreplay.contract.config import ForwardSecurity
from shadowreplay.contract.errors import ConfigError

NONCE_BYTES = 16

INVALID_PING = "invalid ping message"
KEY_MISMATCH = "shared_key mismatch"
USER_MISMATCH = "username/password mismatch"
SAME_HOSTNAME = "same hostname as the server"


def _raw(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


def ping_digest(salt: str | bytes, hostname: str | bytes, nonce: bytes, shared_key: str | bytes) -> str:
    """hex(sha512(salt + hostname + nonce + shared_key)): the PING (and, with the server's
    hostname, the PONG) shared-key digest."""
    h = hashlib.sha512()
    for part in (salt, hostname, nonce, shared_key):
        h.update(_raw(part))
    return h.hexdigest()


def password_digest(auth: bytes, username: str | bytes, password: str | bytes) -> str:
    """hex(sha512(auth + username + password))."""
    h = hashlib.sha512()
    for part in (auth, username, password):
        h.update(_raw(part))
    return h.hexdigest()


class Secrets(NamedTuple):
    """The shared key and user passwords, read from the environment."""

    shared_key: bytes
    users: dict[bytes, bytes]
    hostname: str

    @classmethod
    def from_config(cls, security: ForwardSecurity, environ: Mapping[str, str], default_hostname: str) -> Secrets:
        """Resolve ``security``'s environment variables; ConfigError naming the key when
        one is unset or empty."""
        key = _env(environ, security.shared_key_env, "collector.security.shared_key_env")
        users: dict[bytes, bytes] = {}
        for i, user in enumerate(security.users):
            password = _env(environ, user.password_env, f"collector.security.users[{i}].password_env")
            users[user.username.encode()] = password
        return cls(key, users, security.self_hostname or default_hostname)


def _env(environ: Mapping[str, str], name: str, where: str) -> bytes:
    value = environ.get(name, "")
    if not value:
        raise ConfigError(f"{where}: environment variable {name} is not set or empty")
    return value.encode("utf-8")


class PingResult(NamedTuple):
    """The handshake's outcome: ``pong`` is the encoded reply to send either way."""

    ok: bool
    reason: str
    pong: bytes
    client_hostname: str
    username: str


class Handshake:
    """One connection's handshake: ``helo()`` first, then ``check(ping)`` on the client's
    first message. ``nonce`` and ``auth`` are random unless given (test vectors)."""

    def __init__(self, secrets: Secrets, *, nonce: bytes | None = None, auth: bytes | None = None) -> None:
        self._secrets = secrets
        self.nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        # Fluentd sends an empty auth salt when user authentication is off.
        if secrets.users:
            self.auth = os.urandom(NONCE_BYTES) if auth is None else auth
        else:
            self.auth = b""

    def helo(self) -> bytes:
        """The encoded HELO message."""
        return msgpack.packb(
            ["HELO", {"nonce": self.nonce, "auth": self.auth, "keepalive": True}], use_bin_type=True
        )

    def check(self, ping: Any) -> PingResult:
        """Verify the client's PING (as unpacked); never raises on bad input."""
        if type(ping) is not list or len(ping) != 6 or ping[0] != "PING":
            return self._fail(INVALID_PING)
        _, hostname, salt, digest, username, pw_digest = ping
        if not all(isinstance(v, (str, bytes)) for v in (hostname, salt, digest, username, pw_digest)):
            return self._fail(INVALID_PING)
        host_text = _raw(hostname).decode("utf-8", "replace")
        user_text = _raw(username).decode("utf-8", "replace")
        secrets = self._secrets
        expected = ping_digest(salt, hostname, self.nonce, secrets.shared_key)
        if not hmac.compare_digest(expected.encode(), _raw(digest).lower()):
            return self._fail(KEY_MISMATCH, host_text, user_text)
        if secrets.users:
            password = secrets.users.get(_raw(username))
            want = password_digest(self.auth, username, password) if password is not None else "-"
            # Compare even for an unknown user, so timing says nothing about user names.
            if not hmac.compare_digest(want.encode(), _raw(pw_digest).lower()) or password is None:
                return self._fail(USER_MISMATCH, host_text, user_text)
        if host_text == secrets.hostname:
            return self._fail(SAME_HOSTNAME, host_text, user_text)
        pong = msgpack.packb(
            ["PONG", True, "", secrets.hostname, ping_digest(salt, secrets.hostname, self.nonce, secrets.shared_key)],
            use_bin_type=True,
        )
        return PingResult(True, "", pong, host_text, user_text)

    @staticmethod
    def refusal(reason: str) -> bytes:
        """The encoded PONG that refuses a client for ``reason``."""
        return msgpack.packb(["PONG", False, reason, "", ""], use_bin_type=True)

    @classmethod
    def _fail(cls, reason: str, hostname: str = "", username: str = "") -> PingResult:
        return PingResult(False, reason, cls.refusal(reason), hostname, username)
