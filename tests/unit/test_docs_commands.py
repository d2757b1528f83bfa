"""A docs check: every command line shown in README.md and docs/*.md names a
role and a mode that exist, and its options are ones that mode accepts.
Placeholders (NAME, <reqid>, [optional parts]) are not executed: the check
is that an operator copying the line gets a command this build has."""

from __future__ import annotations

import functools
import importlib
import re
import shlex
from pathlib import Path

import pytest

from ctrlexec.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = {
    "ced": "ced",
    "ctrl-exec-dispatcher": "ced",
    "ctrl-exec-agent": "agent",
    "cea": "agent",
    "ctrl-exec-api": "dispatcher",
}
_PROGRAM = r"(?:python3 )?(?:dist/)?(?:ctrl-exec\.pyz|ced|ctrl-exec-agent|cea|ctrl-exec-dispatcher)"
_LINE = re.compile(rf"^\s*(?:\$ )?({_PROGRAM}(?=\s|$).*)$")


def _commands():
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        fenced = False
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                match = _LINE.match(line)
                if match:
                    yield pytest.param(match.group(1), id=f"{path.name}:{number}")


def _words(command: str) -> list[str]:
    command = command.split(" #", 1)[0].split("&&", 1)[0]
    command = re.sub(r"\[[^\]]*\]", "", command)  # optional parts are placeholders
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


@functools.cache  # building a role's parser is most of this file's time
def _parser(role: str):
    module = importlib.import_module(cli_main.ROLES[role][0])
    if role == "install":
        return None, module
    from ctrlexec.cli import roles

    parser = roles.build_parser(
        "x", "x", "", getattr(module, "TOPICS", ()), getattr(module, "COMPAT_MODES", ())
    )
    return parser, module


@pytest.mark.parametrize("command", list(_commands()))
def test_documented_command_exists(command):
    words = _words(command)
    if words and words[0] == "python3":
        words = words[1:]
    program = Path(words[0]).name.removesuffix(".pyz")
    if program == "ctrl-exec":
        role, rest = (words[1], words[2:]) if len(words) > 1 else (None, [])
        if role is None or role.startswith("-"):
            return  # ctrl-exec.pyz --version / --help: handled by main
    else:
        role, rest = PROGRAMS[program], words[1:]
    assert role in cli_main.ROLES, f"{command}: no role {role!r}"
    parser, _ = _parser(role)
    if parser is None:
        return
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    modes = [w for w in rest if not w.startswith("-")]
    if not modes:
        return
    if role == "dispatcher" and program == "ctrl-exec-api":
        return
    mode = next((w for w in rest if w in subparsers.choices), None)
    assert mode is not None, f"{command}: none of {modes} is a mode of {role}"
    known = _options(role, mode)
    for word in rest:
        if word.startswith("--") and word != "--":
            assert word.split("=", 1)[0] in known, f"{command}: {mode} has no option {word}"
        if word == "--":
            break


@functools.cache
def _options(role: str, mode: str) -> frozenset[str]:
    """Every option `role mode` accepts (the mode's and the role's)."""
    parser, _ = _parser(role)
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return frozenset(
        {option for action in subparsers.choices[mode]._actions for option in action.option_strings}
        | {option for action in parser._actions for option in action.option_strings}
    )
