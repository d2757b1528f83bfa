"""0.12 accepts `ced` options before or after the mode."""

import pytest

from ctrlexec.cli.ced import COMPAT_MODES, mode_first

MODES = set(COMPAT_MODES)


@pytest.mark.parametrize(
    "argv, expected",
    [
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
    ],
)
def test_options_before_the_mode_move_after_it(argv, expected):
    assert mode_first(argv, MODES) == expected
