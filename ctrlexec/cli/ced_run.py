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
import threading
import time
from typing import Any

from ..config.load import load_dispatcher
from ..core import report
from ..core.caller import Caller
from ..core.results import HostResult
from ..core.selection import parse_tag
from ..core.sse import LineSplitter
from ..dispatcher.engine import Engine
from ..errors import (
    EXIT_FAILURE,
    BadRequest,
    CtrlExecError,
    Locked,
    PolicyDenied,
    SelectionError,
    StateError,
    UnknownAgents,
)
from .common import Context, add_command

# 128 + SIGINT, as a shell reports a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
# Redraw the progress line at most this often as answers arrive, and at
# least this often while waiting (seconds).
PROGRESS_INTERVAL = 0.1
PROGRESS_TICK = 0.5

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


def tag_filter(text: str) -> tuple[str, str]:
    try:
        return parse_tag(text)
    except SelectionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tag",
        dest="tags",
        action="append",
        type=tag_filter,
        default=[],
        metavar="KEY=VALUE",
        help="only agents tagged KEY=VALUE (repeatable: all must match; tags as the "
        "agents last reported them, see `list-agents --tags`); with no HOST: every such agent",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the hosts that would be addressed, and stop",
    )


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
        help="agents (NAME, NAME:PORT, a shell-style pattern such as 'web-*', or @all), "
        "then the script name",
    )
    _selection_options(run)
    run.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="print each line as the scripts write it, prefixed with the host; "
        "then the usual result lines (without the output already shown)",
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
    ping.add_argument(
        "hosts",
        nargs="*",
        metavar="HOST",
        help="agent (NAME, NAME:PORT, a shell-style pattern such as 'web-*', or @all)",
    )
    _selection_options(ping)
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
    """On a terminal (stderr), from the start: `[ 3/14] hosts done, 1 failed,
    11 running, 2.4 s`, redrawn as answers arrive and every half second;
    replaced at the end by a summary line. Nothing of this on a pipe."""

    def __init__(self, total: int, stream=None, clock=time.monotonic, live=True):
        self.stream = stream or sys.stderr
        self.total = total
        self.enabled = _is_terminal(self.stream)
        self.live = live and self.enabled  # no redrawn line under --follow's output
        self._clock = clock
        self.started = clock()
        self.done = 0
        self.failed = 0
        self._drawn = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if self.live:
            self._draw(force=True)
            threading.Thread(target=self._tick, name="progress", daemon=True).start()

    def __call__(self, result: HostResult) -> None:
        with self._lock:
            self.done += 1
            self.failed += 1 if result.failed else 0
        self._draw(force=self.done == self.total)

    def _tick(self) -> None:
        while not self._stop.wait(PROGRESS_TICK):
            self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not self.live:
            return
        with self._lock:
            now = self._clock()
            if self._stop.is_set() or not (force or now - self._drawn >= PROGRESS_INTERVAL):
                return
            self._drawn = now
            text = report.progress_text(self.done, self.total, self.failed, now - self.started)
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()

    def clear(self) -> None:
        with self._lock:
            self._stop.set()
            if self.live:
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    def summary(self, results: list[HostResult]) -> None:
        if self.enabled:
            elapsed = self._clock() - self.started
            self.stream.write(report.summary_text(results, elapsed) + "\n")
            self.stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# Host-prefix colours for --follow on a terminal (NO_COLOR turns them off).
COLOURS = ("36", "33", "35", "32", "34", "96", "93", "95")


