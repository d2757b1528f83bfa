"""`dispatcher`: the long-running dispatcher services (HTTP API, maintenance)."""

from __future__ import annotations

from .. import log
from . import roles

TOPICS: tuple[str, ...] = ("ctrlexec.cli.dispatcher_serve",)
COMPAT_MODES = ("serve",)

DESCRIPTION = """Long-running dispatcher services of ctrl-exec: the HTTP API (port 7445)
and the maintenance loop."""


# 0.12's `ctrl-exec-api` has no modes: it serves. Under that name, serving is
# what runs unless a mode or --help/--version is asked for.
API_PROGRAM = "ctrl-exec-api"


def main(argv: list[str], prog: str = "ctrl-exec dispatcher") -> int:
    if prog == API_PROGRAM and not set(argv) & {*COMPAT_MODES, "-h", "--help", "--version"}:
        argv = ["serve", *argv]
    parser = roles.build_parser(prog, "ctrl-exec-api", DESCRIPTION, TOPICS, COMPAT_MODES)
    return roles.run(parser, argv, prog, log.IDENT_API)
