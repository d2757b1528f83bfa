"""Everything a running agent decides with, loaded once and swapped whole.

`agent.toml` is read at start only (as 0.12: restart to change it). The
allowlist, its schema sidecars, the trusted-dispatcher map, the revocation
list and the certificate's expiry are reloaded on SIGHUP; a reload that
fails keeps the previous state and logs why.

The trust files are also re-read on their own whenever they change on disk
(checked by a stat per connection), so a new pairing or a revocation takes
effect at the next connection without a SIGHUP. A trust file that cannot be
read keeps its previous content (logged); at start it is a config error.

Handlers receive an immutable `AgentState` snapshot per connection, so a
reload never changes the rules in the middle of a request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from .. import __version__, log
from ..config.load import AgentConfig, load_allowlist
from ..config.paths import Layout
from ..core import agent_wire
from ..core.timefmt import openssl_notafter
from ..core.x509 import facts_from_pem
from ..errors import ConfigError
from . import capabilities, trust
from .allowlist import Allowlist
from .hostname import local_hostname

UNKNOWN_EXPIRY = "unknown"

T = TypeVar("T")


def cert_expiry(cert_path: str) -> str:
    """notAfter of the agent cert in openssl's text, or `unknown`."""
    try:
        with open(cert_path, encoding="ascii", errors="replace") as handle:
            return openssl_notafter(facts_from_pem(handle.read(1_048_576)).not_after)
    except (OSError, ValueError):
        return UNKNOWN_EXPIRY


def _file_signature(path: str) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class WatchedFile(Generic[T]):
    """A file's parsed content, re-parsed when the file changes."""

    def __init__(self, path: str, parse: Callable[[str], T], what: str):
        self.path = path
        self._parse = parse
        self._what = what
        self._lock = threading.Lock()
        # Stat before parsing: a change in between is seen at the next check.
        self._signature = _file_signature(path)
        self._value: T = parse(path)  # errors propagate at start

    def current(self) -> T:
        signature = _file_signature(self.path)
        if signature == self._signature:
            return self._value
        with self._lock:
            if signature != self._signature:
                self._refresh(signature)
            return self._value

    def reload(self) -> None:
        with self._lock:
            self._refresh(_file_signature(self.path))

    def _refresh(self, signature: tuple | None) -> None:
        try:
            self._value = self._parse(self.path)
        except (OSError, ValueError) as exc:
            log.event(
                "trust-reload-fail",
                log.ERR,
                FILE=self.path,
                WHAT=self._what,
                ERROR=getattr(exc, "strerror", None) or str(exc),
            )
        self._signature = signature


@dataclass(frozen=True)
class AgentState:
    config: AgentConfig
    allowlist: Allowlist
    sidecars: dict[str, agent_wire.Sidecar]
    trusted: dict[str, str]
    revoked: trust.RevocationList
    expiry: str
    host: str
    version: str = __version__


def _load_revocations(path: str) -> trust.RevocationList:
    revocations = trust.load_revocations(path)
    if not revocations.present:
        log.event("revoked-serials-absent", log.INFO, PATH=path)
    return revocations


class AgentRuntime:
    """Holds the current AgentState and knows how to rebuild it."""

    def __init__(
        self,
        config: AgentConfig,
        layout: Layout,
        allowlist_path: Path | None = None,
        host: str | None = None,
        identity=None,
    ):
        self.config = config
        # agent.identity.AgentIdentity: the presented certificate (hot swap).
        self.identity = identity
        self.layout = layout
        self.allowlist_path = allowlist_path
        self.host = host or local_hostname()
        self._reload_lock = threading.Lock()
        try:
            self._map = WatchedFile(
                config.trusted_dispatchers_path, trust.load_map, "trusted dispatchers"
            )
            self._revocations = WatchedFile(
                config.revoked_serials, _load_revocations, "revoked serials"
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read trust file: {getattr(exc, 'strerror', None) or exc}",
                getattr(exc, "filename", None),
            ) from None
        self._static = self._load_static()

    def _load_static(self) -> tuple[Allowlist, dict[str, agent_wire.Sidecar], str]:
        """The parts that change only on SIGHUP. Raises ConfigError."""
        entries = load_allowlist(self.layout, self.allowlist_path, self.config.profiles)
        allowlist = Allowlist(entries, tuple(self.config.script_dirs))
        return allowlist, capabilities.load_sidecars(allowlist), cert_expiry(self.config.cert)

    def state(self) -> AgentState:
        allowlist, sidecars, expiry = self._static
        if self.identity is not None:
            expiry = self.identity.expiry()
        return AgentState(
            self.config,
            allowlist,
            sidecars,
            self._map.current(),
            self._revocations.current(),
            expiry,
            self.host,
        )

    def trust_changed(self) -> None:
        """The map was rewritten by this process: re-read it now (the listener
        and running connections are untouched)."""
        self._map.reload()

    def reload(self) -> bool:
        """SIGHUP: re-read the allowlist, sidecars, trust files and cert expiry."""
        with self._reload_lock:
            try:
                static = self._load_static()
            except ConfigError as exc:
                log.event("reload-fail", log.ERR, ERROR=str(exc))
                return False
            self._map.reload()
            self._revocations.reload()
            self._static = static
        state = self.state()
        log.event(
            "reload",
            log.INFO,
            SCRIPTS=len(state.allowlist),
            DISPATCHERS=len(state.trusted),
            REVOKED=len(state.revoked.serials),
        )
        return True
