"""The agent's tracking of running scripts (agent/jobs.py) with real
processes: GET /running's list, and POST /cancel's TERM-then-KILL of the
script's whole process group, for its owner only."""

from __future__ import annotations

import dataclasses
import threading

from ctrlexec.agent.jobs import RunningJobs
from ctrlexec.agent.runner import Runner, ScriptJob
from ctrlexec.core import run_control


def _script(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def _run_tracked(jobs, runner, job, owner="disp-a", reqid="r1"):
    out = {}

    def work():
        with jobs.track(owner, reqid, "s", run_control.SYNC, job.timeout) as tracked:
            out["result"] = runner.run(dataclasses.replace(job, on_start=tracked.started))
            out["cancelled"] = tracked.cancelled

    thread = threading.Thread(target=work)
    thread.start()
    return thread, out


def _gone(pid: int) -> bool:
    """Ended (a zombie waiting for a reaper counts as ended)."""
    for _ in range(2000):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        threading.Event().wait(0.005)
    return False


def _wait_listed(jobs, owner="disp-a"):
    for _ in range(2000):
        if jobs.owned_by(owner):
            return
        threading.Event().wait(0.005)
    raise AssertionError("never listed")


def test_cancel_terminates_the_process_group_of_the_owner_only(tmp_path):
    started = tmp_path / "started"
    child_pid = tmp_path / "child"
    script = _script(
        tmp_path,
        "tree.sh",
        f"#!/bin/sh\nsleep 60 &\necho $! > {child_pid}\n: > {started}\nwait\n",
    )
    jobs = RunningJobs()
    runner = Runner()
    job = ScriptJob(script, (script,), timeout=60)
    thread, out = _run_tracked(jobs, runner, job)
    _wait_listed(jobs)
    for _ in range(2000):
        if started.exists():
            break
        threading.Event().wait(0.005)
    [entry] = jobs.owned_by("disp-a")
    assert (entry.reqid, entry.mode, entry.timeout) == ("r1", "sync", 60.0)
    assert jobs.owned_by("disp-b") == []
    assert jobs.cancel("disp-b", "r1") == []  # another dispatcher cannot
    assert jobs.cancel("disp-a", "other") == []
    assert len(jobs.cancel("disp-a", "r1")) == 1
    thread.join(30)
    assert not thread.is_alive()
    assert out["cancelled"] is True and out["result"].exit == 126
    grandchild = int(child_pid.read_text())
    assert _gone(grandchild)  # the whole group got the signal
    assert jobs.owned_by("disp-a") == []


def test_a_script_that_ignores_term_is_killed_after_the_grace(tmp_path):
    started = tmp_path / "started"
    script = _script(
        tmp_path,
        "stubborn.sh",
        f"#!/bin/sh\ntrap '' TERM\n: > {started}\nwhile :; do sleep 0.05; done\n",
    )
    jobs = RunningJobs(cancel_grace=0.3)
    job = ScriptJob(script, (script,), timeout=60)
    thread, out = _run_tracked(jobs, Runner(), job)
    _wait_listed(jobs)
    for _ in range(2000):
        if started.exists():
            break
        threading.Event().wait(0.005)
    jobs.cancel("disp-a", "r1")
    thread.join(30)
    assert not thread.is_alive() and out["result"].exit == 126 and out["cancelled"]


def test_a_run_with_a_stop_function_is_stopped_through_it():
    """The executor's runs: no process group here, a stop function instead,
    called on cancel, at once if the cancel came first, never after the end."""
    jobs = RunningJobs()
    stops: list[str] = []
    with jobs.track("disp-a", "r1", "s", run_control.SYNC, 60) as job:
        job.stoppable(lambda: stops.append("first"))
        assert jobs.cancel("disp-b", "r1") == [] and stops == []
        assert len(jobs.cancel("disp-a", "r1")) == 1
        assert stops == ["first"]
    with jobs.track("disp-a", "r2", "s", run_control.SYNC, 60) as job:
        jobs.cancel("disp-a", "r2")
        job.stoppable(lambda: stops.append("late"))
        assert stops == ["first", "late"]
    with jobs.track("disp-a", "r3", "s", run_control.SYNC, 60) as job:
        job.stoppable(lambda: stops.append("ended"))
    job.cancel(0)  # reaped: nothing left to stop
    assert stops == ["first", "late"]
