"""Runs that stop early: `ced run` interrupted by Ctrl-C, and `ced cancel`.

An interrupted synchronous `ced run` records what it knows in the run store
(`runs/<reqid>.json`, a sync record): the answers that came in, and a
`status:"running"` entry for every host it stopped waiting for, so that
`ced status REQID` can show the run and `ced cancel REQID` (with no hosts)
knows where to send the cancel.

`cancel_run` asks the agents to stop a reqid (POST /cancel: owner-gated on
our agent, 404 from a 0.12 agent) and marks the cancelled hosts in the
run's record, when there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core import run_record
from ..core.caller import Caller
from ..core.results import HostResult
from ..core.run_control import CANCELLED
from ..errors import CtrlExecError, StateError
from .engine import BadRequest, Engine
from .runstore import RunStore


@dataclass(frozen=True)
class Interrupted:
    reqid: str
    still_running: list[str]  # hosts ced stopped waiting for
    recorded: bool  # whether `ced status REQID` can find it
    record_error: str = ""


def record_interrupted(
    engine: Engine,
    store: RunStore,
    reqid: str,
    script: str,
    hosts: Sequence[str],
    port: int | None,
    answered: Sequence[HostResult],
) -> Interrupted:
    """Record an interrupted synchronous run: `answered` are the per-host
    results that came in, every other host is still running."""
    try:
        names = [target.name for target in engine.resolve(hosts, port)]
    except CtrlExecError as exc:  # interrupted before the hosts were even resolved
        return Interrupted(reqid, [], False, str(exc))
    by_host = {result.host: result for result in answered}
    still = [name for name in names if name not in by_host]
    results = [
        by_host.get(name) or run_record.still_running_result(name, script, reqid) for name in names
    ]
    try:
        store.record_sync(reqid, script, names, results)
    except StateError as exc:
        return Interrupted(reqid, still, False, str(exc))
    return Interrupted(reqid, still, True)


def cancel_run(
    engine: Engine,
    store: RunStore,
    reqid: str,
    hosts: Sequence[str],
    caller: Caller,
    port: int | None = None,
) -> list[dict]:
    """Cancel `reqid` on `hosts` (none given: the hosts of its record that
    may still run it); per-host results. The record, if any, is updated."""
    try:
        record = store.load(reqid)
    except StateError:
        record = None
    script = str((record or {}).get("script", ""))
    if not hosts:
        if record is None:
            raise BadRequest(
                f"no record of run {reqid} here; name the hosts: cancel {reqid} HOST..."
            )
        hosts = _unfinished_hosts(record)
        if not hosts:
            raise BadRequest(f"run {reqid} has no host left running (see: status {reqid})")
    results = engine.cancel(list(hosts), reqid, caller=caller, port=port, script=script)
    cancelled = [result["host"] for result in results if result["status"] == CANCELLED]
    if record is not None and cancelled:
        try:
            store.update(reqid, lambda found: run_record.mark_cancelled(found, cancelled))
        except CtrlExecError:
            pass  # logged by the store; the agents were told all the same
    return results


def _unfinished_hosts(record: dict) -> list[str]:
    if run_record.is_async(record):
        return run_record.pending_hosts(record)
    return [
        str(result.get("host"))
        for result in record.get("results") or []
        if isinstance(result, dict) and result.get("status") == run_record.STILL_RUNNING
    ]
