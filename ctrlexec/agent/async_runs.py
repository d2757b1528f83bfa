"""Async runs on the agent: `/run` with `"async": true`, and `/result/<reqid>`.

Theory of operation. An accepted job runs on a thread of the agent process
through the same `execute(ScriptJob) -> ScriptResult` the synchronous path
uses (today the agent's Runner; a privileged executor client has the same
shape, so async jobs can go through it unchanged). Its record lives in the
run store, partitioned by the owning dispatcher:

    <async_runs_dir>/<dispatcher_id>/<reqid>.json      (0640, atomic)

- running: `{reqid, status:"running", script, owner, started}`;
- done:    the same plus `finished, exit, stdout, stderr` and `status:"done"`.

At most one job per (dispatcher, script) runs at a time; another submission
is 409 busy (0.12 is per script for every dispatcher, which lets one
dispatcher's jobs block, and reveal, another's). `/result/<reqid>` answers
only the dispatcher that owns the record (404 `unknown` for anyone else,
logged `result-deny`). Records are kept 24 hours after their last change
(0.12), purged at each submission and at start.

A job the agent could not see to its end never stays `running`: when the
agent stops (SIGTERM) its jobs are killed and recorded as interrupted with
the output they had written; when it was killed outright, the next start
finds their `running` records and records them interrupted. An interrupted
record is `status:"done"` with `exit:-1`, `error:"interrupted: ..."` and
`interrupted:true`: a 0.12 dispatcher knows only `running` and `done` (it
would poll any other status forever), so the outcome is a failed run it
can show, and our dispatcher reports it as interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import log
from ..core import agent_wire, names, run_control
from ..core.agent_wire import RunRequest
from ..core.ids import RUN_REQID
from ..core.timefmt import iso_utc
from ..errors import StateError
from ..store import atomic_write, ensure_dir, purge_expired, read_json
from .jobs import CANCELLED_ERROR, RunningJobs
from .runner import EXIT_SIGNALLED, ScriptJob, ScriptResult

TTL = 86_400
# Jobs running at once across every dispatcher; more submissions get
# 0.12's `could not start async job`.
MAX_RUNNING = 256
# A record holds one script's output (bounded by max_output_bytes).
MAX_RECORD_BYTES = 80 * 1_048_576
# When the agent stops: how long killed jobs get to record what they wrote.
STOP_WAIT = 5.0
INTERRUPTED = "interrupted: the agent stopped while the script was running"
RECORD_MODE = 0o640

Execute = Callable[[ScriptJob], ScriptResult]


def _is_record_name(name: str) -> bool:
    return name.endswith(".json") and RUN_REQID.matches(name[:-5])


def _ended_early(result: ScriptResult | None, error: str, flag: str) -> dict:
    """The fields of a job the agent did not see end by itself: 0.12's exit -1,
    whatever output there was, the reason, and a flag saying which."""
    return {
        "exit": -1,
        "stdout": result.stdout if result else "",
        "stderr": result.stderr if result else "",
        "error": error,
        flag: True,
    }


class AsyncRuns:
    def __init__(
        self,
        directory: str | Path,
        execute: Execute,
        clock: Callable[[], float] = time.time,
        max_running: int = MAX_RUNNING,
        release: Callable[[ScriptResult], None] | None = None,
        jobs: RunningJobs | None = None,
    ):
        self.directory = Path(directory)
        self.jobs = jobs or RunningJobs(clock)
        self.execute = execute
        self.release = release  # gives back a result's output budget once stored
        self.clock = clock
        self.max_running = max_running
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], str] = {}  # (dispatcher, script) -> reqid
        self._threads: dict[tuple[str, str], threading.Thread] = {}
        self._stopping = False

    # --- store ---------------------------------------------------------------

    def _path(self, dispatcher: str, reqid: str) -> Path:
        return self.directory / dispatcher / f"{reqid}.json"

    def _write(self, record: dict) -> None:
        path = self._path(record["owner"], record["reqid"])
        ensure_dir(path.parent, 0o750)
        atomic_write(
            path,
            json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
            RECORD_MODE,
        )

    def _read(self, path: Path) -> dict | None:
        try:
            record = read_json(path, MAX_RECORD_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, StateError) as exc:
            log.event("async-store-fail", log.WARNING, FILE=str(path), ERROR=str(exc)[:200])
            return None
        return record if isinstance(record, dict) else None

    def _partitions(self) -> list[Path]:
        try:
            return [
                entry
                for entry in self.directory.iterdir()
                if entry.is_dir() and names.is_dispatcher_id(entry.name)
            ]
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.event(
                "async-store-fail",
                log.ERR,
                FILE=str(self.directory),
                ERROR=exc.strerror or str(exc),
            )
            return []

    def purge(self) -> int:
        """Remove records older than the TTL (never one still running)."""
        with self._lock:
            live = set(self._running.values())
        removed = 0
        now = self.clock()
        for partition in self._partitions():
            removed += len(
                purge_expired(
                    partition,
                    TTL,
                    now,
                    lambda name: _is_record_name(name) and name[:-5] not in live,
                )
            )
        return removed

    def recover(self) -> int:
        """At start: every `running` record belongs to an agent that is gone;
        record it interrupted. Then purge. The number recovered."""
        recovered = 0
        for partition in self._partitions():
            for path in sorted(partition.glob("*.json")):
                if not _is_record_name(path.name):
                    continue
                record = self._read(path)
                if record is None or record.get("status") != "running":
                    continue
                if record.get("owner") != partition.name or record.get("reqid") != path.name[:-5]:
                    continue  # not a record this store wrote
                self._store_result(record, None)
                recovered += 1
        self.purge()
        return recovered

    # --- /run async ------------------------------------------------------------

    def submit(
        self, request: RunRequest, dispatcher: str, job: ScriptJob, log_fields: dict
    ) -> tuple[int, dict]:
        """Start `job` detached; (HTTP status, body) of 0.12's answers."""
        if not RUN_REQID.matches(request.reqid):
            return 200, agent_wire.run_refused(request, agent_wire.ASYNC_BAD_REQID)
        if not names.is_dispatcher_id(dispatcher):
            log.event(
                "async-store-fail",
                log.ERR,
                REASON="dispatcher id cannot name a store directory",
                **log_fields,
            )
            return 200, agent_wire.run_refused(request, agent_wire.ASYNC_NOT_STARTED)
        self.purge()
        key = (dispatcher, request.script)
        record = {
            "reqid": request.reqid,
            "status": "running",
            "script": request.script,
            "owner": dispatcher,
            "started": iso_utc(self.clock()),
        }
        with self._lock:
            if key in self._running:
                log.event("run-async-busy", log.WARNING, **log_fields)
                return 409, agent_wire.async_busy(request)
            refusal = self._refusal(dispatcher, request.reqid)
            if refusal:
                log.event("async-store-fail", log.WARNING, REASON=refusal, **log_fields)
                return 200, agent_wire.run_refused(request, agent_wire.ASYNC_NOT_STARTED)
            try:
                self._write(record)
            except (OSError, StateError) as exc:
                log.event("async-store-fail", log.ERR, ERROR=str(exc)[:200], **log_fields)
                return 200, agent_wire.run_refused(request, agent_wire.ASYNC_NOT_STARTED)
            thread = threading.Thread(
                target=self._job,
                args=(key, record, job, log_fields),
                name=f"async-{request.reqid}",
                daemon=True,
            )
            self._running[key] = request.reqid
            self._threads[key] = thread
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self._running.pop(key, None)
                self._threads.pop(key, None)
            self._store_result(record, None)
            return 200, agent_wire.run_refused(request, agent_wire.ASYNC_NOT_STARTED)
        log.event("run-async", log.INFO, **log_fields)
        return 202, agent_wire.async_accepted(request)

    def _refusal(self, dispatcher: str, reqid: str) -> str:
        """Why a new job cannot start (caller holds the lock), or ''."""
        if self._stopping:
            return "agent stopping"
        if len(self._running) >= self.max_running:
            return f"{self.max_running} async jobs already running"
        if self._path(dispatcher, reqid).exists():
            return "reqid already used"
        return ""

    def _job(self, key: tuple[str, str], record: dict, job: ScriptJob, log_fields: dict) -> None:
        result: ScriptResult | None = None
        tracked = None
        try:
            with self.jobs.track(
                record["owner"], record["reqid"], record["script"], run_control.ASYNC, job.timeout
            ) as tracked:
                result = self.execute(
                    dataclasses.replace(
                        job, on_start=tracked.started, on_stoppable=tracked.stoppable
                    )
                )
        finally:
            self._store_result(record, result, tracked is not None and tracked.cancelled)
            if result is not None and self.release is not None:
                self.release(result)
            with self._lock:
                self._running.pop(key, None)
                self._threads.pop(key, None)
            if result is not None:
                log.event("run-async-done", log.INFO, EXIT=result.exit, **log_fields)

    def _store_result(
        self, record: dict, result: ScriptResult | None, cancelled: bool = False
    ) -> None:
        """The final record: the script's result, or interrupted when the
        agent stopped it (or never saw it end), or cancelled by its owner."""
        done = dict(record, status="done", finished=iso_utc(self.clock()))
        if cancelled:
            done.update(_ended_early(result, CANCELLED_ERROR, "cancelled"))
        elif result is None or (self._stopping and result.exit == EXIT_SIGNALLED):
            done.update(_ended_early(result, INTERRUPTED, "interrupted"))
            log.event(
                "async-interrupted",
                log.WARNING,
                REQID=record["reqid"],
                SCRIPT=record["script"],
                DISPATCHER=record["owner"],
            )
        else:
            done.update({"exit": result.exit, "stdout": result.stdout, "stderr": result.stderr})
        try:
            self._write(done)
        except (OSError, StateError) as exc:
            log.event("async-store-fail", log.ERR, REQID=record["reqid"], ERROR=str(exc)[:200])

    # --- /result/<reqid> ---------------------------------------------------------

    def result(self, reqid: str, dispatcher: str | None, log_fields: dict) -> tuple[int, dict]:
        """The caller's own record verbatim, else 404 `unknown`."""
        record = None
        if dispatcher and names.is_dispatcher_id(dispatcher) and RUN_REQID.matches(reqid):
            record = self._read(self._path(dispatcher, reqid))
        if record is not None and record.get("owner") == dispatcher:
            log.event("result", log.INFO, STATUS=record.get("status"), **log_fields)
            return 200, record
        if record is not None or self._held_by_another(dispatcher, reqid):
            log.event("result-deny", log.WARNING, REASON="not-owner", **log_fields)
        else:
            log.event("result-miss", log.INFO, **log_fields)
        return 404, agent_wire.result_unknown(reqid)

    def _held_by_another(self, dispatcher: str | None, reqid: str) -> bool:
        """Whether another dispatcher's partition has this reqid (an audit
        signal: someone asks for a run that is not theirs)."""
        if not RUN_REQID.matches(reqid):
            return False
        return any(
            partition.name != dispatcher and (partition / f"{reqid}.json").exists()
            for partition in self._partitions()
        )

    # --- agent stop ------------------------------------------------------------------

    def interrupt(self) -> None:
        """The agent is stopping: no new jobs; jobs that end from now on
        (their scripts are about to be killed) are recorded interrupted."""
        with self._lock:
            self._stopping = True

    def wait(self, timeout: float = STOP_WAIT) -> None:
        """Let killed jobs record their end; record the rest interrupted."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads.items())
        for _, thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            stuck = [
                (key, self._running[key])
                for key, thread in threads
                if thread.is_alive() and key in self._running
            ]
        for (dispatcher, _script), reqid in stuck:
            record = self._read(self._path(dispatcher, reqid))
            if record is not None and record.get("status") == "running":
                self._store_result(record, None)
