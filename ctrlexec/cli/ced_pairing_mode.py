"""`ced pairing-mode [start|stop]`: open the pairing port for a while.

Foreground on a terminal it is interactive: each request is shown with its
code and the operator types `a`, `d` or `s` (or `a2`, `d1`, `list`, `quit`
when several wait). Without a terminal it only listens; decisions come from
`ced approve` / `ced deny` in another shell. `start` runs the non-interactive
listener detached; `stop` ends it. Only one pairing mode runs at a time: it
holds `pairing-mode.lock` and writes its PID to `pairing-mode.pid`.
"""

# The listener and the queue are imported when pairing mode runs, not when
# `ced` builds its parser for some other command.

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

from .. import log
from ..config.load import load_dispatcher
from ..core.ratelimit import Rule
from ..errors import CtrlExecError, StateError
from ..store import FileLock, atomic_write_text, ensure_dir, is_locked, read_state, remove
from .ced_pairing import approval_lines, reverse_text
from .common import Context, add_command

MAX_WINDOW = 600
STOP_WAIT = 10.0
START_WAIT = 30.0


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


class Instance:
    """The one running pairing mode: a held lock plus a PID file."""

    def __init__(self, pidfile: Path):
        self.pidfile = pidfile
        self.lockfile = pidfile.with_name(pidfile.stem + ".lock")
        self._lock: FileLock | None = None

    def acquire(self) -> None:
        ensure_dir(self.pidfile.parent, 0o770)
        lock = FileLock(self.lockfile, 0o660)
        try:
            lock.acquire(blocking=False)
        except BlockingIOError:
            raise StateError(
                f"pairing mode is already running (PID {self.running_pid() or '?'}); "
                "stop it with 'ced pairing-mode stop'"
            ) from None
        self._lock = lock
        atomic_write_text(self.pidfile, f"{os.getpid()}\n", 0o644)

    def release(self) -> None:
        remove(self.pidfile)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def running_pid(self) -> int | None:
        if not is_locked(self.lockfile):
            return None
        try:
            text = read_state(self.pidfile, 64).decode("ascii", "replace").strip()
        except (FileNotFoundError, StateError):
            return None
        return int(text) if text.isdigit() else None


class Console:
    """The interactive prompt (operations.md §2.2.1)."""

    def __init__(self, out: Output, settings, queue):
        self.out = out
        self.settings = settings
        self.queue = queue
        self.announced: set[str] = set()

    def run(self, stop: threading.Event, deadline: float) -> str:
        self.out.text("Waiting for pairing requests...")
        fd = sys.stdin.fileno()
        buffer = b""
        eof = False
        while True:
            if stop.is_set():
                return "signal"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            if eof:
                stop.wait(min(0.25, remaining))
                continue
            try:
                ready, _, _ = select.select([fd], [], [], min(0.25, remaining))
            except InterruptedError:
                continue
            if not ready:
                self.notice_new()
                continue
            data = os.read(fd, 4096)
            if not data:
                eof = True  # no more commands; keep listening until stopped
                continue
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if self.command(line.decode("utf-8", "replace").strip()) == "quit":
                    return "quit"

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


def _listener_settings(ctx: Context, settings):
    from ..dispatcher.pairing_server import ListenerSettings

    for label, path in (("certificate", settings.cert), ("key", settings.key)):
        if not Path(path).exists():
            raise StateError(
                f"cannot start pairing mode: the dispatcher {label} {path} is "
                "missing; run 'ced setup-ctrl-exec' first"
            )
    port = ctx.args.port
    if not 0 <= port <= 65535:
        raise CtrlExecError("--port must be between 0 and 65535")
    rate = (
        None
        if settings.pairing_rate_limit_disable
        else Rule.parse(settings.pairing_rate_limit_volume)
    )
    return ListenerSettings(
        cert=settings.cert,
        key=settings.key,
        port=port,
        bind=ctx.args.bind,
        max_queue=settings.pairing_max_queue,
        rate=rate,
        request_timeout=settings.pairing_request_timeout,
    )


def _fingerprint(settings) -> str:
    from ..pki import ca

    paths = ca.CAPaths(Path(settings.ca_dir))
    try:
        return ca.fingerprint(ca.read_ca_pem(paths))
    except ValueError:
        raise StateError(f"{paths.cert} is not a PEM certificate") from None


