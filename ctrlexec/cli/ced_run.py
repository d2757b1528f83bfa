"""`ced ping`, `ced run` and `ced list-locks`: talking to agents.

Output is 0.12's: text for people (`==> HOST  [OK  exit:0  35ms  req:...]`,
the ping table), `{"ok":1,"results":[...]}` with `--json`. Failures that stop
the whole operation print `Denied: ...` / `Locked: ...` on stderr, or with
`--json` an `{"ok":0,...}` object on stdout; they exit 1 like 0.12.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..config.load import load_dispatcher
from ..core import report
from ..core.results import ping_failed, run_failed
from ..dispatcher.engine import BadRequest, Engine
from ..dispatcher.locks import HostScriptLocks
from ..dispatcher.registry import UnknownAgents
from ..errors import EXIT_FAILURE, CtrlExecError, Locked, PolicyDenied, StateError
from ..hooks import CALLER_CLI
from .common import Context, add_command

# A fan-out to more hosts than this shows a live progress line on a terminal.
PROGRESS_ABOVE = 10
# Redraw the progress line at most this often (seconds).
PROGRESS_INTERVAL = 0.1

IDENTITY_HELP = """Identity forwarded to the auth hooks, the agent and the script:
  --username  defaults to $USER (advisory: hooks decide what it is worth)
  --token     defaults to $ENVEXEC_TOKEN; prefer the variable, a command
              line is visible to every user in `ps`. Tokens are never logged.
"""

RUN_EPILOG = (
    """Arguments after `--` go to the script as an argument list, never through
a shell; spaces, quotes and newlines arrive as written:
  ced run web-01 db-02 backup -- --full "two words"

Hosts are registered agent names, optionally NAME:PORT. The same script
runs on one host at a time: a second run while the first holds the
host:script lock stops with `Locked: ...` (see `ced list-locks`).

Exit status: 0 when every host exited 0; 1 when any host failed, the auth
hook denied, or a lock was held; 2 for a malformed command. With --async:
0 when any host accepted the job, else 1.

"""
    + IDENTITY_HELP
)

PING_EPILOG = (
    """Exit status: 0 when every host answered; 1 when any host failed (0.12
exits 0 even then) or the auth hook denied; 2 for a malformed command.

"""
    + IDENTITY_HELP
)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, not {value}")
    return value


def _identity_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=port_number,
        metavar="N",
        help="port for agents registered on the default port (default: the config's `port`, 7443)",
    )
    parser.add_argument("--username", metavar="NAME", help="default: $USER")
    parser.add_argument("--token", metavar="TOKEN", help="default: $ENVEXEC_TOKEN")


def register(subparsers) -> None:
    run = add_command(
        subparsers,
        "run",
        cmd_run,
        "run an allowlisted script on agents",
        description="Run an allowlisted script on one or more agents at once.",
        epilog=RUN_EPILOG,
    )
    run.usage = "%(prog)s [options] HOST... SCRIPT [-- ARGS...]"
    run.add_argument(
        "operands",
        nargs="+",
        metavar="HOST... SCRIPT",
        help="one or more agents (NAME or NAME:PORT), then the script name",
    )
    run.add_argument(
        "--async",
        dest="run_async",
        action="store_true",
        help="return once the agents accepted the job; follow it with "
        "`ced status REQID` or `ced wait REQID`",
    )
    _identity_options(run)

    ping = add_command(
        subparsers,
        "ping",
        cmd_ping,
        "check that agents answer",
        description="Check mTLS connectivity to agents: status, round trip, "
        "certificate expiry and version of each.",
        epilog=PING_EPILOG,
    )
    ping.usage = "%(prog)s [options] HOST..."
    ping.add_argument("hosts", nargs="+", metavar="HOST", help="agent (NAME or NAME:PORT)")
    _identity_options(ping)

    add_command(
        subparsers,
        "list-locks",
        cmd_list_locks,
        "show host:script locks held by running dispatches",
        description="Show the host:script locks held right now (a run holds its "
        "locks until every host has answered).",
    )


class ProgressLine:
    """`[ 37/120] hosts done, 2 failed` on stderr while a large fan-out runs,
    when stderr is a terminal."""

    def __init__(self, total: int, failed, stream=None):
        self.stream = stream or sys.stderr
        self.total = total
        self.enabled = total > PROGRESS_ABOVE and self.stream.isatty()
        self._is_failure = failed
        self.done = 0
        self.failed = 0
        self._drawn = 0.0

    def __call__(self, result: dict) -> None:
        self.done += 1
        self.failed += 1 if self._is_failure(result) else 0
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= PROGRESS_INTERVAL or self.done == self.total):
            self._drawn = now
            self.stream.write(
                "\r" + report.progress_text(self.done, self.total, self.failed) + "\x1b[K"
            )
            self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def write_text(text: str) -> None:
    """Write results whatever an agent put in them: a lone surrogate in a
    JSON string (legal JSON, not encodable text) must not crash the output."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "replace"))
    sys.stdout.buffer.flush()


