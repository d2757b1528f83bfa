"""What an operator reads when a command cannot do its job: the real pyz, real
files and permissions; every message says what is wrong and what to do."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NOBODY = 65534


def _as_nobody(pyz: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    home = root / "nobody-home"
    home.mkdir(exist_ok=True)
    os.chown(home, NOBODY, NOBODY)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "CTRL_EXEC_CACHE_DIR": str(home / "cache"),
        "CTRL_EXEC_LOG_TARGET": "discard",
    }
    return subprocess.run(
        ["python3", str(pyz), "ced", "--root", str(root), *args],
        capture_output=True, text=True, timeout=120, env=env,
        preexec_fn=lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)),
    )  # fmt: skip


@pytest.fixture
def shared_root():
    """A dispatcher root that other users may traverse (pytest's own tmp is 0700)."""
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: needs root to run a command as another user")
    try:
        pwd.getpwuid(NOBODY)
    except KeyError:
        pytest.skip("SKIPPED LOUDLY: no user 65534 on this host")
    root = Path(tempfile.mkdtemp(prefix="ctrl-exec-perm-"))
    root.chmod(0o755)
    state = root / "var/lib/ctrl-exec"
    for directory in (state, state / "agents", state / "pairing"):
        directory.mkdir(parents=True)
        directory.chmod(0o770)  # as docs/paths.md: the service group's, nobody else's
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("mode", [["list-agents"], ["list-requests"], ["ping", "web-01"]])
def test_a_user_outside_the_group_is_told_about_permissions_not_an_internal_error(
    pyz, shared_root, mode
):
    result = _as_nobody(pyz, shared_root, "--json", *mode)
    assert result.returncode == 1, result
    error = json.loads(result.stdout.splitlines()[-1])["error"]
    assert error.startswith("permission denied: "), error
    assert str(shared_root / "var/lib/ctrl-exec") in error
    assert "run as root, or as a member of the group" in error
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert "root:root" in error  # who owns it, so the operator knows which group


def test_a_failed_handshake_logs_why_beside_the_0_12_error(session_ca, pyz_for, tmp_path):
    """An agent whose certificate expired (it was off for longer than its
    lifetime): the result keeps 0.12's error text, and the dispatcher's log
    line says what OpenSSL found, so the operator knows to pair it again."""
    from tests.support import testpki
    from tests.support.agentproc import AgentProcess, install_site

    dispatcher_root, agent_root = tmp_path / "dispatcher", tmp_path / "agent"
    dispatcher = testpki.install_dispatcher(session_ca, dispatcher_root)
    site = install_site(session_ca, agent_root, dispatcher, name="web-01", scripts={})
    expired = testpki.install_agent(
        session_ca, agent_root, "web-01", None, days=30, backdate_days=40
    )
    testpki.register_agent(dispatcher_root, "web-01", site.port, expired, dispatcher)
    agent = AgentProcess(pyz_for(agent_root), site).start()
    try:
        ced = pyz_for(dispatcher_root)
        result = ced.run("ced", "--json", "ping", "web-01")
    finally:
        agent.stop()
    assert result.returncode == 1, result
    (host,) = json.loads(result.stdout)["results"]
    assert host["error"] == "TLS handshake with '127.0.0.1' failed - certificate or trust mismatch"
    (line,) = [x for x in ced.log_text().splitlines() if " ACTION=ping " in f" {x}"]
    assert 'DETAIL="certificate has expired"' in line, line
