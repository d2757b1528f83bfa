"""`ced pairing-mode [start|stop]`: open the pairing port for a while.

Foreground on a terminal it is interactive: each request is shown with its
code and the operator types `a`, `d` or `s` (or `a2`, `d1`, `list`, `quit`
when several wait). Without a terminal it only listens; decisions come from
`ced approve` / `ced deny` in another shell. `start` runs the non-interactive
listener detached; `stop` ends it. Only one pairing mode runs at a time: it
holds `pairing-mode.lock` and writes its PID to `pairing-mode.pid`.
"""

# Pairing mode itself is dispatcher/pairing_mode.py, imported when it runs,
# not when `ced` builds its parser for some other command.

from __future__ import annotations

import json
import sys
import threading

from ..config.load import load_dispatcher
from ..core.ratelimit import Rule
from ..errors import CtrlExecError
from .ced_pairing import approval_lines, reverse_text
from .common import Context, add_command

MAX_WINDOW = 600


class Output:
    """Lines to stdout from the console and the listener's threads."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self._lock = threading.Lock()

    def text(self, text: str, newline: bool = True) -> None:
        if self.as_json:
            return
        self._write(text + ("\n" if newline else ""))

    def event(self, **fields) -> None:
        if self.as_json:
            self._write(json.dumps(fields) + "\n")

    def _write(self, data: str) -> None:
        with self._lock:
            try:
                sys.stdout.write(data)
                sys.stdout.flush()
            except (OSError, ValueError):
                pass  # a detached listener has no stdout


class Console:
    """The interactive prompt (operations.md §2.2.1)."""

    def __init__(self, out: Output, settings, queue):
        self.out = out
        self.settings = settings
        self.queue = queue
        self.announced: set[str] = set()

    def line(self, text: str) -> bool:
        """One typed line; True when the operator quits."""
        return self.command(text) == "quit"

    def notice_new(self) -> None:
        pending = self.queue.pending()
        ids = {str(r.get("id")) for r in pending}
        if ids - self.announced:
            self.announced |= ids
            self.prompt(pending)

    def prompt(self, pending: list[dict]) -> None:
        if not pending:
            self.out.text("No pending pairing requests. Waiting... (commands: list, quit)")
            return
        self.out.text("")
        if len(pending) == 1:
            for line in request_block(pending[0]):
                self.out.text(line)
            self.out.text("Accept, Deny, or Skip? [a/d/s]: ", newline=False)
            return
        self.out.text(f"{len(pending)} pending pairing requests:")
        self.queue_lines(pending)
        self.out.text("Command (a1/d1/a2/d2/list/quit): ", newline=False)

    def queue_lines(self, pending: list[dict]) -> None:
        for number, r in enumerate(pending, start=1):
            self.out.text(
                f"  [{number}] {r.get('hostname', '?'):<30} {r.get('ip', '?'):<16} "
                f"code: {r.get('code', '??????')}  {r.get('received', '?')}"
            )

    def command(self, line: str) -> str | None:
        if not line:
            return None
        if line in ("quit", "q"):
            return "quit"
        pending = self.queue.pending()
        self.announced |= {str(r.get("id")) for r in pending}
        if line in ("list", "l"):
            self.prompt(pending)
        elif line in ("s", "skip"):
            self.out.text("Skipped; the request stays pending.")
        elif line.lower() in ("a", "d"):
            if len(pending) == 1:
                self.decide(line.lower(), pending[0])
            elif not pending:
                self.out.text("No pending requests.")
            else:
                self.out.text(
                    f"Several requests are pending: use {line.lower()}1, {line.lower()}2, ..."
                )
                self.queue_lines(pending)
        elif line[:1] in ("a", "d") and line[1:].isdigit():
            number = int(line[1:])
            if 1 <= number <= len(pending):
                self.decide(line[0], pending[number - 1])
            else:
                self.out.text(f"No request number {number}.")
        else:
            self.out.text(f"Unknown command '{line}'. Commands: a, d, s, a<N>, d<N>, list, quit.")
        return None

    def decide(self, verb: str, request: dict) -> None:
        from ..dispatcher import pairing_decide

        reqid = str(request.get("id"))
        try:
            if verb == "a":
                for line in approval_lines(
                    pairing_decide.approve(self.queue, self.settings, reqid)
                ):
                    self.out.text(line)
            else:
                pairing_decide.deny(self.queue, reqid)
                self.out.text(f"Denied request '{reqid}' from '{request.get('hostname', '?')}'.")
        except CtrlExecError as exc:
            self.out.text(f"{'Approve' if verb == 'a' else 'Deny'} failed: {exc}")
        self.out.text("Waiting for the next request... ('quit' to stop)")


def request_block(r: dict) -> list[str]:
    return [
        f"Pairing request from {r.get('hostname', '?')} ({r.get('ip', '?')}) - ID: {r.get('id')}",
        f"  Code:        {r.get('code', '??????')}   (must match the code the agent printed)",
        f"  Received:    {r.get('received', '?')}",
        f"  Source:      {r.get('source_ip', '?')}   reverse DNS: {reverse_text(r)}",
    ]


def _window(ctx: Context, settings) -> int:
    value = ctx.args.timeout if ctx.args.timeout is not None else settings.pairing_timeout
    if not 1 <= value <= MAX_WINDOW:
        raise CtrlExecError(f"--timeout must be between 1 and {MAX_WINDOW} seconds")
    return value


def _plan(ctx: Context, settings):
    from pathlib import Path

    from ..dispatcher.pairing_mode import Plan, check_identity
    from ..dispatcher.pairing_server import ListenerSettings

    window = _window(ctx, settings)
    check_identity(settings.cert, settings.key)
    port = ctx.args.port
    if not 0 <= port <= 65535:
        raise CtrlExecError("--port must be between 0 and 65535")
    rate = (
        None
        if settings.pairing_rate_limit_disable
        else Rule.parse(settings.pairing_rate_limit_volume)
    )
    listener = ListenerSettings(
        cert=settings.cert,
        key=settings.key,
        port=port,
        bind=ctx.args.bind,
        max_queue=settings.pairing_max_queue,
        rate=rate,
        request_timeout=settings.pairing_request_timeout,
        revoked_keys=str(Path(settings.ca_dir) / "revoked-keys"),
    )
    return Plan(
        listener=listener,
        window=window,
        pidfile=ctx.layout.pairing_pidfile,
        pairing_dir=Path(ctx.layout.pairing_dir),
        registry_dir=Path(settings.registry_dir),
        ca_dir=Path(settings.ca_dir),
        state_settings=settings,
    )


def _foreground(ctx: Context, settings, plan, interactive: bool) -> int:
    from ..dispatcher import pairing_mode
    from ..dispatcher.pairing_decide import open_queue

    out = Output(ctx.json)
    console = None
    operator = None
    if interactive:
        console = Console(
            out, settings, open_queue(plan.pairing_dir, plan.registry_dir, plan.state_settings)
        )
        operator = pairing_mode.Operator(sys.stdin.fileno(), console.line, console.notice_new)

    def on_listening(listening) -> None:
        ending = "Ctrl-C or 'quit' to stop." if console else "Ctrl-C to stop."
        out.text(
            f"Pairing mode active on port {listening.port} "
            f"(auto-stops in {listening.window}s). {ending}"
        )
        out.text(f"CA fingerprint (SHA-256): {listening.ca_fingerprint}")
        if not console:
            out.text(
                "Use 'ced list-requests' to see pending requests, "
                "then 'ced approve <reqid>' or 'ced deny <reqid>'."
            )
        out.event(
            status="listening",
            port=listening.port,
            pid=listening.pid,
            timeout=listening.window,
            ca_fingerprint=listening.ca_fingerprint,
        )
        if console:
            out.text("Waiting for pairing requests...")

    why = pairing_mode.serve(
        plan,
        on_listening=on_listening,
        on_queued=None if console else _announcer(out),
        operator=operator,
    )
    if why == pairing_mode.TIMEOUT:
        out.text(f"\nPairing mode timed out after {plan.window}s. Stopped.")
    else:
        out.text("\nPairing mode stopped.")
    out.event(status="stopped", reason=why)
    return 0


def _announcer(out: Output):
    def announce(record: dict) -> None:
        out.text(
            f"Pairing request queued: {record['hostname']} ({record['ip']}) - "
            f"ID: {record['id']}  code {record['code']}"
        )
        out.event(
            status="queued",
            reqid=record["id"],
            hostname=record["hostname"],
            ip=record["ip"],
            code=record["code"],
        )

    return announce


def _start(ctx: Context, plan) -> int:
    from ..dispatcher import pairing_mode

    started = pairing_mode.start(plan)
    if ctx.json:
        ctx.emit_json({"ok": 1, "pid": started.pid, "port": started.port, "timeout": plan.window})
    else:
        ctx.out(
            f"Pairing mode started in the background on port {started.port} (PID {started.pid})."
        )
        ctx.out(
            f"It stops by itself after {plan.window}s; to stop it sooner: ced pairing-mode stop"
        )
    return 0


def _stop(ctx: Context) -> int:
    from ..dispatcher import pairing_mode

    stopped = pairing_mode.stop(ctx.layout.pairing_pidfile)
    if ctx.json:
        report: dict = {"ok": 1 if stopped.stopped else 0, "pid": stopped.pid}
        if not stopped.stopped:
            report["error"] = f"sent a stop to PID {stopped.pid}, but it is still running"
        ctx.emit_json(report)
        return 0 if stopped.stopped else 1
    if stopped.pid is None:
        ctx.out("No pairing mode is running.")
        return 0
    if not stopped.stopped:
        ctx.err(f"Sent a stop to PID {stopped.pid}, but it is still running.")
        return 1
    ctx.out(f"Pairing mode stopped (was PID {stopped.pid}); the pairing port is closed.")
    return 0


def pairing_mode(ctx: Context) -> int:
    if ctx.args.action == "stop":
        return _stop(ctx)
    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    plan = _plan(ctx, settings)
    if ctx.args.action == "start":
        return _start(ctx, plan)
    # --json is for programs: no prompts, one JSON object per line
    return _foreground(ctx, settings, plan, interactive=sys.stdin.isatty() and not ctx.json)


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "pairing-mode",
        pairing_mode,
        "open the pairing port and approve agents",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog="Examples:\n"
        "  ced pairing-mode                 # interactive, on a terminal\n"
        "  ced pairing-mode start --timeout 120\n"
        "  ced list-requests; ced approve <reqid>\n"
        "  ced pairing-mode stop",
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=("start", "stop"),
        help="start: run detached in the background; stop: end it",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        metavar="SECONDS",
        help="close the port after this long, 1-600 (default: pairing_timeout, 600)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=7444,
        help="pairing port (default: %(default)s; 0 picks a free one)",
    )
    parser.add_argument(
        "--bind",
        default="",
        metavar="ADDRESS",
        help="listen on this address only (default: every interface)",
    )
