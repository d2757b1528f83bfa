"""0.12 accepts `ced` options before or after the mode."""

import pytest

from ctrlexec.cli import roles
from ctrlexec.cli.ced import COMPAT_MODES, DESCRIPTION, EPILOG, TOPICS, mode_first
from tests.support.tables import each_case

MODES = set(COMPAT_MODES)
VALUE_OPTIONS = roles.value_options(
    roles.build_parser("ced", "ctrl-exec-dispatcher", DESCRIPTION, TOPICS, COMPAT_MODES, EPILOG)
)

# The options 0.12's ced takes with a value: each must be known as one, so
# that its value is never taken for the mode.
OPTIONS_0_12 = (
    "--root",
    "--config",
    "--log-target",
    "--log-format",
    "--port",
    "--username",
    "--token",
    "--lookup-by",
    "--agent-port",
    "--ip",
    "--rename",
    "--tags",
    "--timeout",
)


def test_value_options_come_from_the_parser():
    assert set(OPTIONS_0_12) <= VALUE_OPTIONS
    assert not {"--json", "--async", "--help", "--version", "--yes"} & VALUE_OPTIONS


OPTIONS_BEFORE_THE_MODE_MOVE_AFTER_IT_CASES = [
    (["--json", "ping", "vm"], ["ping", "--json", "vm"]),
    (["--timeout", "60", "wait", "abc"], ["wait", "--timeout", "60", "abc"]),
    (["--username", "run", "ping", "vm"], ["ping", "--username", "run", "vm"]),
    (
        ["--port", "17443", "--async", "run", "vm", "s"],
        ["run", "--port", "17443", "--async", "vm", "s"],
    ),
    (["ping", "--json", "vm"], ["ping", "--json", "vm"]),
    (["--help"], ["--help"]),
    (["vm", "ping"], ["vm", "ping"]),
    ([], []),
]


def test_options_before_the_mode_move_after_it():
    def check(argv, expected):
        assert mode_first(argv, MODES, VALUE_OPTIONS) == expected

    each_case(OPTIONS_BEFORE_THE_MODE_MOVE_AFTER_IT_CASES, check)


@pytest.mark.parametrize("role", ["ced", "agent", "executor", "dispatcher"])
def test_every_0_12_mode_name_is_a_real_mode(role):
    """0.12's mode names are all built: none may fall back to a stub."""
    import argparse
    import importlib

    from ctrlexec.cli import roles

    module = importlib.import_module(f"ctrlexec.cli.{role}")
    parser = roles.build_parser(role, role, "", module.TOPICS, module.COMPAT_MODES)
    [modes] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert [m for m in module.COMPAT_MODES if m not in modes.choices] == []
