"""The certificate the agent presents, swapped without a restart.

Each connection asks for the current TLS context. When the certificate,
key, CA or staged-certificate files change on disk (a `stat` per
connection, as for the trust files), the context is rebuilt: a staged
certificate (a renewal the agent checked before writing it) wins over the
installed one, so a renewal takes effect for the next connection while
connections already running finish on the context they started with.

A context that cannot be built (a staged file that does not match the key,
say) keeps the previous one and logs why; the staged file is then ignored
until it changes. Standard library only: this is on the request path.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Callable

from .. import log
from ..core.timefmt import openssl_notafter
from ..core.x509 import CertFacts, facts_from_pem
from ..pki.tls import agent_server_context

UNKNOWN_EXPIRY = "unknown"


def _signature(path: str) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns)


def _facts(path: str) -> CertFacts | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return facts_from_pem(handle.read(1_048_576))
    except (OSError, ValueError):
        return None


class AgentIdentity:
    def __init__(self, config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._signatures: tuple | None = None
        self._context: ssl.SSLContext | None = None
        self._facts: CertFacts | None = None
        self._source = ""

    def _paths(self) -> tuple[str, str, str, str]:
        c = self.config
        return (c.cert, c.key, c.ca, c.cert_staging_path)

    def context(self) -> ssl.SSLContext:
        """The context for a new connection (built at first use; raises
        ssl.SSLError/OSError only when no context was ever built)."""
        signatures = tuple(_signature(p) for p in self._paths())
        if signatures == self._signatures and self._context is not None:
            return self._context
        with self._lock:
            if signatures != self._signatures or self._context is None:
                self._rebuild(signatures)
            assert self._context is not None
            return self._context

    def expiry(self) -> str:
        """notAfter of the presented certificate, openssl's text."""
        self.context()
        facts = self._facts
        return UNKNOWN_EXPIRY if facts is None else openssl_notafter(facts.not_after)

    @property
    def source(self) -> str:
        return self._source

    def _candidates(self) -> list[str]:
        staged = self.config.cert_staging_path
        if os.path.isfile(staged):
            facts = _facts(staged)
            if facts is not None and facts.not_after > self.clock():
                return [staged, self.config.cert]
        return [self.config.cert]

    def _rebuild(self, signatures: tuple) -> None:
        error: BaseException | None = None
        for cert in self._candidates():
            try:
                context = agent_server_context(cert, self.config.key, self.config.ca)
            except (ssl.SSLError, OSError) as exc:
                error = exc
                if cert != self.config.cert:
                    log.event(
                        "cert-swap-fail",
                        log.WARNING,
                        CERT=cert,
                        ERROR=getattr(exc, "reason", None) or str(exc),
                    )
                continue
            facts = _facts(cert)
            changed = self._context is not None and (
                self._facts is None or facts is None or facts.serial != self._facts.serial
            )
            self._context, self._facts, self._source = context, facts, cert
            self._signatures = signatures
            if changed and facts is not None:
                log.event(
                    "cert-swap",
                    log.INFO,
                    SERIAL=facts.serial.hex(),
                    EXPIRY=openssl_notafter(facts.not_after),
                    CERT=cert,
                )
            return
        if self._context is None:
            assert error is not None
            raise error
        self._signatures = signatures  # keep serving the previous context