def _results(ctx: Context, results: list[dict], as_text) -> None:
    if ctx.json:
        write_text(json.dumps({"ok": 1, "results": results}, ensure_ascii=False) + "\n")
    else:
        write_text(as_text(results))


def _engine(ctx: Context) -> Engine:
    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    return Engine.from_config(settings, ctx.layout)


def _identity(ctx: Context) -> dict:
    args = ctx.args
    username = args.username if args.username is not None else os.environ.get("USER", "")
    token = args.token if args.token is not None else os.environ.get("ENVEXEC_TOKEN", "")
    return {"username": username, "token": token, "port": args.port}


def _stopped(ctx: Context, exc: CtrlExecError) -> int:
    """The operation did not start: say why, as 0.12 does."""
    if isinstance(exc, PolicyDenied):
        body, text = {"ok": 0, "error": exc.reason, "code": exc.code}, f"Denied: {exc.reason}"
    elif isinstance(exc, Locked):
        body = {"ok": 0, "error": "locked", "code": 4, "conflicts": exc.conflicts}
        text = "Locked: already running: " + ", ".join(exc.conflicts)
    else:
        assert isinstance(exc, UnknownAgents)
        detail = "not a registered agent: " + ", ".join(exc.names)
        body = {"ok": 0, "error": "unknown agent", "detail": detail}
        text = (
            f"{ctx.prog}: {exc}\nOnly registered agents can be addressed - run "
            f"'{ctx.prog} list-agents' to see them."
        )
    if ctx.json:
        ctx.emit_json(body)
    else:
        ctx.err(text)
    return EXIT_FAILURE


def cmd_run(ctx: Context) -> int:
    operands = ctx.args.operands
    if len(operands) < 2:
        raise BadRequest(
            "need at least one host and a script name: ced run HOST... SCRIPT [-- ARGS...]"
        )
    hosts, script = operands[:-1], operands[-1]
    script_args = getattr(ctx.args, "script_args", None) or []
    engine = _engine(ctx)
    if ctx.args.run_async:
        return _run_async(ctx, engine, hosts, script, script_args)
    return _fan_out(
        ctx,
        hosts,
        run_failed,
        report.run_text,
        lambda progress: engine.run(
            hosts, script, script_args, caller=CALLER_CLI, progress=progress, **_identity(ctx)
        ),
    )


def _fan_out(ctx: Context, hosts: list[str], failed, text, call) -> int:
    """One operation over many hosts: a progress line while it runs, then the
    results; exit 1 when any host failed."""
    progress = ProgressLine(len(hosts), failed)
    try:
        results = call(progress)
    except (PolicyDenied, Locked, UnknownAgents) as exc:
        return _stopped(ctx, exc)
    finally:
        progress.clear()
    _results(ctx, results, text)
    return EXIT_FAILURE if any(failed(result) for result in results) else 0


def _run_async(
    ctx: Context, engine: Engine, hosts: list[str], script: str, script_args: list[str]
) -> int:
    """Submit, record the run for `ced status`/`ced wait`, report acceptance."""
    from ..dispatcher.runstore import RunStore

    reqid = engine.new_reqid()
    try:
        results = engine.run(
            hosts,
            script,
            script_args,
            caller=CALLER_CLI,
            reqid=reqid,
            run_async=True,
            **_identity(ctx),
        )
    except (PolicyDenied, Locked, UnknownAgents) as exc:
        return _stopped(ctx, exc)
    try:
        RunStore(ctx.layout.runs_dir).record_async(reqid, script, results)
    except StateError as exc:  # the jobs run anyway: say so, and that status cannot follow
        ctx.err(f"{ctx.prog}: warning: {exc}; `status {reqid}` will not find this run")
    if ctx.json:
        write_text(
            json.dumps({"ok": 1, "reqid": reqid, "results": results}, ensure_ascii=False) + "\n"
        )
    else:
        write_text(report.async_submit_text(reqid, results, f"{ctx.prog} status"))
    return 0 if any(result.get("status") == "accepted" for result in results) else EXIT_FAILURE


def cmd_ping(ctx: Context) -> int:
    hosts = ctx.args.hosts
    if getattr(ctx.args, "script_args", None) is not None:
        raise BadRequest("ping takes no script arguments")
    from ..dispatcher.renewal import ping_and_renew

    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    engine = Engine.from_config(settings, ctx.layout)
    return _fan_out(
        ctx,
        hosts,
        ping_failed,
        report.ping_text,
        lambda progress: ping_and_renew(
            engine, settings, hosts, caller=CALLER_CLI, progress=progress, **_identity(ctx)
        ),
    )


def cmd_list_locks(ctx: Context) -> int:
    locks = HostScriptLocks(ctx.layout.locks_dir).held()
    if ctx.json:
        ctx.emit_json({"ok": 1, "locks": locks})
    else:
        sys.stdout.write(report.locks_text(locks))
    return 0
