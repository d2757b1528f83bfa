"""Temp files that a crash left behind (an atomic write interrupted before
its rename) are removed when a service starts: the agent, the API and
pairing mode. A young temp file may be another process's write in progress
and is kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.support import agentproc, apiproc, testpki
from tests.support.pairing import setup_dispatcher, start_listener


def _leftover(directory: Path, name: str, age: float = 3600, tag: str = "k3x9q") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".{name}.{tag}.tmp"
    path.write_text("half a write")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_the_agent_sweeps_its_state_at_start(session_ca, pyz_for, tmp_path):
    runner = pyz_for(tmp_path / "agent")
    issued = testpki.install_dispatcher(session_ca, tmp_path / "dispatcher")
    site = agentproc.install_site(session_ca, runner.root, issued)
    state = site.layout.trusted_dispatchers.parent
    old = [
        _leftover(state, "ctrl-exec-dispatchers"),
        _leftover(site.layout.async_runs_dir / "test-dispatcher", "0123456789abcdef.json"),
    ]
    young = _leftover(state, "ctrl-exec-dispatchers", age=0, tag="w7p2m")
    agent = agentproc.AgentProcess(runner, site).start()
    try:
        assert not any(path.exists() for path in old), (old, runner.log_text())
        assert young.exists()
        assert "ACTION=temp-sweep " in runner.log_text()
    finally:
        agent.stop()


def test_the_api_sweeps_the_registry_and_run_store_at_start(session_ca, pyz_for, tmp_path):
    dispatcher = pyz_for(tmp_path / "dispatcher")
    testpki.install_dispatcher(session_ca, dispatcher.root)
    layout = testpki.layout_for(dispatcher.root)
    old = [_leftover(layout.registry_dir, "web-1.json"), _leftover(layout.runs_dir, "r.json")]
    process = apiproc.ApiProcess(dispatcher, api_auth_default="allow").start()
    try:
        assert not any(path.exists() for path in old)
    finally:
        process.stop()


def test_pairing_mode_sweeps_the_queue_and_registry_at_start(ctl):
    setup_dispatcher(ctl)
    layout = testpki.layout_for(ctl.root)
    old = [
        _leftover(layout.pairing_dir, "0123456789abcdef.json"),
        _leftover(layout.registry_dir, "a.json"),
    ]
    listener = start_listener(ctl)
    try:
        assert not any(path.exists() for path in old)
        assert "ACTION=temp-sweep COUNT=2" in ctl.log_text()
    finally:
        listener.stop()
