"""`ced`: the operator CLI on the dispatcher host."""

from __future__ import annotations

from .. import log
from . import roles

TOPICS: tuple[str, ...] = (
    "ctrlexec.cli.ced_run",
    "ctrlexec.cli.ced_cancel",
    "ctrlexec.cli.ced_status",
    "ctrlexec.cli.ced_pki",
    "ctrlexec.cli.ced_pairing_mode",
    "ctrlexec.cli.ced_pairing",
    "ctrlexec.cli.ced_registry",
    "ctrlexec.cli.ced_import",
    "ctrlexec.cli.ced_lifecycle",
    "ctrlexec.cli.ced_revoke",
    "ctrlexec.cli.ced_completion",
    "ctrlexec.cli.ced_db",
)

# The 17 modes of ctrl-exec 0.12's ctrl-exec-dispatcher, in its order.
COMPAT_MODES = (
    "run",
    "status",
    "wait",
    "ping",
    "pairing-mode",
    "list-requests",
    "approve",
    "deny",
    "setup-ca",
    "setup-ctrl-exec",
    "list-agents",
    "edit-agent",
    "list-locks",
    "rotate-cert",
    "serial-status",
    "unpair",
    "maintain",
)

DESCRIPTION = """Operator CLI of ctrl-exec: set up the CA, pair agents, run allowlisted
scripts on them and manage the registry."""

EPILOG = """Hosts are registered agent names, optionally NAME:PORT. Script arguments
follow `--` and are passed as an argument list, never through a shell:
  ced run web-01 db-02 backup -- --full "two words"

Every mode takes --json for scripts (docs/running.md lists what each
prints). Exit status: 0 done; 1 failed (each mode's --help says when);
2 a malformed command line; 78 a configuration file, or the dispatcher's
certificate, missing or unusable; 130 stopped by Ctrl-C.
"""


def split_script_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Everything after the first `--` belongs to the script, verbatim."""
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1 :]
    return argv, None


def mode_first(
    head: list[str], modes: frozenset[str] | set[str], value_options: frozenset[str]
) -> list[str]:
    """0.12 takes options before or after the mode (`ced --json ping web-01`,
    `ced --timeout 60 wait REQID`); argparse wants mode-specific options after
    it. Move whatever precedes the mode to just after it. The value of an
    option in `value_options` is never taken for the mode
    (`ced --username run ping web-01`)."""
    index = 0
    while index < len(head):
        token = head[index]
        if token in modes:
            return [token, *head[:index], *head[index + 1 :]]
        if not token.startswith("-"):
            break  # an operand before any mode: leave it to the parser's error
        if token in value_options:
            index += 1
        index += 1
    return head


def operands_last(head: list[str], value_options: frozenset[str]) -> list[str]:
    """After the mode, options may also come between operands (`ced run
    'web-*' --tag env=prod backup`); argparse would then take `backup` for an
    unknown argument. Keep the mode first, every option with its value in
    order, then the operands in order."""
    if not head or head[0].startswith("-"):
        return head
    options: list[str] = []
    operands: list[str] = []
    index = 1
    while index < len(head):
        token = head[index]
        if token.startswith("-") and token != "-":
            options.append(token)
            if token in value_options and index + 1 < len(head):
                index += 1
                options.append(head[index])
        else:
            operands.append(token)
        index += 1
    return [head[0], *options, *operands]


def main(argv: list[str], prog: str = "ced") -> int:
    head, script_args = split_script_args(argv)
    parser = roles.build_parser(
        prog, "ctrl-exec-dispatcher", DESCRIPTION, TOPICS, COMPAT_MODES, EPILOG
    )
    value_options = roles.value_options(parser)
    head = operands_last(mode_first(head, set(COMPAT_MODES), value_options), value_options)
    if not head:
        parser.print_help()
        return 0
    args = roles.parse(parser, head)
    args.script_args = script_args
    if getattr(args, "handler", None) is None:
        parser.print_usage()
        return 2
    from .common import Context, run_handler

    return run_handler(Context(args=args, prog=prog, ident=log.IDENT_DISPATCHER))
