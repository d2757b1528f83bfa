"""The agent's async run store and job bookkeeping, on real files and real
threads, with the script execution replaced by a function the test holds
(the seam the executor will use)."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from ctrlexec.agent.async_runs import INTERRUPTED, AsyncRuns
from ctrlexec.agent.runner import EXIT_SIGNALLED, ScriptJob, ScriptResult
from ctrlexec.core.agent_wire import RunRequest

JOB = ScriptJob(executable="/bin/true", argv=("/bin/true",))


class Held:
    """An execute function whose jobs end when the test says so."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.result = ScriptResult(0, "out\n", "")

    def __call__(self, job: ScriptJob) -> ScriptResult:
        self.started.release()
        assert self.release.wait(30)
        return self.result


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(script: str = "s", reqid: str = "r1") -> RunRequest:
    return RunRequest(script, (), reqid, "", "", True)


def submit(runs, dispatcher="d1", script="s", reqid="r1"):
    return runs.submit(request(script, reqid), dispatcher, JOB, {"REQID": reqid})


def finish(runs, held):
    held.release.set()
    runs.wait()


def test_submit_result_and_partition(tmp_path):
    held = Held()
    runs = AsyncRuns(tmp_path, held)
    assert submit(runs) == (202, {"script": "s", "status": "accepted", "reqid": "r1"})
    assert held.started.acquire(timeout=30)
    status, record = runs.result("r1", "d1", {})
    assert status == 200 and record["status"] == "running" and record["owner"] == "d1"
    assert runs.result("r1", "d2", {}) == (404, {"status": "unknown", "reqid": "r1"})
    assert runs.result("r1", None, {}) == (404, {"status": "unknown", "reqid": "r1"})
    # busy for the same dispatcher and script only
    assert submit(runs, reqid="r2")[0] == 409
    assert submit(runs, dispatcher="d2", reqid="r2")[0] == 202
    assert submit(runs, script="t", reqid="r3")[0] == 202
    finish(runs, held)
    status, record = runs.result("r1", "d1", {})
    assert record["status"] == "done" and record["exit"] == 0 and record["stdout"] == "out\n"
    path = tmp_path / "d1" / "r1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert json.loads(path.read_text()) == record


@pytest.mark.parametrize(
    "dispatcher,reqid,error",
    [
        ("d1", "", "async run requires a valid reqid"),
        ("d1", "a.b", "async run requires a valid reqid"),
        ("", "r", "could not start async job"),
        ("../x", "r", "could not start async job"),
    ],
)
def test_refusals(tmp_path, dispatcher, reqid, error):
    runs = AsyncRuns(tmp_path, Held())
    status, body = submit(runs, dispatcher=dispatcher, reqid=reqid)
    assert status == 200 and body == {"script": "s", "exit": -1, "reqid": reqid, "error": error}
    assert not any(tmp_path.iterdir())


def test_job_limit(tmp_path):
    held = Held()
    runs = AsyncRuns(tmp_path, held, max_running=2)
    assert submit(runs, script="a", reqid="1")[0] == 202
    assert submit(runs, script="b", reqid="2")[0] == 202
    assert submit(runs, script="c", reqid="3") == (
        200,
        {"script": "c", "exit": -1, "reqid": "3", "error": "could not start async job"},
    )
    finish(runs, held)
    assert submit(runs, script="c", reqid="3")[0] == 202
    finish(runs, held)


def running_then_stopping(tmp_path, result: ScriptResult | None = None):
    """A store with job r1 running, and the agent just told to stop."""
    held = Held()
    if result is not None:
        held.result = result
    runs = AsyncRuns(tmp_path, held)
    submit(runs)
    assert held.started.acquire(timeout=30)
    runs.interrupt()
    return runs, held


def test_stop_records_interrupted_with_output(tmp_path):
    runs, held = running_then_stopping(tmp_path, ScriptResult(EXIT_SIGNALLED, "partial\n", ""))
    assert submit(runs, script="t", reqid="r9")[1]["error"] == "could not start async job"
    finish(runs, held)
    record = runs.result("r1", "d1", {})[1]
    assert record["status"] == "done" and record["interrupted"] is True
    assert (
        record["exit"] == -1 and record["stdout"] == "partial\n" and record["error"] == INTERRUPTED
    )


def test_a_job_that_ended_by_itself_while_stopping_keeps_its_result(tmp_path):
    runs, held = running_then_stopping(tmp_path)
    finish(runs, held)
    record = runs.result("r1", "d1", {})[1]
    assert record["exit"] == 0 and "interrupted" not in record


def test_a_job_that_will_not_end_is_recorded_interrupted(tmp_path):
    runs, held = running_then_stopping(tmp_path)
    runs.wait(timeout=0.01)  # the job never ends: any stop wait runs out
    record = runs.result("r1", "d1", {})[1]
    assert record["status"] == "done" and record["interrupted"] is True
    held.release.set()


def test_recover_after_a_crash(tmp_path):
    clock = Clock()
    runs = AsyncRuns(tmp_path, Held(), clock)
    (tmp_path / "d1").mkdir()
    running = {
        "reqid": "r1",
        "status": "running",
        "script": "s",
        "owner": "d1",
        "started": "2030-01-01T00:00:00Z",
    }
    (tmp_path / "d1" / "r1.json").write_text(json.dumps(running))
    finished = dict(running, reqid="r2", status="done", exit=0, stdout="", stderr="")
    (tmp_path / "d1" / "r2.json").write_text(json.dumps(finished))
    stranger = dict(running, reqid="r3", owner="d9")
    (tmp_path / "d1" / "r3.json").write_text(json.dumps(stranger))
    assert runs.recover() == 1
    record = json.loads((tmp_path / "d1" / "r1.json").read_text())
    assert record["status"] == "done" and record["interrupted"] is True and record["exit"] == -1
    assert json.loads((tmp_path / "d1" / "r2.json").read_text()) == finished
    assert json.loads((tmp_path / "d1" / "r3.json").read_text()) == stranger


def test_purge_keeps_what_runs(tmp_path):
    clock = Clock()
    held = Held()
    runs = AsyncRuns(tmp_path, held, clock)
    submit(runs, reqid="live")
    submit(runs, script="t", reqid="old")
    held.release.set()
    assert held.started.acquire(timeout=30) and held.started.acquire(timeout=30)
    runs.wait()
    held.release.clear()
    submit(runs, reqid="live2")
    day_ago = clock.now - 86_401
    for name in ("old.json", "live2.json"):
        os.utime(tmp_path / "d1" / name, (day_ago, day_ago))
    (tmp_path / "d1" / ".x.json.tmp").write_text("{")
    os.utime(tmp_path / "d1" / ".x.json.tmp", (day_ago, day_ago))
    assert runs.purge() == 1
    assert sorted(p.name for p in (tmp_path / "d1").iterdir()) == ["live.json", "live2.json"]
    finish(runs, held)
