"""GET /running and POST /cancel: the wire (core/run_control.py), and the
agent's tracking of running scripts (agent/jobs.py) with real processes."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from ctrlexec.agent.jobs import RunningJobs
from ctrlexec.agent.runner import Runner, ScriptJob
from ctrlexec.core import agent_wire, run_control


@pytest.mark.parametrize(
    "method, path, name",
    [
        ("GET", "/running", agent_wire.RUNNING),
        ("POST", "/cancel", agent_wire.CANCEL),
        ("POST", "/running", agent_wire.UNKNOWN),
        ("GET", "/cancel", agent_wire.UNKNOWN),
        ("GET", "/running?x=1", agent_wire.UNKNOWN),
    ],
)
def test_routes_are_gated_additions(method, path, name):
    found = agent_wire.route(method, path)
    assert found.name == name
    assert found.gated is (name != agent_wire.UNKNOWN)


@pytest.mark.parametrize(
    "body, reqid",
    [
        (b'{"reqid":"00aa11bb22cc33dd"}', "00aa11bb22cc33dd"),
        (b'{"reqid":"api-x_1","extra":1}', "api-x_1"),
    ],
)
def test_parse_cancel(body, reqid):
    assert run_control.parse_cancel(body) == reqid


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b"not json", b'{"reqid":""}', b'{"reqid":"a/b"}', b'{"reqid":5}', b"{}"],
)
def test_parse_cancel_refuses(body):
    with pytest.raises(run_control.CancelRejected) as refused:
        run_control.parse_cancel(body)
    assert refused.value.body["status"] == "error"


def test_running_body_and_its_reading():
    entry = run_control.RunningEntry("r1", "backup", "sync", "2026-11-29T12:00:00Z", 3600.0)
    body = run_control.running_body([entry])
    assert body == {
        "status": "ok",
        "running": [
            {
                "reqid": "r1",
                "script": "backup",
                "mode": "sync",
                "started": "2026-11-29T12:00:00Z",
                "timeout": 3600,
            }
        ],
    }
    raw = agent_wire.json.dumps(body).encode()
    listed = run_control.read_running(200, raw)
    assert run_control.running_reqids(listed) == {"r1"}


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (404, b'{"error":"not found"}', run_control.UNSUPPORTED),
        (200, b'{"status":"ok","running":[]}', []),
        (200, b'{"status":"ok","running":[5,{"reqid":"a"}]}', [{"reqid": "a"}]),
    ],
)
def test_read_running(status, body, expected):
    assert run_control.read_running(status, body) == expected


@pytest.mark.parametrize(
    "status, body",
    [(200, b"garbage"), (403, b'{"error":"serial mismatch"}'), (200, b'{"status":"ok"}')],
)
def test_read_running_errors_are_text(status, body):
    assert isinstance(run_control.read_running(status, body), str)
    assert run_control.read_running(status, body) != run_control.UNSUPPORTED


@pytest.mark.parametrize(
    "status, body, outcome",
    [
        (
            200,
            b'{"status":"ok","reqid":"r","cancelled":[{"script":"s","mode":"sync"}]}',
            "cancelled",
        ),
        (404, b'{"status":"unknown","reqid":"r"}', "not-running"),
        (404, b'{"error":"not found"}', "cannot-cancel"),
        (403, b'{"error":"serial mismatch","status":"forbidden"}', "error"),
    ],
)
def test_read_cancel(status, body, outcome):
    assert run_control.read_cancel(status, body)[0] == outcome


# -- tracking real scripts ---------------------------------------------------------------


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
