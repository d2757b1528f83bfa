"""The dispatcher's shared state on PostgreSQL: the same classes as the file
backend (their rules and their callers unchanged), with storage in tables.

- registry: `ctrl_exec_agents`, one jsonb record per agent; the
  registry-wide lock is a session advisory lock;
- run store: `ctrl_exec_runs`; `update` re-reads under `SELECT ... FOR
  UPDATE`, so pollers on different nodes never undo each other's merges;
- host:script locks: a session advisory lock per pair, taken on a
  connection of the dispatch's own and held until it ends; when the holder
  dies its connection drops and PostgreSQL releases the lock. The holder
  record (`ctrl_exec_lock_holders`) stays until the run has really ended,
  exactly like the file backend's `.holder` file, so the next taker asks the
  agent first and `list-locks` shows it;
- pairing queue: `ctrl_exec_pairing`; an approval writes the registry
  record and the decision in one transaction, so there is nothing to recover;
- the leader lease: one advisory lock per duty, held on its own connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import log
from ..core import names
from ..core.ids import PAIRING_REQID, RUN_REQID
from ..core.pairing import CLIENT_WINDOW, STALE_AFTER
from ..dispatcher.locks import HOLDER_FIELDS, HeldLocks, HostScriptLocks
from ..dispatcher.pairing_queue import PairingQueue
from ..dispatcher.registry import Registry
from ..dispatcher.runstore import TTL, RunStore
from ..errors import CtrlExecError, Locked, StateError, UnknownAgents
from .db import Database
from .keys import advisory_key, split_key

REGISTRY_LOCK = advisory_key("registry")
QUEUE_LOCK = advisory_key("pairing-queue")


class AdvisoryLock:
    """A blocking session advisory lock on a pooled connection, used like
    store.FileLock (`with`, acquire/release). A wait is bounded by the
    server's statement timeout (db.STATEMENT_TIMEOUT_MS), which raises
    StateError; `blocking` and `timeout` exist for FileLock's signature."""

    def __init__(self, db: Database, key: int):
        self.db = db
        self.key = key
        self._cm: contextlib.AbstractContextManager | None = None
        self._conn: Any = None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> AdvisoryLock:
        self._cm = self.db.connection()
        self._conn = self._cm.__enter__()
        try:
            self._conn.run("SELECT pg_advisory_lock(:k)", k=self.key)
        except BaseException as exc:
            self._cm.__exit__(type(exc), exc, exc.__traceback__)
            self._cm = self._conn = None
            raise
        return self

    def release(self) -> None:
        if self._cm is None:
            return
        cm, conn = self._cm, self._conn
        self._cm = self._conn = None
        try:
            conn.run("SELECT pg_advisory_unlock(:k)", k=self.key)
        except StateError as exc:
            # The lock may still be held on that connection: drop it.
            cm.__exit__(StateError, exc, None)
            return
        cm.__exit__(None, None, None)

    def __enter__(self) -> AdvisoryLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _obj(value: Any) -> dict:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise StateError("a state record in PostgreSQL is not a JSON object")
    return value


# -- registry -------------------------------------------------------------------------------


