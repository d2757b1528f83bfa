"""The dispatcher's shared state, opened from the configuration.

    state = open_state(settings, layout)
    state.registry, state.runs, state.locks, state.pairing_queue(), state.leader("maintenance")

`state_backend = "files"` (the default) gives the state directories exactly
as before; a `postgresql://` URL gives the PostgreSQL backend, whose driver
is imported only then. One process shares one connection pool per backend.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .interface import (
    AgentRegistry,
    FleetDirectory,
    HostLocks,
    Leader,
    PairingRequests,
    Revocations,
    RunRecords,
)

__all__ = [
    "AgentRegistry",
    "FleetDirectory",
    "HostLocks",
    "Leader",
    "PairingRequests",
    "Revocations",
    "RunRecords",
    "State",
    "open_database",
    "open_state",
]


class _AlwaysLeader:
    """The file backend serves one dispatcher host: it always leads."""

    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


class _OneNode:
    """The file backend's fleet: this dispatcher alone."""

    def __init__(self) -> None:
        self._members: dict[str, str] = {}

    def announce(self, dispatcher_id: str, serial: str) -> None:
        self._members = {dispatcher_id: serial}

    def members(self, seen_within: float | None = None) -> dict[str, str]:
        return dict(self._members)


class State:
    """One backend's registry, run store, locks, pairing queue and leases."""

    kind = "files"

    def __init__(
        self,
        registry: AgentRegistry,
        runs: RunRecords,
        locks: HostLocks,
        queue: Callable[[], PairingRequests],
        leader: Callable[[str], Leader],
        fleet: FleetDirectory,
        revocations: Revocations | None = None,
        database: Any = None,
    ):
        self.registry = registry
        self.runs = runs
        self.locks = locks
        self._queue = queue
        self._leader = leader
        self.fleet = fleet
        # The fleet-wide revocation lists (PostgreSQL); None: ca_dir's files
        # are the only ones (state/revocations.py).
        self.revocations = revocations
        self.database = database
        if database is not None:
            self.kind = "postgresql"

    def counts(self) -> dict[str, int]:
        """Gauges the state directories cannot give (/metrics): pending
        pairing requests and run records in the database; {} for files."""
        if self.database is None:
            return {}
        from .postgres import gauge_counts

        return gauge_counts(self.database)

    def pairing_queue(self) -> PairingRequests:
        return self._queue()

    def leader(self, duty: str) -> Leader:
        return self._leader(duty)


_databases: dict[tuple, Any] = {}
_databases_lock = threading.Lock()


def open_database(settings) -> Any:
    """The process's Database for a postgresql:// state_backend (shared pool)."""
    from .db import Database
    from .dsn import parse_dsn

    url = settings.state_backend
    password_file = getattr(settings, "state_password_file", None)
    key = (url, password_file)
    with _databases_lock:
        database = _databases.get(key)
        if database is None:
            dsn = parse_dsn(url, os.environ)
            database = Database(
                dsn,
                password_file,
                history=lineage_record(settings, dsn.database),
                survey_every=float(getattr(settings, "fleet_sync_interval", None) or 60),
            )
            _databases[key] = database
        return database


def lineage_record(settings, database: str) -> Any:
    """The host's record of the PostgreSQL lineage it used (beside
    rotation.json in the dispatcher's state directory); None without one."""
    rotation_file = getattr(settings, "rotation_file", None)
    if not rotation_file:
        return None
    import pwd

    from .lineage_file import FILE_NAME, LineageFile

    try:
        entry = pwd.getpwnam(getattr(settings, "service_user", None) or "")
        service: tuple[int, int] | None = (entry.pw_uid, entry.pw_gid)
    except KeyError:
        service = None
    return LineageFile(Path(rotation_file).parent / FILE_NAME, database, service)


def open_state(
    settings,
    runs_dir: str | os.PathLike,
    locks_dir: str | os.PathLike,
    pairing_dir: str | os.PathLike,
) -> State:
    backend = getattr(settings, "state_backend", None) or "files"
    if backend == "files":
        from ..dispatcher.locks import HostScriptLocks
        from ..dispatcher.pairing_queue import PairingQueue
        from ..dispatcher.registry import Registry
        from ..dispatcher.runstore import RunStore

        registry = Registry(settings.registry_dir)
        return State(
            registry,
            RunStore(runs_dir),
            HostScriptLocks(locks_dir),
            lambda: PairingQueue(pairing_dir, registry),
            lambda duty: _AlwaysLeader(),
            _OneNode(),
        )
    from . import migrations
    from .postgres import (
        PgFleet,
        PgLeader,
        PgLocks,
        PgPairingQueue,
        PgRegistry,
        PgRevocations,
        PgRunStore,
    )

    database = open_database(settings)
    with database.connection() as conn:
        migrations.require_latest(conn, database.describe())
    pg_registry = PgRegistry(database, settings.registry_dir)
    return State(
        pg_registry,
        PgRunStore(database, runs_dir),
        PgLocks(database, locks_dir),
        lambda: PgPairingQueue(database, pg_registry, Path(pairing_dir)),
        lambda duty: PgLeader(database, duty),
        PgFleet(database),
        PgRevocations(database),
        database,
    )


def for_layout(settings, layout) -> State:
    """open_state with the directories of a path layout."""
    return open_state(settings, layout.runs_dir, layout.locks_dir, layout.pairing_dir)
