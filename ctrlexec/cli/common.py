"""What every command-line role shares: global options, the run context,
output helpers and the one place where errors become exit codes."""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, log
from ..config.paths import Layout, resolve_layout
from ..core.report import visible
from ..errors import EXIT_FAILURE, EXIT_USAGE, CtrlExecError
from . import exit_status

DEBUG_ENV = "CTRL_EXEC_DEBUG"


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line and exit code 2; with `--json`
    on the command line, also `{"ok": 0, "error": ...}` on stdout."""

    # Set by a role's main before parsing (argparse stops at the first
    # usage error, before it has seen `--json` wherever it was given).
    json_errors = False

    def error(self, message: str) -> None:  # type: ignore[override]
        if Parser.json_errors:
            sys.stdout.write(json.dumps({"ok": 0, "error": message}, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nTry '{self.prog} --help'.\n")


def add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before or after the subcommand (0.12's CLIs take
    options anywhere). On subparsers the defaults are suppressed so a value
    given before the subcommand is not overwritten."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--root",
        metavar="DIR",
        default=default,
        help="re-base every default path under DIR (also CTRL_EXEC_ROOT)",
    )
    group.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="configuration file to read instead of the default",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print machine-readable JSON",
    )
    group.add_argument(
        "--log-target",
        metavar="TARGET",
        default=default,
        help="auto, syslog, stderr or a file path (also CTRL_EXEC_LOG_TARGET)",
    )
    group.add_argument(
        "--log-format",
        choices=log.FORMATS,
        default=default,
        help="kv (ACTION=... lines) or json (also CTRL_EXEC_LOG_FORMAT)",
    )


@dataclass
class Context:
    """Everything a command handler needs, resolved once."""

    args: argparse.Namespace
    prog: str
    ident: str
    _layout: Layout | None = field(default=None, repr=False)

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = resolve_layout(getattr(self.args, "root", None))
        return self._layout

    @property
    def config_path(self) -> Path | None:
        value = getattr(self.args, "config", None)
        return Path(value) if value else None

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def emit_json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def out(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")

    def err(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def configure_logging(
        self, target: str | None = None, fmt: str | None = None, daemon: bool = False
    ) -> None:
        """Log destination: the command line wins, then the environment,
        then the config file's log_target/log_format. An interactive command
        (not `daemon`) without syslog logs to a file in its state directory,
        never to the operator's terminal."""
        log.configure(
            self.ident,
            getattr(self.args, "log_target", None)
            or os.environ.get("CTRL_EXEC_LOG_TARGET")
            or target,
            getattr(self.args, "log_format", None) or os.environ.get("CTRL_EXEC_LOG_FORMAT") or fmt,
            interactive_file=None if daemon else self.interactive_log_file,
        )

    @property
    def interactive_log_file(self) -> Path:
        state = (
            self.layout.agent_state
            if self.ident == log.IDENT_AGENT
            else self.layout.dispatcher_state
        )
        return state / f"{self.ident}.log"


Handler = Callable[[Context], int]


def add_command(
    subparsers,
    name: str,
    handler: Handler,
    help_text: str,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    description = description or help_text
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=exit_status.with_exit_status(name, description, epilog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(parser, suppress=True)
    parser.set_defaults(handler=handler)
    return parser


def run_handler(ctx: Context) -> int:
    """Call the chosen handler; map errors to one line and an exit code."""
    handler: Handler | None = getattr(ctx.args, "handler", None)
    if handler is None:
        raise SystemExit(EXIT_USAGE)
    try:
        return handler(ctx) or 0
    except CtrlExecError as exc:
        _failed(ctx, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _failed(ctx, "interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
    except PermissionError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        _failed(ctx, permission_message(exc))
        return EXIT_FAILURE
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        _failed(
            ctx,
            f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)",
        )
        return EXIT_FAILURE


def permission_message(exc: PermissionError) -> str:
    """What an operator without access to a file reads: the file, who may use
    it, and what to do (the usual cause is a user outside the service group)."""
    path = exc.filename
    if not path:
        return f"permission denied: {exc.strerror or exc}: run as root or as the service's user"
    owner = _nearest_owner(Path(os.fsdecode(path)))
    who = f" ({owner})" if owner else ""
    return (
        f"permission denied: {os.fsdecode(path)}{who}: run as root, or as a member of the group "
        "that owns it (docs/paths.md: who may write where)"
    )


def _nearest_owner(path: Path) -> str:
    """`mode owner:group` of the path, else of its nearest existing parent."""
    for candidate in (path, *path.parents):
        try:
            st = candidate.stat()
        except OSError:
            continue
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        where = "" if candidate == path else f"{candidate} is "
        return f"{where}{stat.S_IMODE(st.st_mode):04o} {owner}:{group}"
    return ""


def usage_error(ctx: Context, message: str) -> int:
    """A usage problem found after parsing: as a failed command, exit 2."""
    _failed(ctx, message)
    return EXIT_USAGE


def _failed(ctx: Context, message: str) -> None:
    """A command that stopped: one line on stderr, and with --json also one
    object `{"ok": 0, "error": ...}` on stdout for scripts. The message may
    quote a peer (an agent's error, a pairing reason): its control
    characters are shown, never sent to the terminal."""
    ctx.err(f"{ctx.prog}: {visible(message)}")
    if ctx.json:
        try:
            ctx.emit_json({"ok": 0, "error": message})
        except (BrokenPipeError, UnicodeEncodeError):
            pass


def version_line(program: str) -> str:
    return f"{program} {__version__}"


def table(rows: Iterable[Iterable[str]], widths: list[int]) -> list[str]:
    """Fixed-width columns, as 0.12's tables (last column unpadded)."""
    lines = []
    for row in rows:
        cells = list(row)
        parts = [f"{cell:<{width}}" for cell, width in zip(cells[:-1], widths, strict=False)]
        lines.append(" ".join([*parts, cells[-1]]) if cells else "")
    return lines
