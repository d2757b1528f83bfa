"""`ctrl-exec.pyz demo`: a whole ctrl-exec on loopback, in one throwaway directory.

It does what an operator does on a new fleet, with the real commands: create
a CA, give the dispatcher its certificate, open pairing mode, let an agent
ask to pair, approve it once the codes match, start the agent, then
`ced ping` and `ced run`. Every step runs this same program as a separate
process under `--root DIR`, so nothing outside DIR is touched.
"""

# The steps are ctrlexec/demo.py; this module parses the options and prints.

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import Parser, version_line


def build_parser(prog: str = "ctrl-exec demo") -> Parser:
    parser = Parser(
        prog=prog,
        description=__doc__,
        epilog="Exit status: 0 the script ran on the agent; 1 a step failed (it is named).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line("ctrl-exec"))
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the agent running and the files in place, and print how to use them",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="parent of the demo directory (default: the system temp dir)",
    )
    return parser


def main(argv: list[str], prog: str = "ctrl-exec demo") -> int:
    args = build_parser(prog).parse_args(argv)
    from .. import demo

    outcome = demo.run(args.dir, args.keep, lambda text: print(text, flush=True))
    if not outcome.succeeded:
        print(f"\ndemo {outcome.problem}", file=sys.stderr)
        return 1
    print(
        "\nThe demo worked: the script ran on the agent over mutual TLS, with its arguments intact."
    )
    return 0
