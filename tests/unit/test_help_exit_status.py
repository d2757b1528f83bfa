"""Every mode's --help says what its exit status means (docs/running.md has
the same table with the JSON shapes)."""

from __future__ import annotations

import argparse
import importlib

import pytest

from ctrlexec.cli import exit_status, main, roles


def _modes(role: str):
    module = importlib.import_module(main.ROLES[role][0])
    parser = roles.build_parser(
        f"ctrl-exec {role}", role, "", module.TOPICS, module.COMPAT_MODES, ""
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


@pytest.mark.parametrize("role", ["ced", "agent", "dispatcher", "executor"])
def test_every_mode_help_states_its_exit_status(role):
    missing = [
        name for name, mode in _modes(role) if not exit_status.has_exit_status(mode.format_help())
    ]
    assert not missing, f"{role} modes whose --help has no exit status: {missing}"


def test_the_paragraph_is_added_once_and_wrapped():
    epilog = exit_status.with_exit_status("unpair", "Forget a paired agent.", "See docs.")
    assert epilog is not None and epilog.startswith("See docs.\n\nExit status: 0 removed;")
    assert "78 a configuration file" in epilog.replace("\n", " ")
    assert all(len(line) <= 76 for line in epilog.splitlines())
    own = "Exit status: 0 always."
    assert exit_status.with_exit_status("unpair", own, None) is None


@pytest.mark.parametrize("role", ["install", "demo", "doctor"])
def test_the_one_command_roles_state_their_exit_status(role, capsys):
    module = importlib.import_module(main.ROLES[role][0])
    with pytest.raises(SystemExit):
        if hasattr(module, "build_parser"):
            module.build_parser().parse_args(["--help"])
        else:
            module.main(["--help"])
    assert exit_status.has_exit_status(capsys.readouterr().out)
