"""The shipped systemd units (examples/systemd/): valid for systemd-analyze
(skipped loudly without it), hardened as documented, and their ExecStart
command lines accepted by the pyz."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"
NAMES = ("ctrl-exec-agent.service", "ctrl-exec-executor.service")


def _settings(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_unit_verifies(name, tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("SKIPPED LOUDLY: systemd-analyze is not installed")
    shutil.copy(UNITS / name, tmp_path / name)
    result = subprocess.run(
        [tool, "verify", f"./{name}"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "ignoring" not in result.stderr, result.stderr


def test_agent_unit_is_sandboxed_and_stops_on_config_errors():
    agent = _settings("ctrl-exec-agent.service")
    assert agent["User"] == ["ctrl-exec-agent"]
    assert agent["RestartPreventExitStatus"] == ["78"]
    assert agent["CapabilityBoundingSet"] == [""] and agent["AmbientCapabilities"] == [""]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "RestrictNamespaces"):
        assert agent[key] == ["yes"], key
    assert agent["ProtectSystem"] == ["strict"]
    assert "/etc/ctrl-exec-agent" in agent["ReadOnlyPaths"]


def test_executor_unit_runs_as_root_and_owns_the_socket_directory():
    executor = _settings("ctrl-exec-executor.service")
    assert "User" not in executor
    assert executor["RuntimeDirectory"] == ["ctrl-exec-agent"]
    assert executor["RuntimeDirectoryMode"] == ["0755"]
    assert "/run/ctrl-exec-agent/exec.sock" in executor["ExecStart"][0]


@pytest.mark.parametrize("name", NAMES)
def test_exec_start_is_a_command_line_the_pyz_accepts(name, ctl):
    argv = shlex.split(_settings(name)["ExecStart"][0])
    # The installer links these program names to the pyz; each names a role.
    role = {"ctrl-exec-agent": "agent", "ctrl-exec-executor": "executor"}[Path(argv[0]).name]
    result = ctl.run(role, *argv[1:], "--help")
    assert result.returncode == 0, result.stderr
