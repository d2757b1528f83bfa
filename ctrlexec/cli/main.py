"""Entry point of ctrl-exec.pyz: pick the role, then hand over to it.

The role comes from the name the program was started under (a symlink
`ced -> ctrl-exec.pyz` works like `ctrl-exec.pyz ced`), else from the first
argument.
"""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..errors import EXIT_USAGE

# Program names (argv[0], as symlinks) and the role each one runs.
# `ctrl-exec-dispatcher` is 0.12's name of the operator CLI (`ced` is its
# alias there), so it maps to `ced`; `ctrl-exec-api` was 0.12's API server.
PROGRAM_ROLES = {
    "ced": "ced",
    "ctrl-exec-dispatcher": "ced",
    "cea": "agent",
    "ctrl-exec-agent": "agent",
    "ctrl-exec-executor": "executor",
    "ctrl-exec-api": "dispatcher",
}

ROLES = {
    "ced": ("ctrlexec.cli.ced", "operator CLI: PKI, pairing, run/ping, registry"),
    "dispatcher": ("ctrlexec.cli.dispatcher", "long-running dispatcher services (HTTP API)"),
    "agent": ("ctrlexec.cli.agent", "agent daemon and its pairing and checks"),
    "executor": ("ctrlexec.cli.executor", "privileged executor for the agent"),
    "demo": (
        "ctrlexec.cli.demo_command",
        "a throwaway CA, dispatcher and agent on loopback, paired, running a script",
    ),
    "install": (
        "ctrlexec.cli.install",
        "install this archive as services: program names, users, directories, units",
    ),
    "doctor": (
        "ctrlexec.cli.doctor",
        "check that this host can run ctrl-exec (Python, native libraries)",
    ),
}

USAGE = """usage: ctrl-exec.pyz ROLE [options] ...

ctrl-exec runs allowlisted scripts on remote hosts over mutual TLS.

roles:
{roles}

Each role has its own --help, e.g. `ctrl-exec.pyz ced --help`.
The role is also taken from the program name: symlinks named ced,
ctrl-exec-dispatcher, cea, ctrl-exec-agent, ctrl-exec-executor or
ctrl-exec-api to ctrl-exec.pyz run that role directly.

options:
  -h, --help     show this help and exit
  --version      print the version and exit; with --verbose also the
                 commit, the Python targets and the SHA-256 of every
                 bundled wheel (--json for a JSON object)
"""


def _program_name(argv0: str) -> str:
    name = os.path.basename(argv0)
    for suffix in (".pyz", ".py"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _usage() -> str:
    lines = [f"  {name:<11} {summary}" for name, (_, summary) in ROLES.items()]
    return USAGE.format(roles="\n".join(lines))


def _version(options: list[str]) -> int:
    unknown = set(options) - {"--verbose", "--json"}
    if unknown:
        sys.stderr.write(
            f"ctrl-exec: --version takes --verbose and --json, not {sorted(unknown)}\n"
        )
        return EXIT_USAGE
    if "--verbose" not in options and "--json" not in options:
        sys.stdout.write(f"ctrl-exec {__version__}\n")
        return 0
    from .. import buildinfo

    report = buildinfo.verbose_report()
    if "--json" in options:
        import json

        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        sys.stdout.write(buildinfo.verbose_text(report))
    return 0


def run_role(role: str, argv: list[str], prog: str) -> int:
    import importlib

    module = importlib.import_module(ROLES[role][0])
    return module.main(argv, prog)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    program = _program_name(argv[0]) if argv else "ctrl-exec"
    role = PROGRAM_ROLES.get(program)
    if role is not None:
        return run_role(role, argv[1:], program)
    rest = argv[1:]
    if not rest or rest[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0 if rest else EXIT_USAGE
    if rest[0] == "--version":
        return _version(rest[1:])
    if rest[0] not in ROLES:
        sys.stderr.write(
            f"ctrl-exec: unknown role '{rest[0]}' (choose from {', '.join(ROLES)}); try --help\n"
        )
        return EXIT_USAGE
    return run_role(rest[0], rest[1:], f"ctrl-exec {rest[0]}")
