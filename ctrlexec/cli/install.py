"""`ctrl-exec.pyz install`: put ctrl-exec on this host as services."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import installer, log
from ..config.paths import ROOT_ENV
from .common import Context, Parser, add_global_options, run_handler

DESCRIPTION = """Install ctrl-exec on this host (root): the archive in PREFIX/lib/ctrl-exec,
the program names (ced, ctrl-exec-dispatcher, ctrl-exec-api, ctrl-exec-agent,
cea, ctrl-exec-executor) as links in PREFIX/bin, the service users, the
directories with their modes, example configuration files where none exist,
and the systemd units of each role. Running it again changes only what
differs; configuration files are never overwritten."""

EPILOG = """examples:
  python3 ctrl-exec.pyz install --role agent --dry-run
  python3 ctrl-exec.pyz install --role dispatcher
  python3 ctrl-exec.pyz install --role agent --role executor
  ctrl-exec.pyz install --role agent --uninstall           # keeps keys and state
  ctrl-exec.pyz install --role agent --uninstall --purge   # deletes them too

Units are installed, not started: after pairing (docs/pairing.md) run
  systemctl enable --now ctrl-exec-agent     (or ctrl-exec-api)
docs/install.md has the whole procedure.

install always writes the system paths (/etc, /var/lib, the units, the
users): --root and CTRL_EXEC_ROOT are refused; --prefix moves the archive
and the program names, --dry-run shows every step without a change.

Exit status: 0 done (or nothing to do); 1 a step failed, or not run as
root; 2 a malformed command line (no --role, --purge without --uninstall,
--root)."""


def _handler(ctx: Context) -> int:
    args = ctx.args
    done = installer.install(
        tuple(args.role or ()),
        (lambda line: None) if ctx.json else (lambda line: ctx.out(line)),
        uninstall=args.uninstall,
        purge=args.purge,
        dry_run=args.dry_run,
        prefix=Path(args.prefix),
    )
    if ctx.json:
        ctx.emit_json({"dry_run": args.dry_run, "steps": done})
    elif not done:
        ctx.out("nothing to do: this host is already as asked")
    return 0


def build_parser(prog: str = "ctrl-exec install") -> Parser:
    parser = Parser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--role",
        action="append",
        choices=installer.ROLES,
        help="what this host runs (repeatable)",
    )
    parser.add_argument("--uninstall", action="store_true", help="remove units, links, archive")
    parser.add_argument(
        "--purge", action="store_true", help="with --uninstall: also keys, config, state, users"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    parser.add_argument(
        "--prefix", default=str(installer.DEFAULT_PREFIX), help="default /usr/local"
    )
    add_global_options(parser, suppress=False)
    return parser


def main(argv: list[str], prog: str = "ctrl-exec install") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.handler = _handler
    if not args.role:
        parser.error("name at least one --role (agent, dispatcher, executor)")
    root = args.root or os.environ.get(ROOT_ENV)
    if root and Path(root).resolve() != Path("/"):
        # Honouring it would be a half-sandbox (users and units are system-wide);
        # ignoring it would install for real on a host meant to stay untouched.
        parser.error(
            f"--root / {ROOT_ENV} ({root}) does not apply to install: it always writes "
            "/etc, /var/lib, the systemd units and the service users; use --prefix for "
            "the archive and program names, --dry-run to see every step"
        )
    return run_handler(Context(args=args, prog=prog, ident=log.IDENT_DISPATCHER))
