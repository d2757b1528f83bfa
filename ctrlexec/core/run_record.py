"""Dispatcher run records (protocol.md §7.5), with no I/O.

One record per reqid, shared by the API (`/status`) and `ced status`/`wait`:

- sync: `{reqid, script, mode:"sync", hosts:[as requested], results:[...],
  completed:<epoch>, complete:true, submitter?}`;
- async: `{reqid, script, mode:"async", hosts:{name: entry}, created:<epoch>,
  pending:[sorted names], complete:<bool>, submitter?}`.

`submitter` (`{username, source_ip}`) is kept for runs submitted through the
API, so the `status` hook can tell owners from others; responses never
carry it.

An async host entry moves on as the agents' `/result` answers come in
(0.12's transitions): `accepted`/`running` are pending; a `done` answer
replaces the entry with `{status:"done", exit, stdout, stderr}`; an agent
that no longer knows the reqid makes it `expired`; any other answer keeps
the state and notes `fetch_error`. Unlike 0.12, a terminal entry never
moves again (two pollers racing cannot turn `done` back into `running`),
and a done entry keeps the agent's `error`, `interrupted` and `cancelled`
marks.

Runs stopped by `ced cancel` (ours): a cancelled async host becomes
`{status:"cancelled"}` (terminal, a failure); in a sync record, a host whose
result was still outstanding (`status:"running"`, left by an interrupted
`ced run`) becomes `status:"cancelled"` with `error:"cancelled"`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .results import RUN, HostResult

MODE_SYNC = "sync"
MODE_ASYNC = "async"
PENDING = ("accepted", "running")
CANCELLED = "cancelled"
# A sync host ced stopped waiting for (Ctrl-C): the script may still run there.
STILL_RUNNING = "running"
STILL_RUNNING_ERROR = "interrupted: ced stopped waiting; the script may still be running there"


def sync_record(
    reqid: str,
    script: str,
    hosts: list[str],
    results: Sequence[HostResult],
    completed: int,
    submitter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "reqid": reqid,
        "script": script,
        "mode": MODE_SYNC,
        "hosts": list(hosts),
        "results": [result.to_wire() for result in results],
        "completed": int(completed),
        "complete": True,
    }
    if submitter is not None:
        record["submitter"] = dict(submitter)
    return record


def async_record(
    reqid: str,
    script: str,
    submitted: Sequence[HostResult],
    created: int,
    submitter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of an async submission, from the per-host submit results."""
    hosts: dict[str, dict[str, Any]] = {}
    for result in submitted:
        name = result.wire.get("host")
        if not isinstance(name, str):
            continue
        status = result.status
        entry: dict[str, Any] = {"status": status if status is not None else "error"}
        if result.has("error"):
            entry["error"] = result.wire["error"]
        hosts[name] = entry
    record: dict[str, Any] = {
        "reqid": reqid,
        "script": script,
        "mode": MODE_ASYNC,
        "hosts": hosts,
        "created": int(created),
    }
    if submitter is not None:
        record["submitter"] = dict(submitter)
    return summarise(record)


def is_async(record: dict[str, Any]) -> bool:
    return record.get("mode") == MODE_ASYNC and isinstance(record.get("hosts"), dict)


def pending_hosts(record: dict[str, Any]) -> list[str]:
    if not is_async(record):
        return []
    return sorted(
        name
        for name, entry in record["hosts"].items()
        if isinstance(entry, dict) and entry.get("status") in PENDING
    )


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    pending = pending_hosts(record)
    record["pending"] = pending
    record["complete"] = not pending
    return record


def merge_fetched(record: dict[str, Any], fetched: Mapping[str, HostResult]) -> bool:
    """Apply `/result` answers (host name -> per-host result object, §7.7)
    to an async record in place; True when anything changed."""
    if not is_async(record):
        return False
    before = repr(record)
    for name, answer in fetched.items():
        entry = record["hosts"].get(name)
        if not isinstance(entry, dict) or entry.get("status") not in PENDING:
            continue
        status = answer.status
        if status == "done":
            done: dict[str, Any] = {
                "status": "done",
                "exit": answer.wire.get("exit"),
                "stdout": answer.wire.get("stdout"),
                "stderr": answer.wire.get("stderr"),
            }
            for key in ("error", "interrupted", "cancelled"):
                if answer.has(key):
                    done[key] = answer.wire[key]
            record["hosts"][name] = done
        elif status == "running":
            entry["status"] = "running"
            entry.pop("fetch_error", None)
        elif status == "unknown":
            entry["status"] = "expired"
            entry.pop("fetch_error", None)
        else:
            entry["fetch_error"] = answer.error or "fetch failed"
    summarise(record)
    return repr(record) != before


def public(record: dict[str, Any]) -> dict[str, Any]:
    """What a caller sees: the record without `submitter`."""
    return {key: value for key, value in record.items() if key != "submitter"}


def host_failed(entry: dict[str, Any]) -> bool:
    """An async host did not finish with exit 0 (0.12's `wait` rule)."""
    status = entry.get("status")
    if status in ("busy", "error", "expired", CANCELLED):
        return True
    exit_code = entry.get("exit")
    return status == "done" and (isinstance(exit_code, bool) or exit_code != 0)


def any_failed(record: dict[str, Any]) -> bool:
    """Whether a complete record has a failed host (sync: a non-zero exit)."""
    if is_async(record):
        return any(
            host_failed(entry) for entry in record["hosts"].values() if isinstance(entry, dict)
        )
    results = record.get("results")
    if not isinstance(results, list):
        return True
    return any(HostResult.from_wire(RUN, result).failed for result in results)


def still_running_result(host: str, script: str, reqid: str) -> HostResult:
    """A sync host's entry when ced stopped waiting before its answer."""
    return HostResult(
        RUN,
        {
            "host": host,
            "script": script,
            "reqid": reqid,
            "exit": -1,
            "status": STILL_RUNNING,
            "error": STILL_RUNNING_ERROR,
        },
    )


def mark_cancelled(record: dict[str, Any], hosts: list[str]) -> bool:
    """Record that `hosts` were cancelled; True when anything changed. Only
    a host whose run had not ended yet changes."""
    changed = False
    wanted = set(hosts)
    if is_async(record):
        for name in wanted:
            entry = record["hosts"].get(name)
            if isinstance(entry, dict) and entry.get("status") in PENDING:
                record["hosts"][name] = {"status": CANCELLED, "error": "cancelled"}
                changed = True
        summarise(record)
        return changed
    for result in record.get("results") or []:
        if (
            isinstance(result, dict)
            and result.get("host") in wanted
            and result.get("status") == STILL_RUNNING
        ):
            result.update({"status": CANCELLED, "error": "cancelled", "exit": -1})
            changed = True
    return changed
