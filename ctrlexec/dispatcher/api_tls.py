"""The HTTP API's TLS: none, or a server context from api_cert and api_key."""

from __future__ import annotations

import ssl

from ..errors import ConfigError
from ..pki.tls import server_only_context


def _readable(what: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def api_tls_context(settings):
    """The API's TLS context, or None for plain HTTP. 0.12 falls back to
    plain HTTP when a configured file is missing; we refuse to start."""
    cert, key = settings.api_cert, settings.api_key
    if not cert and not key:
        return None
    if not (cert and key):
        missing = "api_key" if cert else "api_cert"
        raise ConfigError(
            "must be set too: TLS needs both api_cert and api_key",
            str(settings.source or ""),
            missing,
        )
    _readable("API certificate", cert)
    _readable("API key", key)
    try:
        return server_only_context(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"api_cert and api_key cannot be used: {exc}") from None
