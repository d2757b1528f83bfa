"""Every example configuration validates with the loader the services use:
examples/ (what `install` writes), and the compose files in container/."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrlexec import installer
from ctrlexec.config import load
from ctrlexec.config.paths import system_layout

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("directory", ["examples", "container"])
def test_example_configs_load(directory, tmp_path):
    layout = system_layout(tmp_path)
    base = REPO / directory
    dispatcher = base / ("ctrl-exec.toml" if directory == "examples" else "dispatcher.toml")
    assert load.load_dispatcher(layout, dispatcher).source == dispatcher
    agent = load.load_agent(layout, base / "agent.toml")
    scripts = load.load_allowlist(layout, base / "scripts.toml", agent.profiles)
    assert scripts and all(entry.path.startswith("/") for entry in scripts.values())


def test_installed_allowlist_example_allows_nothing_and_loads(tmp_path):
    text = installer.commented_out((REPO / "examples" / "scripts.toml").read_bytes())
    path = tmp_path / "scripts.toml"
    path.write_bytes(text)
    assert load.load_allowlist(system_layout(tmp_path), path) == {}
    assert b"# hello = " in text


def test_every_role_has_its_unit_in_examples():
    for unit in installer.UNITS.values():
        text = (REPO / "examples" / "systemd" / unit).read_text()
        assert "ExecStart=/usr/local/bin/" in text
        assert "Environment=CTRL_EXEC_ROOT=/" in text
