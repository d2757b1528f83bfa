"""`ced db`: the schema of the PostgreSQL state database."""

from __future__ import annotations

from ..errors import ConfigError
from . import migrations


def _database(settings):
    backend = getattr(settings, "state_backend", None) or "files"
    if backend == "files":
        raise ConfigError(
            "the state backend is 'files': there is no state database "
            '(set state_backend = "postgresql://..." in ctrl-exec.toml to use one)'
        )
    from . import open_database

    return open_database(settings)


def migrate(settings) -> dict:
    """Apply every missing migration; what was done and the version now."""
    database = _database(settings)
    with database.connection() as conn:
        done = migrations.migrate(conn)
        version = migrations.current_version(conn)
    return {"database": database.describe(), "applied": done, "version": version}


def status(settings) -> dict:
    database = _database(settings)
    with database.connection() as conn:
        version = migrations.current_version(conn)
        history = migrations.applied(conn)
    return {
        "database": database.describe(),
        "lineage": recorded(settings),
        "version": version,
        "latest": migrations.LATEST,
        "up_to_date": version == migrations.LATEST,
        "migrations": history,
    }


def accept(settings) -> dict:
    """Record the lineage the host list now leads to as the one this host
    uses, whatever was recorded (a cluster rebuilt on purpose, a restore,
    a major upgrade): every listed server is looked at, the writable ones
    must be one cluster, and the highest timeline among them is recorded."""
    from .. import log
    from ..core.db_lineage import Lineage, choose
    from ..errors import StateError

    database = _database(settings)
    record = database.history
    if record is None:
        raise ConfigError("no dispatcher state directory to keep the record in (rotation_file)")
    servers = database.survey()
    writable = [entry for entry in servers if entry["writable"]]
    tried = "; ".join(
        f"{entry['server']}: "
        + (f"timeline {entry['timeline']}" if entry["writable"] else entry["error"])
        for entry in servers
    )
    if not writable:
        raise StateError(f"no server of the host list accepts writes ({tried})")
    lineages = [Lineage(entry["system"], entry["timeline"]) for entry in writable]
    choice = choose(None, lineages)
    if choice.chosen is None:
        raise StateError(f"{choice.reason} ({tried})")
    chosen, lineage = writable[choice.chosen], lineages[choice.chosen]
    previous = record.replace(lineage, chosen["server"])
    log.event(
        "state-server-accepted",
        log.WARNING,
        SERVER=chosen["server"],
        SYSTEM=lineage.system,
        TIMELINE=lineage.timeline,
        PREVIOUS_SYSTEM=previous.system if previous else "",
        PREVIOUS_TIMELINE=previous.timeline if previous else "",
    )
    return {
        "database": database.describe(),
        "record": str(record.path),
        "server": chosen["server"],
        "system": lineage.system,
        "timeline": lineage.timeline,
        "previous": (
            {"system": previous.system, "timeline": previous.timeline} if previous else None
        ),
        "servers": servers,
    }


def recorded(settings) -> dict | None:
    """The lineage this host recorded for the database, for `ced db status`."""
    database = _database(settings)
    lineage = database.history.load() if database.history is not None else None
    if lineage is None:
        return None
    return {"system": lineage.system, "timeline": lineage.timeline}
