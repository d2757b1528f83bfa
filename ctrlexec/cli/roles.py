"""Building a role's parser from its topic modules.

Each topic module (`ced_pki`, `agent_serve`, ...) has `register(subparsers)`
that adds its subcommands. A role lists its topics and the subcommand names
ctrl-exec 0.12 has; a 0.12 name that no topic provides still appears in
`--help` and answers with a clear "not available" error, so operators see the
whole surface and scripts fail loudly rather than oddly.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import EXIT_USAGE
from .common import Context, Parser, add_global_options, run_handler, version_line


def build_parser(
    prog: str,
    version_name: str,
    description: str,
    topics: tuple[str, ...],
    compat_modes: tuple[str, ...],
    epilog: str = "",
) -> Parser:
    parser = Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line(version_name))
    add_global_options(parser, suppress=False)
    subparsers = parser.add_subparsers(title="modes", metavar="MODE", parser_class=Parser)
    for topic in topics:
        importlib.import_module(topic).register(subparsers)
    # Every 0.12 mode name must be a real mode here (tests/unit/test_cli_args.py).
    return parser


def value_options(parser: argparse.ArgumentParser) -> frozenset[str]:
    """Every option string of the parser and of its modes that takes a value.
    argparse has no public way to walk a parser, hence `_actions`."""
    found: set[str] = set()
    pending = [parser]
    while pending:
        current = pending.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
            elif action.option_strings and action.nargs != 0:
                found.update(action.option_strings)
    return frozenset(found)


def parse(parser: Parser, argv: list[str]) -> argparse.Namespace:
    """parse_args, with usage errors as JSON too when `--json` was given."""
    Parser.json_errors = "--json" in argv
    return parser.parse_args(argv)


def run(parser: Parser, argv: list[str], prog: str, ident: str) -> int:
    if not argv:
        parser.print_help()
        return 0
    args = parse(parser, argv)
    if getattr(args, "handler", None) is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    return run_handler(Context(args=args, prog=prog, ident=ident))
