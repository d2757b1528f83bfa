"""`executor`: the optional privileged executor beside the agent."""

from __future__ import annotations

from .. import log
from . import roles

TOPICS: tuple[str, ...] = ("ctrlexec.cli.executor_cmds",)
# ctrl-exec 0.12's ctrl-exec-exec modes.
COMPAT_MODES = ("serve", "resolve")

DESCRIPTION = """Privileged executor of ctrl-exec: runs allowlisted scripts under their
profile (user, capabilities, read-only filesystem) for the local agent."""


def main(argv: list[str], prog: str = "ctrl-exec-executor") -> int:
    parser = roles.build_parser(prog, "ctrl-exec-executor", DESCRIPTION, TOPICS, COMPAT_MODES)
    return roles.run(parser, argv, prog, log.IDENT_EXECUTOR)