class PgRegistry(Registry):
    def __init__(self, db: Database, directory: str | os.PathLike = os.devnull):
        super().__init__(directory)
        self.db = db

    def lock(self) -> AdvisoryLock:  # type: ignore[override]
        return AdvisoryLock(self.db, REGISTRY_LOCK)

    def names(self) -> list[str]:
        rows = self.db.run("SELECT name FROM ctrl_exec_agents ORDER BY name")
        return [row[0] for row in rows if names.is_agent_name(row[0])]

    def get(self, name: str) -> dict | None:
        self._path(name)  # the name rule (raises on an invalid one)
        rows = self.db.run("SELECT record FROM ctrl_exec_agents WHERE name = :n", n=name)
        return _obj(rows[0][0]) if rows else None

    def records(self) -> Iterator[dict]:
        rows = self.db.run("SELECT record FROM ctrl_exec_agents ORDER BY name")
        for row in rows:
            yield _obj(row[0])

    def put(self, record: dict) -> None:
        name = record["hostname"]
        self._path(name)
        self.db.run(
            "INSERT INTO ctrl_exec_agents (name, record) VALUES (:n, CAST(:r AS jsonb)) "
            "ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record, updated = now()",
            n=name,
            r=_json(record),
        )

    def update(self, name: str, change: Callable[[dict], None]) -> dict:
        self._path(name)
        with self.db.transaction() as conn:
            rows = conn.run(
                "SELECT record FROM ctrl_exec_agents WHERE name = :n FOR UPDATE", n=name
            )
            if not rows:
                raise UnknownAgents([name])
            record = _obj(rows[0][0])
            change(record)
            conn.run(
                "UPDATE ctrl_exec_agents SET record = CAST(:r AS jsonb), updated = now() "
                "WHERE name = :n",
                n=name,
                r=_json(record),
            )
        return record

    def discard(self, name: str) -> None:
        self._path(name)
        self.db.run("DELETE FROM ctrl_exec_agents WHERE name = :n", n=name)

    def delete(self, name: str) -> dict | None:
        self._path(name)
        rows = self.db.run("DELETE FROM ctrl_exec_agents WHERE name = :n RETURNING record", n=name)
        return _obj(rows[0][0]) if rows else None


# -- run store ------------------------------------------------------------------------------


