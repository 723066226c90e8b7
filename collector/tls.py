"""TLS for the forward port: an ``ssl.SSLContext`` from ``[collector.tls]``, and the
recognition of a TLS client on a plain-text port."""

from __future__ import annotations

import ssl

from shadowreplay.contract.config import ForwardTls
from shadowreplay.contract.errors import ConfigError


def server_context(tls: ForwardTls) -> ssl.SSLContext | None:
    """The server-side context ``tls`` describes, or None when TLS is off (no cert_file).

    With ``ca_file``, client certificates signed by it are verified when presented;
    ``require_client_cert`` refuses clients without one. TLS 1.2 is the minimum."""
    if not tls.cert_file:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"collector.tls.cert_file/key_file: cannot load {tls.cert_file!r}: {exc}") from exc
    if tls.ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"collector.tls.ca_file: cannot load {tls.ca_file!r}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def looks_like_client_hello(data: bytes) -> bool:
    """Whether ``data``, the first bytes a client sent, begin a TLS record that carries a
    handshake: content type 0x16, then a protocol version 3.0 to 3.4 (SSL 3.0 up to the
    1.3 record layer, which says 3.1 or 3.3). As msgpack these bytes would be the
    integers 22 and 3: never the start of a forward-protocol frame."""
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03 and data[2] <= 0x04