class FollowPrinter:
    """`--follow`: each line a script writes, as `host | line` (stderr lines
    as `host ! line`), host names aligned and coloured on a terminal; one
    notice for agents that cannot stream. Lines are printed whole, up to
    core.sse.MAX_LINE characters: a longer one (a progress bar redrawn with
    CR, or an agent that never ends its line) comes out in pieces of that
    size, so what is held back per host stays bounded."""

    def __init__(self, hosts: list[str], notice, stream=None):
        self.stream = stream or sys.stdout
        self.notice = notice
        self.width = max((len(host) for host in hosts), default=0)
        self.colour = _is_terminal(self.stream) and not os.environ.get("NO_COLOR")
        self._lock = threading.Lock()
        self._lines = LineSplitter()
        self._colours: dict[str, str] = {}
        self.streamed: dict[str, None] = {}  # in the order they first wrote
        self._fell_back: list[str] = []

    def _prefix(self, host: str, stream: str) -> str:
        label = f"{report.visible(host):<{self.width}}"
        mark = "|" if stream == "stdout" else "!"
        if self.colour:
            code = self._colours.setdefault(host, COLOURS[len(self._colours) % len(COLOURS)])
            label = f"\x1b[{code}m{label}\x1b[0m"
        return f"{label} {mark} "

    def write(self, host: str, stream: str, text: str) -> None:
        with self._lock:
            self.streamed.setdefault(host)
            lines = self._lines.feed(host, stream, text)
            if lines:
                prefix = self._prefix(host, stream)
                write_text("".join(f"{prefix}{line}\n" for line in lines))

    def fallback(self, host: str) -> None:
        with self._lock:
            first = not self._fell_back
            self._fell_back.append(host)
        if first:
            self.notice(
                f"note: {host} cannot stream output (ctrl-exec 0.12 agent?); its output, "
                "and that of any other such agent, is shown when it ends"
            )

    def flush(self) -> None:
        with self._lock:
            partial = [(host, *left) for host in self.streamed for left in self._lines.flush(host)]
        for host, stream, rest in partial:
            write_text(f"{self._prefix(host, stream)}{rest}\n")

    def results_text(self, results: list[HostResult]) -> str:
        """The usual result lines; output already shown is not repeated."""
        self.flush()
        shown = [
            HostResult(
                result.op,
                {
                    key: value
                    for key, value in result.wire.items()
                    if key not in ("stdout", "stderr")
                },
            )
            if result.wire.get("host") in self.streamed
            else result
            for result in results
        ]
        return report.run_text(shown)


