"""Versioned schema of the PostgreSQL state database.

Each migration is applied once, in order, in its own transaction, by
`ced db migrate` (never implicitly by a service: a dispatcher that finds
an older schema refuses to start and says which command to run). Applying
holds an advisory lock, so two nodes migrating at once take turns.
`ctrl_exec_schema` records what was applied and when.

Never edit a released migration: add the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StateError
from .keys import advisory_key


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "registry, run store, host:script lock holders, pairing queue, dispatchers, revocations",
        (
            """CREATE TABLE ctrl_exec_agents (
                name text PRIMARY KEY,
                record jsonb NOT NULL,
                updated timestamptz NOT NULL DEFAULT now())""",
            """CREATE TABLE ctrl_exec_runs (
                reqid text PRIMARY KEY,
                record jsonb NOT NULL,
                written double precision NOT NULL)""",
            "CREATE INDEX ctrl_exec_runs_written ON ctrl_exec_runs (written)",
            """CREATE TABLE ctrl_exec_lock_holders (
                host text NOT NULL,
                script text NOT NULL,
                lock_key bigint NOT NULL,
                holder jsonb NOT NULL,
                backend_pid integer NOT NULL,
                PRIMARY KEY (host, script))""",
            """CREATE TABLE ctrl_exec_pairing (
                reqid text PRIMARY KEY,
                request jsonb NOT NULL,
                state text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'approved', 'denied')),
                body bytea,
                queued double precision NOT NULL,
                decided double precision)""",
            """CREATE TABLE ctrl_exec_dispatchers (
                dispatcher_id text PRIMARY KEY,
                serial text NOT NULL,
                seen double precision NOT NULL)""",
            """CREATE TABLE ctrl_exec_revoked (
                kind text NOT NULL CHECK (kind IN ('serial', 'key')),
                value text NOT NULL,
                added double precision NOT NULL,
                PRIMARY KEY (kind, value))""",
        ),
    ),
)
LATEST = MIGRATIONS[-1].version
MIGRATE_LOCK = advisory_key("migrate")


def current_version(conn) -> int:
    """The applied version; 0 on an empty database."""
    exists = conn.run("SELECT to_regclass('ctrl_exec_schema') IS NOT NULL")[0][0]
    if not exists:
        return 0
    row = conn.run("SELECT coalesce(max(version), 0) FROM ctrl_exec_schema")
    return int(row[0][0])


def applied(conn) -> list[dict]:
    if current_version(conn) == 0:
        return []
    rows = conn.run(
        "SELECT version, description, to_char(applied AT TIME ZONE 'UTC', "
        '\'YYYY-MM-DD"T"HH24:MI:SS"Z"\') FROM ctrl_exec_schema ORDER BY version'
    )
    return [{"version": r[0], "description": r[1], "applied": r[2]} for r in rows]


def migrate(conn) -> list[int]:
    """Apply every missing migration; the versions applied now."""
    conn.run("SELECT pg_advisory_lock(:key)", key=MIGRATE_LOCK)
    try:
        conn.run(
            """CREATE TABLE IF NOT EXISTS ctrl_exec_schema (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied timestamptz NOT NULL DEFAULT now())"""
        )
        have = current_version(conn)
        if have > LATEST:
            raise StateError(
                f"the database schema is at version {have}, newer than this build knows "
                f"({LATEST}): upgrade ctrl-exec on this host"
            )
        done = []
        for migration in MIGRATIONS:
            if migration.version <= have:
                continue
            conn.run("BEGIN")
            try:
                for statement in migration.statements:
                    conn.run(statement)
                conn.run(
                    "INSERT INTO ctrl_exec_schema (version, description) VALUES (:v, :d)",
                    v=migration.version,
                    d=migration.description,
                )
                conn.run("COMMIT")
            except BaseException:
                conn.run("ROLLBACK")
                raise
            done.append(migration.version)
        return done
    finally:
        conn.run("SELECT pg_advisory_unlock(:key)", key=MIGRATE_LOCK)


def require_latest(conn, where: str) -> None:
    have = current_version(conn)
    if have != LATEST:
        raise StateError(
            f"the state database {where} has schema version {have}, this build needs "
            f"{LATEST}: run 'ced db migrate'"
            if have < LATEST
            else f"the state database {where} has schema version {have}, newer than this "
            f"build ({LATEST}): upgrade ctrl-exec on this host"
        )