def serve(ctx: Context, settings, listening, window: int, interactive: bool, ready=None) -> int:
    from ..dispatcher.pairing_decide import open_queue
    from ..dispatcher.pairing_server import PairingListener

    instance = Instance(ctx.layout.pairing_pidfile)
    out = Output(ctx.json)
    fingerprint = _fingerprint(settings)
    queue = open_queue(ctx.layout.pairing_dir, settings.registry_dir)
    instance.acquire()
    swept = queue.sweep_temporary()
    if swept:
        log.event("temp-sweep", log.INFO, COUNT=swept)
    try:
        console = Console(out, settings, queue) if interactive else None
        listener = PairingListener(listening, queue, on_queued=None if console else _announcer(out))
        try:
            port = listener.bind()
        except OSError as exc:
            raise StateError(
                f"cannot listen on port {listening.port}: {exc.strerror or exc}"
            ) from None
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: stop.set())
        log.event("pairing-mode-start", PORT=port, PID=os.getpid(), TIMEOUT=window)
        ending = "Ctrl-C or 'quit' to stop." if console else "Ctrl-C to stop."
        out.text(f"Pairing mode active on port {port} (auto-stops in {window}s). {ending}")
        out.text(f"CA fingerprint (SHA-256): {fingerprint}")
        if not console:
            out.text(
                "Use 'ced list-requests' to see pending requests, "
                "then 'ced approve <reqid>' or 'ced deny <reqid>'."
            )
        out.event(
            status="listening",
            port=port,
            pid=os.getpid(),
            timeout=window,
            ca_fingerprint=fingerprint,
        )
        if ready is not None:
            ready(port)
        thread = threading.Thread(target=listener.serve_forever, daemon=True, name="pair-accept")
        thread.start()
        deadline = time.monotonic() + window
        why = console.run(stop, deadline) if console else _wait(stop, deadline)
        listener.close()
        thread.join(2)
        if why == "timeout":
            log.event("pairing-mode-timeout", PORT=port)
            out.text(f"\nPairing mode timed out after {window}s. Stopped.")
        else:
            log.event("pairing-mode-stop", PID=os.getpid())
            out.text("\nPairing mode stopped.")
        out.event(status="stopped", reason=why)
        return 0
    finally:
        instance.release()


def _wait(stop: threading.Event, deadline: float) -> str:
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        stop.wait(min(0.5, remaining))
    return "signal"


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


def _start_background(ctx: Context, settings, listening, window: int) -> int:
    instance = Instance(ctx.layout.pairing_pidfile)
    running = instance.running_pid()
    if running:
        raise StateError(
            f"pairing mode is already running (PID {running}); stop it with 'ced pairing-mode stop'"
        )
    _fingerprint(settings)  # report a missing CA here, not in the detached child
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the detached listener
        os.close(read_end)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        code = 1
        try:
            code = serve(
                ctx,
                settings,
                listening,
                window,
                interactive=False,
                ready=lambda port: os.write(write_end, f"ok {port}\n".encode()),
            )
        except CtrlExecError as exc:
            os.write(write_end, f"error {exc}\n".encode())
            code = exc.exit_code
        except BaseException as exc:
            os.write(write_end, f"error {type(exc).__name__}: {exc}\n".encode())
        os._exit(code)
    os.close(write_end)
    answer = _read_line(read_end, START_WAIT)
    os.close(read_end)
    if not answer.startswith("ok "):
        raise StateError(
            answer[6:]
            if answer.startswith("error ")
            else "pairing mode did not start (see the log)"
        )
    port = int(answer.split()[1])
    if ctx.json:
        ctx.emit_json({"ok": 1, "pid": pid, "port": port, "timeout": window})
    else:
        ctx.out(f"Pairing mode started in the background on port {port} (PID {pid}).")
        ctx.out(f"It stops by itself after {window}s; to stop it sooner: ced pairing-mode stop")
    return 0


def _read_line(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def _stop(ctx: Context) -> int:
    instance = Instance(ctx.layout.pairing_pidfile)
    pid = instance.running_pid()
    if pid is None:
        remove(instance.pidfile)
        ctx.out("No pairing mode is running.")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline and is_locked(instance.lockfile):
        time.sleep(0.05)
    if is_locked(instance.lockfile):
        ctx.err(f"Sent a stop to PID {pid}, but it is still running.")
        return 1
    ctx.out(f"Pairing mode stopped (was PID {pid}); the pairing port is closed.")
    return 0


def pairing_mode(ctx: Context) -> int:
    if ctx.args.action == "stop":
        return _stop(ctx)
    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    window = _window(ctx, settings)
    listening = _listener_settings(ctx, settings)
    if ctx.args.action == "start":
        return _start_background(ctx, settings, listening, window)
    # --json is for programs: no prompts, one JSON object per line
    return serve(ctx, settings, listening, window, interactive=sys.stdin.isatty() and not ctx.json)


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