def write_text(text: str) -> None:
    """Write results whatever an agent put in them: a lone surrogate in a
    JSON string (legal JSON, not encodable text) must not crash the output."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "replace"))
    sys.stdout.buffer.flush()


def _wire(results: list[HostResult]) -> list[dict]:
    return [result.to_wire() for result in results]


def _results(ctx: Context, results: list[HostResult], as_text) -> None:
    if ctx.json:
        write_text(json.dumps({"ok": 1, "results": _wire(results)}, ensure_ascii=False) + "\n")
    else:
        write_text(as_text(results))


def _engine(ctx: Context) -> Engine:
    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    return Engine.from_config(settings, ctx.layout)


def _caller(ctx: Context) -> Caller:
    """The operator, as the auth hook and the agents see them."""
    args = ctx.args
    username = args.username if args.username is not None else os.environ.get("USER", "")
    token = args.token if args.token is not None else os.environ.get("ENVEXEC_TOKEN", "")
    return Caller(username, token)


def _engine_run(
    ctx: Context,
    engine: Engine,
    hosts: list[str],
    script: str,
    script_args: list[str],
    reqid: str,
    **how: Any,
) -> list[HostResult]:
    """Engine.run as the operator asked: their identity and `--port`."""
    return engine.run(
        hosts, script, script_args, caller=_caller(ctx), port=ctx.args.port, reqid=reqid, **how
    )


def _args_hint(ctx: Context, hosts: list[str], script: str, unknown: list[str]) -> str:
    """`ced run web-01 hello extra`: `hello` is no agent; the operator most
    likely meant script `hello` with argument `extra`."""
    if not script or not unknown or hosts[-len(unknown) :] != unknown or len(hosts) < 2:
        return ""
    known = hosts[: -len(unknown)]
    if not known:
        return ""
    meant = unknown[0]
    args = " ".join([*unknown[1:], script])
    return (
        f"Did you mean script '{meant}' with arguments? They go after `--`: "
        f"{ctx.prog} run {' '.join(known)} {meant} -- {args}"
    )


def _denied_hint(exc: PolicyDenied) -> str:
    """The line under `Denied: ...` (0.12's first line stays as it is)."""
    if "not found or not executable" in exc.reason:
        return "Fix auth_hook in ctrl-exec.toml: it must name an executable file."
    return (
        f"The auth hook (auth_hook in ctrl-exec.toml) refused it with exit {exc.code}; it "
        "is given --username (default $USER) and --token (default $ENVEXEC_TOKEN)."
    )


def _stopped(ctx: Context, exc: CtrlExecError, hint: str = "") -> int:
    """The operation did not start: say why, as 0.12 does."""
    if isinstance(exc, PolicyDenied):
        body = {"ok": 0, "error": exc.reason, "code": exc.code}
        text = f"Denied: {exc.reason}\n{_denied_hint(exc)}"
    elif isinstance(exc, Locked):
        body = {"ok": 0, "error": "locked", "code": 4, "conflicts": exc.conflicts}
        text = (
            "Locked: already running: " + ", ".join(exc.conflicts) + "\n"
            f"Another run of that script holds the lock: '{ctx.prog} list-locks' shows it; "
            f"wait for it to end, or stop it with '{ctx.prog} cancel REQID'."
        )
    else:
        assert isinstance(exc, UnknownAgents)
        detail = "not a registered agent: " + ", ".join(exc.names)
        body = {"ok": 0, "error": "unknown agent", "detail": detail}
        text = (
            f"{ctx.prog}: {exc}\nOnly registered agents can be addressed - run "
            f"'{ctx.prog} list-agents' to see them."
        )
        if hint:
            body["hint"] = hint
            text += "\n" + hint
    if ctx.json:
        ctx.emit_json(body)
    else:
        ctx.err(text)
    return EXIT_FAILURE


def _dry_run(ctx: Context, hosts: list[str]) -> int:
    if ctx.json:
        ctx.emit_json({"ok": 1, "hosts": hosts})
    else:
        write_text("".join(f"{report.visible(host)}\n" for host in hosts))
    return 0


def cmd_run(ctx: Context) -> int:
    operands = ctx.args.operands
    if len(operands) < 2 and not (ctx.args.tags and operands):
        raise BadRequest(
            "need at least one host and a script name: ced run HOST... SCRIPT [-- ARGS...]"
        )
    hosts, script = operands[:-1], operands[-1]
    script_args = getattr(ctx.args, "script_args", None) or []
    engine = _engine(ctx)
    hosts = engine.select(hosts, ctx.args.tags)
    if ctx.args.dry_run:
        return _dry_run(ctx, hosts)
    if ctx.args.run_async:
        return _run_async(ctx, engine, hosts, script, script_args)
    reqid = engine.new_reqid()
    answered: list[HostResult] = []
    printer = FollowPrinter(hosts, ctx.err) if ctx.args.follow and not ctx.json else None

    def run(progress) -> list[HostResult]:
        def done(result: HostResult) -> None:
            answered.append(result)
            progress(result)

        return _engine_run(
            ctx,
            engine,
            hosts,
            script,
            script_args,
            reqid,
            progress=done,
            follow=printer.write if printer else None,
            on_fallback=printer.fallback if printer else None,
        )

    text = printer.results_text if printer else report.run_text
    try:
        return _fan_out(ctx, hosts, text, run, script, live=printer is None)
    except KeyboardInterrupt:
        return _interrupted(ctx, engine, reqid, script, hosts, list(answered))


def _interrupted(
    ctx: Context,
    engine: Engine,
    reqid: str,
    script: str,
    hosts: list[str],
    answered: list[HostResult],
) -> int:
    """The first Ctrl-C: stop waiting, record the run, say what still runs
    where and how to follow or cancel it."""
    from ..dispatcher.run_stop import record_interrupted

    stopped = record_interrupted(
        engine, engine.state.runs, reqid, script, hosts, ctx.args.port, answered
    )
    if ctx.json:
        body = {
            "ok": 0,
            "error": "interrupted",
            "reqid": reqid,
            "still_running": stopped.still_running,
            "results": _wire(answered),
        }
        write_text(json.dumps(body, ensure_ascii=False) + "\n")
        return EXIT_INTERRUPTED
    if answered:
        write_text(report.run_text(answered))
    lines = [
        f"Interrupted: stopped waiting for {len(stopped.still_running)} of {len(hosts)} "
        f"host(s)  req:{reqid}"
    ]
    if stopped.still_running:
        running = " ".join(stopped.still_running)
        lines += [
            f"The script may still be running on: {running}",
            f"  follow: {ctx.prog} status {reqid}",
            f"  cancel: {ctx.prog} cancel {reqid} {running}",
        ]
    if not stopped.recorded:
        lines.append(f"warning: {stopped.record_error}; `status {reqid}` will not find this run")
    ctx.err("\n".join(lines))
    return EXIT_INTERRUPTED


def _fan_out(
    ctx: Context, hosts: list[str], text, call, script: str = "", live: bool = True
) -> int:
    """One operation over many hosts: a progress line while it runs, then the
    results; exit 1 when any host failed."""
    progress = ProgressLine(len(hosts), live=live)
    try:
        results = call(progress)
    except UnknownAgents as exc:
        return _stopped(ctx, exc, _args_hint(ctx, hosts, script, exc.names))
    except (PolicyDenied, Locked) as exc:
        return _stopped(ctx, exc)
    finally:
        progress.clear()
    _results(ctx, results, text)
    progress.summary(results)
    return EXIT_FAILURE if any(result.failed for result in results) else 0


def _run_async(
    ctx: Context, engine: Engine, hosts: list[str], script: str, script_args: list[str]
) -> int:
    """Submit, record the run for `ced status`/`ced wait`, report acceptance."""
    reqid = engine.new_reqid()
    try:
        results = _engine_run(ctx, engine, hosts, script, script_args, reqid, run_async=True)
    except (PolicyDenied, Locked, UnknownAgents) as exc:
        return _stopped(ctx, exc)
    try:
        engine.state.runs.record_async(reqid, script, results)
    except StateError as exc:  # the jobs run anyway: say so, and that status cannot follow
        ctx.err(f"{ctx.prog}: warning: {exc}; `status {reqid}` will not find this run")
    if ctx.json:
        write_text(
            json.dumps({"ok": 1, "reqid": reqid, "results": _wire(results)}, ensure_ascii=False)
            + "\n"
        )
    else:
        write_text(report.async_submit_text(reqid, results, f"{ctx.prog} status"))
    return 0 if any(not result.failed for result in results) else EXIT_FAILURE


def cmd_ping(ctx: Context) -> int:
    hosts = ctx.args.hosts
    if getattr(ctx.args, "script_args", None) is not None:
        raise BadRequest("ping takes no script arguments")
    from ..dispatcher.renewal import ping_and_renew

    if not hosts and not ctx.args.tags:
        raise BadRequest("need at least one host (a name, a pattern such as 'web-*', or @all)")
    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    engine = Engine.from_config(settings, ctx.layout)
    hosts = engine.select(hosts, ctx.args.tags)
    if ctx.args.dry_run:
        return _dry_run(ctx, hosts)
    return _fan_out(
        ctx,
        hosts,
        report.ping_text,
        lambda progress: ping_and_renew(
            engine,
            settings,
            hosts,
            caller=_caller(ctx),
            port=ctx.args.port,
            progress=progress,
        ),
    )


def cmd_list_locks(ctx: Context) -> int:
    from ..state import for_layout

    settings = load_dispatcher(ctx.layout, ctx.config_path)
    locks = for_layout(settings, ctx.layout).locks.held()
    if ctx.json:
        ctx.emit_json({"ok": 1, "locks": locks})
    else:
        sys.stdout.write(report.locks_text(locks))
    return 0
