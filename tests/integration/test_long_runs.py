"""Long runs are never lost, and a host:script lock lasts as long as the
script: real agents (`agent serve` through the pyz) on loopback, `ced` as
operators run it.

- A synchronous run that outlasts `read_timeout` keeps waiting while our
  agent says the script still runs (GET /running), keeps its lock, and
  reports the script's real result.
- A dispatcher killed outright (kill -9) loses its flock with the process,
  but its holder record stays, and the next run asks the agent before it
  takes the lock: a second copy never starts while the first still runs.
- A 0.12 agent cannot say: `ced` gives up at read_timeout, as 0.12 does.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest

from tests.support import agentproc, testpki
from tests.support.fleet import running_fleet
from tests.support.peer012 import Peer012, http_response, run_body

NAMES = ("long-01", "long-02")
# Records its pid and its background child's, then waits for the child.
TREE = '#!/bin/sh\necho $$ > "$1/pid"\nsleep 300 &\necho $! > "$1/child"\nwait\n'
# A line every 0.5 s for 3 s, and one on stderr.
TICK = '#!/bin/sh\nfor i in 1 2 3 4 5 6; do echo "tick $i"; sleep 0.5; done\necho oops >&2\n'
SCRIPTS = dict(agentproc.APPENDIX_C_SCRIPTS, block=agentproc.BLOCK, tree=TREE, tick=TICK)


@pytest.fixture(scope="module")
def fleet(session_ca, pyz_for, tmp_path_factory):
    base = tmp_path_factory.mktemp("long")
    with running_fleet(session_ca, pyz_for, base, NAMES, SCRIPTS) as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def default_config(fleet):
    fleet.layout.dispatcher_config.unlink(missing_ok=True)
    yield
    fleet.layout.dispatcher_config.unlink(missing_ok=True)


def locked_answer(host: str, script: str) -> dict:
    return {"ok": 0, "error": "locked", "code": 4, "conflicts": [f"{host}:{script}"]}


def locks_of(fleet) -> list[dict]:
    listed = fleet.ced("--json", "list-locks")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)["locks"]


def gate_dir(tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    gate.chmod(0o777)
    return gate


def test_capabilities_report_each_scripts_limit(fleet):
    completed = fleet.dispatcher.run("ced", "--json", "ping", "long-01")
    assert completed.returncode == 0, completed.stderr
    client = agentproc.DispatcherClient.for_dispatcher(fleet.dispatcher.root)
    port = fleet.agents["long-01"][1].site.port
    response = agentproc.parse_response(
        client.exchange(port, b"GET /capabilities HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    )
    assert {entry["name"]: entry["timeout"] for entry in response.json()["scripts"]} == {
        name: 3600 for name in SCRIPTS
    }


def _long_run_keeps_its_lock(fleet, seconds: int, read_timeout: int | None) -> None:
    if read_timeout is not None:
        fleet.configure(read_timeout=read_timeout)
    started = time.monotonic()
    seen = len(fleet.dispatcher.log_text())  # earlier tests' lines do not count

    def new_log() -> str:
        return fleet.dispatcher.log_text()[seen:]

    first = fleet.dispatcher.popen("ced", "--json", "run", "long-01", "sleep", "--", str(seconds))
    try:
        agentproc.wait_for(
            lambda: "ACTION=dispatch" in new_log() or first.poll() is not None,
            30,
            "the first run to be dispatched",
        )
        # past read_timeout, so the first run is only still waiting because
        # the agent says the script still runs
        agentproc.wait_for(
            lambda: "ACTION=run-wait" in new_log() or first.poll() is not None,
            seconds + 30,
            "the dispatcher to find the script still running",
        )
        assert first.poll() is None, first.communicate()
        second = fleet.ced("--json", "run", "long-01", "sleep", "--", "0")
        assert second.returncode == 1
        assert json.loads(second.stdout) == locked_answer("long-01", "sleep")
        stdout, stderr = first.communicate(timeout=seconds + 60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    [result] = json.loads(stdout)["results"]
    assert (result["exit"], result["stdout"], "error" in result) == (0, "done\n", False)
    assert time.monotonic() - started >= seconds
    assert [lock for lock in locks_of(fleet) if lock["script"] == "sleep"] == []
    assert fleet.ced("run", "long-01", "sleep", "--", "0").returncode == 0


def test_a_run_longer_than_read_timeout_completes_and_keeps_its_lock(fleet):
    _long_run_keeps_its_lock(fleet, seconds=8, read_timeout=1)


@pytest.mark.slow
def test_a_90_s_script_with_the_default_read_timeout(fleet):
    """Acceptance: 90 s against the default read_timeout of 60 s."""
    _long_run_keeps_its_lock(fleet, seconds=90, read_timeout=None)


def test_a_killed_dispatcher_does_not_free_the_lock_while_the_script_runs(fleet, tmp_path):
    """kill -9 of `ced run`: the flock goes with the process; the agent still
    runs the script, so the next run is refused until the script ended."""
    gate = gate_dir(tmp_path)
    first = fleet.dispatcher.popen("ced", "run", "long-01", "block", "--", str(gate))
    try:
        agentproc.wait_for(
            lambda: (gate / "started").exists() or first.poll() is not None,
            30,
            "the first run to start",
        )
        assert first.poll() is None, first.communicate()
    finally:
        first.kill()
        first.wait()
    # the script still runs on the agent; a second copy must not start
    second = fleet.ced("--json", "run", "long-01", "block", "--", str(gate), timeout=20)
    assert second.returncode == 1, second.stdout
    assert json.loads(second.stdout) == locked_answer("long-01", "block")
    [orphan] = [lock for lock in locks_of(fleet) if lock["script"] == "block"]
    assert orphan["state"] == "orphaned" and orphan["host"] == "long-01"
    assert orphan["pid"] == first.pid and re.fullmatch(r"[0-9a-f]{16}", orphan["reqid"])
    log = fleet.dispatcher.log_text()
    assert f"ACTION=lock-stale HOST=long-01 REQID={orphan['reqid']}" in log
    assert "RESULT=still-running" in log
    # once the script has ended there, the lock is free again
    (gate / "go").touch()
    agentproc.wait_for(
        lambda: re.search(rf"ACTION=run .*REQID={orphan['reqid']}", fleet.agent_log("long-01")),
        30,
        "the orphaned script to end on the agent",
    )
    third = fleet.ced("run", "long-01", "block", "--", str(gate), timeout=30)
    assert third.returncode == 0, third.stderr
    assert "released" in third.stdout
    assert "RESULT=ended" in fleet.dispatcher.log_text()
    assert [lock for lock in locks_of(fleet) if lock["script"] == "block"] == []


def test_a_0_12_agent_is_given_read_timeout(fleet, session_ca, tmp_path):
    """A 0.12 agent has no GET /running: give up after read_timeout, as
    0.12, and let the next run go (nothing can tell it otherwise)."""

    def slow(request):
        if request.path == "/run":
            time.sleep(3)
            return http_response(200, run_body(request.json))
        return http_response(404, b'{"error":"not found"}')

    with Peer012(session_ca, tmp_path / "peer", behaviour=slow) as peer:
        testpki.register_agent(
            fleet.dispatcher.root, "old-01", peer.port, peer.issued, fleet.issued
        )
        fleet.configure(read_timeout=1)
        completed = fleet.ced("--json", "run", "old-01", "echo-args", "--", "x")
        assert completed.returncode == 1
        [result] = json.loads(completed.stdout)["results"]
        assert result["error"] == "read timeout after 1s"
        assert [request.path for request in peer.received] == ["/run", "/running"]
        # the record stays; the next run asks, hears 404, and goes on
        again = fleet.ced("--json", "run", "old-01", "echo-args", "--", "y")
        assert json.loads(again.stdout)["results"][0]["error"] == "read timeout after 1s"
        assert "ACTION=lock-stale HOST=old-01" in fleet.dispatcher.log_text()
        assert "RESULT=unverifiable" in fleet.dispatcher.log_text()


# -- Ctrl-C and ced cancel ------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _read_all(fd: int, seconds: float = 60) -> str:
    """What was written to the terminal until the last process holding it
    closed it (reading then fails with EIO, or returns nothing)."""
    seen = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 0.1)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            break
        seen += chunk
    return seen.decode("utf-8", "replace")


def test_ctrl_c_prints_the_reqid_and_cancel_stops_the_process_group(fleet, tmp_path):
    gate = gate_dir(tmp_path)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            fleet.dispatcher.argv("ced", "run", "long-01", "tree", "--", str(gate)),
            env=fleet.dispatcher.env(),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        agentproc.wait_for(
            lambda: (gate / "child").exists() or proc.poll() is not None, 30, "the script"
        )
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # what Ctrl-C on its terminal sends
        output = _read_all(master)
        proc.wait(30)
    finally:
        os.close(master)
    assert proc.returncode == 130, output
    match = re.search(r"req:([0-9a-f]{16})", output)
    assert match, output
    reqid = match.group(1)
    assert "The script may still be running on: long-01" in output
    assert f"cancel {reqid} long-01" in output and f"status {reqid}" in output
    assert "Traceback" not in output
    script_pid, child_pid = int((gate / "pid").read_text()), int((gate / "child").read_text())
    assert _alive(script_pid) and _alive(child_pid)  # the agent still runs it
    # the run is recorded; the lock is still honoured
    status = json.loads(fleet.ced("--json", "status", reqid).stdout)
    assert status["results"][0]["status"] == "running"
    assert fleet.ced("--json", "run", "long-01", "tree", "--", str(gate)).returncode == 1
    cancel = fleet.ced("cancel", reqid)  # no hosts: those the record says still run it
    assert (cancel.returncode, cancel.stdout) == (0, "==> long-01  [cancelled]\n"), cancel.stderr
    agentproc.wait_for(
        lambda: not _alive(script_pid) and not _alive(child_pid), 30, "the process group to end"
    )
    assert re.search(rf"ACTION=run-cancel .*REQID={reqid}", fleet.agent_log("long-01"))
    assert re.search(rf"ACTION=run .*CANCELLED=1 .*REQID={reqid}", fleet.agent_log("long-01"))
    shown = fleet.ced("status", reqid)
    assert shown.returncode == 0 and "ERROR: cancelled" in shown.stdout
    [result] = json.loads(fleet.ced("--json", "status", reqid).stdout)["results"]
    assert (result["status"], result["error"]) == ("cancelled", "cancelled")
    # the holder record stays until the next run of that script asks the
    # agent; the script has ended there, so that run gets the lock
    [orphan] = [lock for lock in locks_of(fleet) if lock["script"] == "tree"]
    assert (orphan["state"], orphan["reqid"]) == ("orphaned", reqid)
    (gate / "child").unlink()
    again = fleet.ced("--json", "run", "--async", "long-01", "tree", "--", str(gate))
    assert again.returncode == 0, again.stdout
    assert [lock for lock in locks_of(fleet) if lock["script"] == "tree"] == []
    agentproc.wait_for(lambda: (gate / "child").exists(), 30, "the next run")
    assert fleet.ced("cancel", json.loads(again.stdout)["reqid"]).returncode == 0


def test_cancel_an_async_run_and_what_status_shows(fleet, tmp_path):
    gate = gate_dir(tmp_path)
    submitted = fleet.ced("--json", "run", "--async", "long-01", "tree", "--", str(gate))
    reqid = json.loads(submitted.stdout)["reqid"]
    agentproc.wait_for(lambda: (gate / "child").exists(), 30, "the async script")
    child_pid = int((gate / "child").read_text())
    cancel = fleet.ced("--json", "cancel", reqid)
    assert json.loads(cancel.stdout) == {
        "ok": 1,
        "results": [{"host": "long-01", "reqid": reqid, "status": "cancelled", "detail": "tree"}],
    }
    agentproc.wait_for(lambda: not _alive(child_pid), 30, "the async process group to end")
    shown = fleet.ced("status", reqid)
    assert "==> long-01  [CANCELLED]" in shown.stdout
    waited = fleet.ced("wait", reqid, "--timeout", "5")
    assert waited.returncode == 1  # cancelled counts as a failure
    # a second cancel finds nothing running
    again = fleet.ced("cancel", reqid, "long-01")
    assert again.returncode == 0 and "[not running]" in again.stdout


def test_cancel_on_a_0_12_agent_says_it_cannot(fleet, session_ca, tmp_path):
    with Peer012(session_ca, tmp_path / "peer") as peer:
        testpki.register_agent(
            fleet.dispatcher.root, "old-02", peer.port, peer.issued, fleet.issued
        )
        completed = fleet.ced("cancel", "00aa11bb22cc33dd", "old-02")
        assert completed.returncode == 1
        assert completed.stdout == (
            "==> old-02  [cannot cancel there]  the agent cannot cancel runs (ctrl-exec 0.12)\n"
        )
        as_json = json.loads(fleet.ced("--json", "cancel", "00aa11bb22cc33dd", "old-02").stdout)
        assert as_json["ok"] == 0 and as_json["results"][0]["status"] == "cannot-cancel"
        assert [request.path for request in peer.received] == ["/cancel", "/cancel"]


def test_cancel_without_hosts_or_record_is_a_clear_error(fleet):
    completed = fleet.ced("cancel", "ffeeddccbbaa9988")
    assert completed.returncode == 2
    assert "no record of run ffeeddccbbaa9988 here; name the hosts" in completed.stderr


# -- live output -----------------------------------------------------------------------------


def test_follow_prints_lines_as_the_scripts_write_them(fleet, session_ca, tmp_path):
    proc = fleet.dispatcher.popen("ced", "run", "--follow", "long-01", "long-02", "tick")
    arrived: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # as it comes
        arrived.append((time.monotonic(), line))
    proc.wait(60)
    ended = time.monotonic()
    assert proc.returncode == 0, proc.stderr.read()
    lines = [line for _, line in arrived]
    for host in NAMES:
        assert [line for line in lines if line.startswith(f"{host} | ")] == [
            f"{host} | tick {n}\n" for n in range(1, 7)
        ]
        assert f"{host} ! oops\n" in lines
    # the first lines came while the scripts were still running (3 s)
    first = arrived[0][0]
    assert lines[0].endswith("| tick 1\n")
    assert ended - first >= 2.0, arrived
    # then the result lines, without repeating the output
    tail = "".join(lines[-2:])
    assert re.fullmatch(
        r"==> long-01  \[OK  exit:0  \d+ms  req:[0-9a-f]{16}\]\n"
        r"==> long-02  \[OK  exit:0  \d+ms  req:[0-9a-f]{16}\]\n",
        tail,
    ), lines
    assert "ACTION=run " in fleet.agent_log("long-02")


def test_follow_against_a_0_12_agent_falls_back_with_one_notice(fleet, session_ca, tmp_path):
    with Peer012(session_ca, tmp_path / "peer") as peer:
        for name in ("old-03", "old-04"):
            testpki.register_agent(
                fleet.dispatcher.root, name, peer.port, peer.issued, fleet.issued
            )
        completed = fleet.ced(
            "run", "--follow", "old-03", "old-04", "long-01", "echo-args", "--", "hi"
        )
        assert completed.returncode == 0, completed.stderr
        assert completed.stderr.count("cannot stream output") == 1
        assert "long-01 | hi\n" in completed.stdout
        # the 0.12 agents' output is in their result blocks
        assert re.search(r"==> old-03  \[OK  exit:0 .*\]\n", completed.stdout)
        paths = sorted(request.path for request in peer.received)
        assert paths == ["/run", "/run", "/run-stream", "/run-stream"]
