"""Nothing an auth hook starts outlives it: not a child that left the
hook's session with setsid, whether the hook times out or exits normally
(hook_keeper.py). The hook runs for real, under a real agent."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support import agentproc, testpki

# Starts a child in a session of its own (out of the hook's process group),
# records its pid, then hangs or exits as asked.
HOOK = """#!/bin/sh
setsid sh -c 'echo $$ > "{pidfile}"; exec sleep 300' </dev/null >/dev/null 2>&1 &
while [ ! -s "{pidfile}" ]; do sleep 0.01; done
{then}
"""


def _kill_if_left(pidfile: Path) -> None:
    """Clean up after a failure: the escaped child, if it is still there."""
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("then,denied", [("sleep 300", True), ("exit 0", False)])
def test_a_setsid_child_of_the_hook_is_killed(session_ca, pyz_for, tmp_path, then, denied):
    pidfile = tmp_path / "escaped.pid"
    hook = agentproc.write_script(tmp_path / "hook", HOOK.format(pidfile=pidfile, then=then))
    dispatcher = testpki.install_dispatcher(session_ca, tmp_path / "dispatcher")
    runner = pyz_for(tmp_path / "agent")
    site = agentproc.install_site(
        session_ca,
        runner.root,
        dispatcher,
        settings={"auth_hook": str(hook), "auth_hook_timeout": 2},
    )
    agent = agentproc.AgentProcess(runner, site).start()
    try:
        client = agentproc.DispatcherClient.for_dispatcher(tmp_path / "dispatcher")
        answer = client.request(site.port, "POST", "/run", {"script": "echo-args", "reqid": "h"})
        assert answer.status == 200
        if denied:
            assert answer.json()["error"] == "not authorised: denied", answer.json()
        else:
            assert answer.json()["exit"] == 0, answer.json()
        escaped = int(Path(pidfile).read_text())
        agentproc.wait_for(lambda: not _alive(escaped), 10, "the escaped child to be gone")
    finally:
        agent.stop()
        _kill_if_left(pidfile)
    assert "auth-hook-timeout" in runner.log_text() if denied else True


def test_a_hook_that_cannot_start_is_denied_with_the_reason(tmp_path):
    from ctrlexec.hooks import AuthRequest, run_hook

    hook = tmp_path / "hook"
    hook.write_text("#!/nonexistent/interpreter\n")
    os.chmod(hook, 0o755)
    decision, _ = run_hook(str(hook), AuthRequest("run"), timeout=10, now=time.time)
    assert not decision.allowed
    assert decision.reason.startswith("auth hook could not be started: "), decision.reason
