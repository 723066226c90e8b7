"""TLS for the forward port: an ``ssl.SSLContext`` from ``[collector.tls]``."""

from __future__ import annotations

import ssl

from shadowreplay.config import ForwardTls
from shadowreplay.errors import ConfigError


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
