"""The dispatcher's run store: one JSON record per run, and async progress.

`<runs_dir>/<reqid>.json` (0.12's layout), mode 0640, written atomically
(temp file, fsync, rename): a reader, or a dispatcher killed at any instant,
leaves the old record or the new one, never a part. A crash can leave a
temp file (`.<reqid>.json.*.tmp`), which no reader ever opens and `purge`
removes once it is an hour old (store.TEMP_GRACE).

Records (core.run_record) are written by API runs (sync and async) and by
`ced run --async`; `/status`, `ced status` and `ced wait` read them.
Aggregation asks the agents of an async run's pending hosts for
`/result/<reqid>` and merges the answers under the store lock, so pollers
racing each other never undo each other's progress. A record is rewritten
only when something changed.

A record older than TTL seconds (by mtime) is never served (0.12 purges the
whole store on every `/status` for that); `purge` removes them all and runs
at `dispatcher serve` start and on a timer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import log
from ..core import run_record
from ..core.ids import RUN_REQID
from ..core.results import HostResult, fetch_failure
from ..errors import CtrlExecError, StateError
from ..store import FileLock, atomic_write, ensure_dir, purge_expired, read_json_object
from .registry import UnknownAgents

TTL = 86_400
# A run record holds every host's output (each bounded by the agent client);
# refuse to parse anything larger than this.
MAX_RECORD_BYTES = 256 * 1_048_576
RECORD_MODE = 0o640


class RunStore:
    def __init__(self, directory: str | os.PathLike, clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.clock = clock

    def path(self, reqid: str) -> Path:
        if not RUN_REQID.matches(reqid):
            raise CtrlExecError(f"invalid reqid: {reqid!r}")
        return self.directory / f"{reqid}.json"

    def _lock(self) -> FileLock:
        ensure_dir(self.directory, 0o750)
        return FileLock(self.directory / ".lock", 0o660)

    def save(self, record: dict) -> None:
        """Write a record; a failure is logged `run-store-fail` and raised."""
        reqid = record["reqid"]
        data = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        try:
            ensure_dir(self.directory, 0o750)
            atomic_write(self.path(reqid), data, RECORD_MODE)
        except (OSError, StateError) as exc:
            log.event(
                "run-store-fail",
                log.WARNING,
                REQID=reqid,
                ERROR=getattr(exc, "strerror", None) or str(exc),
            )
            raise StateError(f"cannot record run {reqid}: {exc}") from None

    def load(self, reqid: str) -> dict | None:
        """The record, or None when there is none, it is past the TTL, or the
        reqid cannot be one; StateError when it cannot be read."""
        if not RUN_REQID.matches(reqid):
            return None
        path = self.path(reqid)
        try:
            if self.clock() - path.stat().st_mtime > TTL:
                path.unlink(missing_ok=True)  # expired: as good as purged
                return None
            return read_json_object(path, MAX_RECORD_BYTES)
        except FileNotFoundError:  # from stat: never recorded or purged
            return None
        except OSError as exc:
            raise StateError(f"cannot read run {reqid}: {exc.strerror or exc}") from None

    def update(self, reqid: str, change: Callable[[dict], bool]) -> dict | None:
        """Re-read the record under the store lock, apply `change` (True when
        it changed something) and write it back if so. A caller that may read
        the store but not write it (a member of the service group running
        `ced status`) still gets the changed record; it is just not saved."""
        try:
            lock: FileLock | None = self._lock().acquire()
        except (OSError, StateError):
            lock = None
        try:
            record = self.load(reqid)
            if record is not None and change(record) and lock is not None:
                try:
                    self.save(record)
                except StateError:
                    pass  # logged run-store-fail; the caller still sees the new state
            return record
        finally:
            if lock is not None:
                lock.release()

    def record_sync(
        self,
        reqid: str,
        script: str,
        hosts: list[str],
        results: Sequence[HostResult],
        submitter: dict | None = None,
    ) -> dict:
        record = run_record.sync_record(reqid, script, hosts, results, int(self.clock()), submitter)
        self.save(record)
        return record

    def record_async(
        self,
        reqid: str,
        script: str,
        submitted: Sequence[HostResult],
        submitter: dict | None = None,
    ) -> dict:
        record = run_record.async_record(reqid, script, submitted, int(self.clock()), submitter)
        self.save(record)
        return record

    def purge(self, ttl: int = TTL) -> int:
        """Remove records older than `ttl` seconds and temp files left by
        writers that died; the number of records removed."""
        removed = purge_expired(self.directory, ttl, self.clock(), _is_record_name)
        if removed:
            log.event("run-store-purge", log.INFO, REMOVED=len(removed))
        return len(removed)


def _is_record_name(name: str) -> bool:
    return name.endswith(".json") and RUN_REQID.matches(name[:-5])


def aggregate(store: RunStore, engine, reqid: str, port: int | None = None) -> dict | None:
    """The record of `reqid` brought up to date: every pending host of an
    async run is asked for `/result/<reqid>` (on `port` when its record has
    the default port) and the answers merged. None when there is no record."""
    record = store.load(reqid)
    if record is None:
        return None
    pending = run_record.pending_hosts(record)
    if not pending:
        return record
    fetched: dict[str, HostResult] = {}
    targets = []
    for name in pending:
        try:
            targets.extend(engine.resolve([name], port))
        except UnknownAgents:
            fetched[name] = fetch_failure(name, "not a registered agent")
    for answer in engine.fetch_results(targets, reqid):
        fetched[answer.host] = answer
    return store.update(reqid, lambda current: run_record.merge_fetched(current, fetched))