class PgRunStore(RunStore):
    def __init__(
        self,
        db: Database,
        directory: str | os.PathLike = os.devnull,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(directory, clock)
        self.db = db

    def save(self, record: dict) -> None:
        reqid = record["reqid"]
        if not RUN_REQID.matches(reqid):
            raise CtrlExecError(f"invalid reqid: {reqid!r}")
        try:
            self.db.run(
                "INSERT INTO ctrl_exec_runs (reqid, record, written) "
                "VALUES (:q, CAST(:r AS jsonb), :t) ON CONFLICT (reqid) DO UPDATE "
                "SET record = EXCLUDED.record, written = EXCLUDED.written",
                q=reqid,
                r=_json(record),
                t=float(self.clock()),
            )
        except StateError as exc:
            log.event("run-store-fail", log.WARNING, REQID=reqid, ERROR=str(exc))
            raise StateError(f"cannot record run {reqid}: {exc}") from None

    def load(self, reqid: str) -> dict | None:
        if not RUN_REQID.matches(reqid):
            return None
        rows = self.db.run("SELECT record, written FROM ctrl_exec_runs WHERE reqid = :q", q=reqid)
        if not rows:
            return None
        if self.clock() - float(rows[0][1]) > TTL:
            self.db.run("DELETE FROM ctrl_exec_runs WHERE reqid = :q", q=reqid)
            return None
        return _obj(rows[0][0])

    def update(self, reqid: str, change: Callable[[dict], bool]) -> dict | None:
        if not RUN_REQID.matches(reqid):
            return None
        with self.db.transaction() as conn:
            rows = conn.run(
                "SELECT record, written FROM ctrl_exec_runs WHERE reqid = :q FOR UPDATE",
                q=reqid,
            )
            if not rows or self.clock() - float(rows[0][1]) > TTL:
                return None
            record = _obj(rows[0][0])
            if change(record):
                conn.run(
                    "UPDATE ctrl_exec_runs SET record = CAST(:r AS jsonb), written = :t "
                    "WHERE reqid = :q",
                    q=reqid,
                    r=_json(record),
                    t=float(self.clock()),
                )
        return record

    def purge(self, ttl: int = TTL) -> int:
        rows = self.db.run(
            "DELETE FROM ctrl_exec_runs WHERE written < :t RETURNING reqid",
            t=float(self.clock()) - ttl,
        )
        if rows:
            log.event("run-store-purge", log.INFO, REMOVED=len(rows))
        return len(rows)


# -- host:script locks ----------------------------------------------------------------------


class PgHeldLocks(HeldLocks):
    def __init__(
        self, hosts: list[str], script: str, conn: Any, stale: dict[str, dict] | None = None
    ):
        super().__init__(hosts, script, [], None, stale)
        self._conn: Any = conn

    def record(self, holder: dict) -> None:
        if self._conn is None:
            raise StateError("the locks are no longer held")
        data = _json(holder)
        self._conn.run("BEGIN")
        try:
            for host in self.hosts:
                self._conn.run(
                    "INSERT INTO ctrl_exec_lock_holders "
                    "(host, script, lock_key, holder, backend_pid) "
                    "VALUES (:h, :s, :k, CAST(:d AS jsonb), pg_backend_pid()) "
                    "ON CONFLICT (host, script) DO UPDATE SET holder = EXCLUDED.holder, "
                    "backend_pid = EXCLUDED.backend_pid, lock_key = EXCLUDED.lock_key",
                    h=host,
                    s=self.script,
                    k=advisory_key("lock", host, self.script),
                    d=data,
                )
            self._conn.run("COMMIT")
        except BaseException:
            with contextlib.suppress(StateError):
                self._conn.run("ROLLBACK")
            raise
        self.stale = {}

    def release(self, keep: frozenset[str] | set[str] = frozenset()) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            for host in self.hosts:
                if host not in keep:
                    conn.run(
                        "DELETE FROM ctrl_exec_lock_holders WHERE host = :h AND script = :s",
                        h=host,
                        s=self.script,
                    )
        except StateError as exc:
            log.event("lock-fail", log.WARNING, SCRIPT=self.script, ERROR=str(exc))
        finally:
            conn.close()  # the advisory locks go with the session
        fields = {"KEPT": ",".join(sorted(keep))} if keep else {}
        log.event(
            "lock-release", log.INFO, HOSTS=",".join(self.hosts), SCRIPT=self.script, **fields
        )


class PgLocks(HostScriptLocks):
    def __init__(self, db: Database, directory: str | os.PathLike = os.devnull):
        super().__init__(directory)
        self.db = db

    def acquire(self, hosts: list[str], script: str) -> HeldLocks:
        conn = self.db.dedicated()
        try:
            conflicts = []
            for host in hosts:
                got = conn.run(
                    "SELECT pg_try_advisory_lock(:k)", k=advisory_key("lock", host, script)
                )[0][0]
                if not got:
                    conflicts.append(f"{host}:{script}")
            if conflicts:
                log.event("lock-conflict", log.WARNING, CONFLICTS=",".join(conflicts))
                raise Locked(conflicts)
            stale: dict[str, dict] = {}
            rows = conn.run(
                "SELECT host, holder FROM ctrl_exec_lock_holders "
                "WHERE script = :s AND host = ANY(CAST(:h AS text[]))",
                s=script,
                h=list(hosts),
            )
            for host, holder in rows:
                stale[host] = _holder_fields(holder)
        except BaseException:
            conn.close()
            raise
        for host in hosts:
            log.event("lock-acquire", log.INFO, HOST=host, SCRIPT=script)
        return PgHeldLocks(list(hosts), script, conn, stale)

    def held(self) -> list[dict]:
        rows = self.db.run(
            "SELECT host, script, holder, lock_key FROM ctrl_exec_lock_holders "
            "ORDER BY host, script LIMIT 100000"
        )
        granted = {
            (int(r[0]), int(r[1]))
            for r in self.db.run(
                "SELECT classid::bigint, objid::bigint FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            )
        }
        found = []
        for host, script, holder, key in rows:
            lock = {"host": host, "script": script}
            lock["state"] = "held" if split_key(int(key)) in granted else "orphaned"
            lock.update(_holder_fields(holder))
            found.append(lock)
        return sorted(found, key=lambda lock: f"{lock['host']}:{lock['script']}")


def _holder_fields(value: Any) -> dict:
    try:
        record = _obj(value)
    except (StateError, ValueError):
        return {}
    return {k: record[k] for k in HOLDER_FIELDS if isinstance(record.get(k), (str, int))}


# -- pairing queue --------------------------------------------------------------------------


class PgPairingQueue(PairingQueue):
    def __init__(
        self,
        db: Database,
        registry: PgRegistry,
        directory: str | os.PathLike = os.devnull,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(directory, registry, clock)
        self.db = db

    def lock(self) -> AdvisoryLock:  # type: ignore[override]
        return AdvisoryLock(self.db, QUEUE_LOCK)

    def sweep_temporary(self) -> int:
        return 0  # nothing is written in two steps here

    def recover(self) -> list[str]:
        return []  # an approval is one transaction

    def expire(self) -> list[str]:
        now = float(self.clock())
        rows = self.db.run(
            "DELETE FROM ctrl_exec_pairing WHERE state = 'pending' AND queued < :t RETURNING reqid",
            t=now - STALE_AFTER,
        )
        self.db.run(
            "DELETE FROM ctrl_exec_pairing WHERE state <> 'pending' AND decided < :t",
            t=now - CLIENT_WINDOW,
        )
        return sorted(row[0] for row in rows)

    def add(self, record: dict, max_queue: int) -> bool:
        if not PAIRING_REQID.matches(record.get("id")):
            raise StateError(f"not a pairing request id: {record.get('id')!r}")
        with self.lock():
            self.tidy()
            count = self.db.run("SELECT count(*) FROM ctrl_exec_pairing WHERE state = 'pending'")
            if int(count[0][0]) >= max_queue:
                return False
            self.db.run(
                "INSERT INTO ctrl_exec_pairing (reqid, request, queued) "
                "VALUES (:q, CAST(:r AS jsonb), :t)",
                q=record["id"],
                r=_json(record),
                t=float(self.clock()),
            )
            return True

    def decision(self, reqid: str) -> bytes | None:
        return self._body(reqid)

    def _body(self, reqid: str) -> bytes | None:
        if not PAIRING_REQID.matches(reqid):
            raise StateError(f"not a pairing request id: {reqid!r}")
        rows = self.db.run(
            "SELECT body FROM ctrl_exec_pairing WHERE reqid = :q AND state <> 'pending'",
            q=reqid,
        )
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    def delivered(self, reqid: str) -> None:
        if PAIRING_REQID.matches(reqid):
            self.db.run("DELETE FROM ctrl_exec_pairing WHERE reqid = :q", q=reqid)

    def withdraw(self, reqid: str) -> bytes | None:
        with self.lock():
            body = self._body(reqid)
            if body is None:
                self.db.run(
                    "DELETE FROM ctrl_exec_pairing WHERE reqid = :q AND state = 'pending'",
                    q=reqid,
                )
            return body

    def pending(self) -> list[dict]:
        with self.lock():
            self.tidy()
            rows = self.db.run(
                "SELECT request FROM ctrl_exec_pairing WHERE state = 'pending' "
                "ORDER BY queued, reqid"
            )
        records = [_obj(row[0]) for row in rows]
        return sorted(records, key=lambda r: (str(r.get("received", "")), str(r.get("id", ""))))

    def get_pending(self, reqid: str) -> dict:
        if not PAIRING_REQID.matches(reqid):
            raise StateError(f"no pending pairing request '{reqid}'")
        rows = self.db.run("SELECT request, state FROM ctrl_exec_pairing WHERE reqid = :q", q=reqid)
        if not rows:
            raise StateError(f"no pending pairing request '{reqid}' (see 'ced list-requests')")
        if rows[0][1] != "pending":
            raise StateError(f"pairing request '{reqid}' has already been decided")
        return _obj(rows[0][0])

    def commit_approval(self, reqid: str, approved: dict, record: dict) -> None:
        from ..core.http import encode_json

        self.registry._path(record["hostname"])
        with self.db.transaction() as conn:
            conn.run(
                "INSERT INTO ctrl_exec_agents (name, record) VALUES (:n, CAST(:r AS jsonb)) "
                "ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record, updated = now()",
                n=record["hostname"],
                r=_json(record),
            )
            done = conn.run(
                "UPDATE ctrl_exec_pairing SET state = 'approved', body = :b, decided = :t "
                "WHERE reqid = :q AND state = 'pending' RETURNING reqid",
                q=reqid,
                b=encode_json(approved),
                t=float(self.clock()),
            )
            if not done:
                raise StateError(f"pairing request '{reqid}' has already been decided")

    def deny(self, reqid: str, body: dict) -> dict:
        from ..core.http import encode_json

        request = self.get_pending(reqid)
        self.db.run(
            "UPDATE ctrl_exec_pairing SET state = 'denied', body = :b, decided = :t "
            "WHERE reqid = :q",
            q=reqid,
            b=encode_json(body),
            t=float(self.clock()),
        )
        return request


# -- leader lease ---------------------------------------------------------------------------


class PgLeader:
    """One node at a time does `duty`: the holder of its advisory lock, on a
    connection kept for the lease; a holder that dies loses it at once."""

    def __init__(self, db: Database, duty: str):
        self.db = db
        self.key = advisory_key("leader", duty)
        self._conn: Any = None

    def try_acquire(self) -> bool:
        """True while this holder keeps the lease. A lease lost with its
        session (the server restarted or failed over) answers False once,
        so the caller knows another node may have led meanwhile; the next
        call tries to take it again."""
        if self._conn is not None:
            if self._conn.healthy():
                return True
            self.release()
            return False
        conn = self.db.dedicated()
        try:
            got = bool(conn.run("SELECT pg_try_advisory_lock(:k)", k=self.key)[0][0])
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# -- fleet directory ------------------------------------------------------------------------


class PgFleet:
    """`ctrl_exec_dispatchers`: every node's id and serial, and when it last
    said so."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    def announce(self, dispatcher_id: str, serial: str) -> None:
        self.db.run(
            "INSERT INTO ctrl_exec_dispatchers (dispatcher_id, serial, seen) "
            "VALUES (:i, :s, :t) ON CONFLICT (dispatcher_id) DO UPDATE "
            "SET serial = EXCLUDED.serial, seen = EXCLUDED.seen",
            i=dispatcher_id,
            s=serial,
            t=float(self.clock()),
        )

    def members(self, seen_within: float | None = None) -> dict[str, str]:
        """Every node, or those that announced themselves in the last
        `seen_within` seconds."""
        since = float("-inf") if seen_within is None else float(self.clock()) - seen_within
        rows = self.db.run(
            "SELECT dispatcher_id, serial FROM ctrl_exec_dispatchers WHERE seen >= :t ORDER BY 1",
            t=since,
        )
        return {str(row[0]): str(row[1]) for row in rows}


# -- revocations ----------------------------------------------------------------------------


class PgRevocations:
    """`ctrl_exec_revoked`: the union of the fleet's revocation lists."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    def revoked(self, kind: str) -> set[str]:
        rows = self.db.run("SELECT value FROM ctrl_exec_revoked WHERE kind = :k", k=kind)
        return {str(row[0]) for row in rows}

    def add(self, kind: str, values: list[str], note: str = "") -> None:
        for value in values:
            self.db.run(
                "INSERT INTO ctrl_exec_revoked (kind, value, added) VALUES (:k, :v, :t) "
                "ON CONFLICT DO NOTHING",
                k=kind,
                v=value,
                t=float(self.clock()),
            )


def gauge_counts(db: Database) -> dict[str, int]:
    row = db.run(
        "SELECT (SELECT count(*) FROM ctrl_exec_pairing WHERE state = 'pending'), "
        "(SELECT count(*) FROM ctrl_exec_runs)"
    )[0]
    return {"pairing_pending": int(row[0]), "run_records": int(row[1])}
