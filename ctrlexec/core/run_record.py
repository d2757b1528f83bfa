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
and a done entry keeps the agent's `error` and `interrupted` marks.
"""

from __future__ import annotations

from typing import Any

MODE_SYNC = "sync"
MODE_ASYNC = "async"
PENDING = ("accepted", "running")


def sync_record(
    reqid: str,
    script: str,
    hosts: list[str],
    results: list[dict[str, Any]],
    completed: int,
    submitter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "reqid": reqid,
        "script": script,
        "mode": MODE_SYNC,
        "hosts": list(hosts),
        "results": list(results),
        "completed": int(completed),
        "complete": True,
    }
    if submitter is not None:
        record["submitter"] = dict(submitter)
    return record


def async_record(
    reqid: str,
    script: str,
    submitted: list[dict[str, Any]],
    created: int,
    submitter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of an async submission, from the per-host submit results."""
    hosts: dict[str, dict[str, Any]] = {}
    for result in submitted:
        name = result.get("host")
        if not isinstance(name, str):
            continue
        status = result.get("status")
        entry: dict[str, Any] = {"status": status if isinstance(status, str) else "error"}
        if result.get("error") is not None:
            entry["error"] = result["error"]
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


def merge_fetched(record: dict[str, Any], fetched: dict[str, dict[str, Any]]) -> bool:
    """Apply `/result` answers (host name -> per-host result object, §7.7)
    to an async record in place; True when anything changed."""
    if not is_async(record):
        return False
    before = repr(record)
    for name, answer in fetched.items():
        entry = record["hosts"].get(name)
        if not isinstance(entry, dict) or entry.get("status") not in PENDING:
            continue
        status = answer.get("status")
        if status == "done":
            done: dict[str, Any] = {
                "status": "done",
                "exit": answer.get("exit"),
                "stdout": answer.get("stdout"),
                "stderr": answer.get("stderr"),
            }
            for key in ("error", "interrupted"):
                if answer.get(key) is not None:
                    done[key] = answer[key]
            record["hosts"][name] = done
        elif status == "running":
            entry["status"] = "running"
            entry.pop("fetch_error", None)
        elif status == "unknown":
            entry["status"] = "expired"
            entry.pop("fetch_error", None)
        else:
            entry["fetch_error"] = str(answer.get("error") or "fetch failed")
    summarise(record)
    return repr(record) != before


def public(record: dict[str, Any]) -> dict[str, Any]:
    """What a caller sees: the record without `submitter`."""
    return {key: value for key, value in record.items() if key != "submitter"}


def host_failed(entry: dict[str, Any]) -> bool:
    """An async host did not finish with exit 0 (0.12's `wait` rule)."""
    status = entry.get("status")
    if status in ("busy", "error", "expired"):
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
    return any(
        not isinstance(result, dict)
        or result.get("exit") != 0
        or isinstance(result.get("exit"), bool)
        for result in results
    )
