"""The project's error hierarchy. Components raise these; only the CLI prints and exits."""

from __future__ import annotations


class ShadowError(Exception):
    """Base of every error shadowreplay raises on purpose."""


class ConfigError(ShadowError):
    """A configuration file or flag is invalid. The message names the key."""


class ListenError(ConfigError):
    """A listening address could not be bound (in use, not this machine's, privileged).
    ``what`` names the flag and config key, ``address`` the HOST:PORT."""

    def __init__(self, message: str, *, what: str, address: str) -> None:
        super().__init__(message)
        self.what = what
        self.address = address


class RecordError(ShadowError):
    """A bus message could not be decoded into a RequestRecord or ReplayResult."""


class DecodeError(ShadowError):
    """Input from a client could not be decoded.

    ``fatal`` says whether the connection it came from can go on: a malformed event
    inside a well-formed frame is not fatal (it is counted and skipped), unparseable
    msgpack is (the stream has lost its framing).
    """

    def __init__(self, message: str, *, reason: str, fatal: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.fatal = fatal


class BusError(ShadowError):
    """The bus failed. ``retriable`` says whether the same call may succeed later."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable
