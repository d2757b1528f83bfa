"""Async runs on a real agent (`agent serve` through the pyz), driven by two
trusted dispatchers: 202 accepted, 409 busy per dispatcher and script,
`/result/<reqid>` for the owner only, the store partitioned by dispatcher,
and what an agent stop (SIGTERM) or kill (SIGKILL) leaves: a result that
says `interrupted`, never a record stuck in `running`.

Blocking scripts wait for a file the test creates; nothing sleeps."""

from __future__ import annotations

import json
import signal
import stat

import pytest

from ctrlexec.agent import trust
from tests.support import agentproc, testpki
from tests.support.fleet import running_fleet

# Prints, then waits for DIR/go.
PARTIAL = (
    '#!/bin/sh\necho partial\n: > "$1/started"\n'
    'while [ ! -e "$1/go" ]; do sleep 0.02; done\necho finished\n'
)


class Site:
    def __init__(self, base, agent_ctl, process, dispatcher_ctl, issued, agent_issued, a, b):
        self.base = base
        self.agent_ctl = agent_ctl
        self.process = process
        self.dispatcher_ctl = dispatcher_ctl
        self.issued = issued
        self.agent_issued = agent_issued
        self.a = a  # DispatcherClient of disp-a
        self.b = b  # DispatcherClient of disp-b
        self._gates = 0

    @property
    def port(self) -> int:
        return self.process.site.port

    def gate(self):
        self._gates += 1
        path = self.base / "gates" / str(self._gates)
        path.mkdir(parents=True)
        return path

    def run(self, client, script: str, args: list[str], reqid: str, run_async: bool = True):
        body = {"script": script, "args": args, "reqid": reqid, "async": run_async}
        return client.request(self.port, "POST", "/run", body)

    def result(self, client, reqid: str):
        return client.request(self.port, "GET", f"/result/{reqid}")

    def restart(self, how: int) -> None:
        self.process.proc.send_signal(how)
        self.process.proc.wait(60)
        self.process.start()
        testpki.register_agent(
            self.dispatcher_ctl.root, "agent-async", self.port, self.agent_issued, self.issued
        )


@pytest.fixture(scope="module")
def site(session_ca, pyz_for, tmp_path_factory):
    base = tmp_path_factory.mktemp("async")
    other_root = base / "disp-b"
    other = testpki.install_dispatcher(session_ca, other_root)
    scripts = {
        "block": agentproc.BLOCK,
        "partial": PARTIAL,
        "echo-args": agentproc.APPENDIX_C_SCRIPTS["echo-args"],
    }

    def also_trust_b(agent_site, runner):
        trust.add_dispatcher(agent_site.layout.trusted_dispatchers, other.serial_key, "disp-b")

    with running_fleet(
        session_ca, pyz_for, base, ("agent-async",), scripts, also_trust_b, dispatcher_id="disp-a"
    ) as fleet:
        process = fleet.agent("agent-async")
        yield Site(
            base,
            fleet.runner("agent-async"),
            process,
            fleet.dispatcher,
            fleet.issued,
            process.site.issued,
            fleet.client(),
            agentproc.DispatcherClient.for_dispatcher(other_root),
        )


def done(site, client, reqid: str) -> dict:
    def finished():
        record = site.result(client, reqid).json()
        return record if record["status"] == "done" else None

    return agentproc.wait_for(finished, 30, f"{reqid} to finish")


def test_accepted_running_done_owner_only(site):
    gate = site.gate()
    accepted = site.run(site.a, "block", [str(gate)], "run-1")
    assert accepted.status == 202 and accepted.phrase == "Accepted"
    assert accepted.json() == {"script": "block", "status": "accepted", "reqid": "run-1"}
    agentproc.wait_for((gate / "started").exists, 30, "the script to start")
    running = site.result(site.a, "run-1")
    assert running.status == 200
    record = running.json()
    assert record == {
        "reqid": "run-1",
        "status": "running",
        "script": "block",
        "owner": "disp-a",
        "started": record["started"],
    }
    stored = site.process.site.layout.async_runs_dir / "disp-a" / "run-1.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o640
    # another dispatcher cannot see it, and cannot tell it exists
    foreign = site.result(site.b, "run-1")
    assert (foreign.status, foreign.json()) == (404, {"status": "unknown", "reqid": "run-1"})
    never = site.result(site.b, "never-ran")
    assert (never.status, never.json()) == (404, {"status": "unknown", "reqid": "never-ran"})
    # the same script for the same dispatcher is busy, whatever the reqid
    busy = site.run(site.a, "block", [str(gate)], "run-2")
    assert busy.status == 409 and busy.phrase == "Conflict"
    assert busy.json() == {
        "script": "block",
        "status": "busy",
        "reqid": "run-2",
        "error": "script already running",
    }
    # but another dispatcher's run of it is its own business
    theirs = site.run(site.b, "block", [str(gate)], "run-1")
    assert theirs.status == 202
    (gate / "go").touch()
    finished = done(site, site.a, "run-1")
    assert finished == {
        "reqid": "run-1",
        "status": "done",
        "script": "block",
        "owner": "disp-a",
        "started": record["started"],
        "finished": finished["finished"],
        "exit": 0,
        "stdout": "released\n",
        "stderr": "",
    }
    assert done(site, site.b, "run-1")["owner"] == "disp-b"
    log = site.agent_ctl.log_text()
    assert "ACTION=run-async DISPATCHER=disp-a PEER=127.0.0.1 REQID=run-1 SCRIPT=block" in log
    assert "ACTION=run-async-busy DISPATCHER=disp-a PEER=127.0.0.1 REQID=run-2" in log
    assert "ACTION=result-deny DISPATCHER=disp-b PEER=127.0.0.1 REASON=not-owner REQID=run-1" in log
    assert "ACTION=result-miss DISPATCHER=disp-b PEER=127.0.0.1 REQID=never-ran" in log


@pytest.mark.parametrize(
    "script,reqid,error",
    [
        ("echo-args", "", "async run requires a valid reqid"),
        ("echo-args", "a/b", "async run requires a valid reqid"),
        ("echo-args", "x" * 129, "async run requires a valid reqid"),
        ("rm-rf", "run-x", "script not permitted"),
    ],
)
def test_refusals_are_200_exit_minus_1(site, script, reqid, error):
    response = site.run(site.a, script, [], reqid)
    assert response.status == 200
    assert response.json() == {"script": script, "exit": -1, "reqid": reqid, "error": error}


def test_a_reqid_is_not_reused(site):
    assert site.run(site.a, "echo-args", ["one"], "once").status == 202
    assert done(site, site.a, "once")["stdout"] == "one\n"
    again = site.run(site.a, "echo-args", ["two"], "once")
    assert again.json() == {
        "script": "echo-args",
        "exit": -1,
        "reqid": "once",
        "error": "could not start async job",
    }
    assert done(site, site.a, "once")["stdout"] == "one\n"


def test_sync_runs_are_unchanged(site):
    assert site.a.run(site.port, "echo-args", ["sync"]) == {
        "script": "echo-args",
        "exit": 0,
        "stdout": "sync\n",
        "stderr": "",
        "reqid": "r1",
    }


@pytest.mark.parametrize("how,stdout", [(signal.SIGKILL, ""), (signal.SIGTERM, "partial\n")])
def test_agent_stop_mid_run_leaves_interrupted(site, how, stdout):
    gate = site.gate()
    submitted = site.dispatcher_ctl.run(
        "ced", "--json", "run", "--async", "agent-async", "partial", "--", str(gate)
    )
    assert submitted.returncode == 0, submitted.stderr
    reqid = json.loads(submitted.stdout)["reqid"]
    agentproc.wait_for((gate / "started").exists, 30, "the script to start")
    try:
        site.restart(how)
    finally:
        (gate / "go").touch()  # an orphan of SIGKILL must not outlive the test
    record = site.result(site.a, reqid).json()
    assert record["status"] == "done" and record["interrupted"] is True
    assert record["exit"] == -1 and record["stdout"] == stdout
    assert record["error"] == "interrupted: the agent stopped while the script was running"
    assert "ACTION=async-interrupted DISPATCHER=disp-a REQID=" + reqid in site.agent_ctl.log_text()
    # the dispatcher shows what happened, and wait counts it as a failure
    waited = site.dispatcher_ctl.run("ced", "wait", reqid)
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert (
        "==> agent-async  [done  exit:-1]\n"
        "    ERROR: interrupted: the agent stopped while the script was running\n"
    ) in waited.stdout
    # and the script can run again at once
    assert site.run(site.a, "echo-args", ["after"], f"after-{how}").status == 202
