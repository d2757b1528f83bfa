"""The shipped systemd units (examples/systemd/) for the agent and the
privileged executor: hardened as documented, and their ExecStart command
lines accepted by the pyz (systemd-analyze itself runs in
test_install_cli.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ctrlexec.cli.main import PROGRAM_ROLES

UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"


def _settings(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


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
    assert executor["RestartPreventExitStatus"] == ["78"]


@pytest.mark.parametrize("name", ["ctrl-exec-agent.service", "ctrl-exec-executor.service"])
def test_exec_start_is_a_command_line_the_pyz_accepts(name, ctl):
    argv = shlex.split(_settings(name)["ExecStart"][0])
    role = PROGRAM_ROLES[Path(argv[0]).name]
    result = ctl.run(role, *argv[1:], "--help")
    assert result.returncode == 0, result.stderr
