"""`ced db`: the schema of the PostgreSQL state database."""

from __future__ import annotations

from ..errors import ConfigError
from . import migrations


def _database(settings):
    backend = getattr(settings, "state_backend", None) or "files"
    if backend == "files":
        raise ConfigError(
            "the state backend is 'files': there is no database to migrate "
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
        "version": version,
        "latest": migrations.LATEST,
        "up_to_date": version == migrations.LATEST,
        "migrations": history,
    }
