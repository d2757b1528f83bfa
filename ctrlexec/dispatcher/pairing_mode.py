"""Pairing mode (`ced pairing-mode`): the pairing port open for a while.

One pairing mode runs per dispatcher host: it holds `pairing-mode.lock`
for its whole life and writes its PID to `pairing-mode.pid`, so `stop` (and
a second `start`) find it. It ends when its window closes, on SIGTERM,
SIGINT or SIGHUP, or when the operator quits; the agents still waiting are
then told `approval timeout`. Every start and end is one log line.

`serve` runs it in this process - with the operator's terminal when given
an `Operator`, whose lines are read in the same loop that accepts
connections - and `start` runs it in a detached process and returns once
that process listens (or says why it cannot). Nothing here prints: the
caller learns what happens through callbacks and return values.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import log
from ..detach import detach
from ..errors import StateError
from ..store import FileLock, atomic_write_text, ensure_dir, is_locked, read_state, remove
from . import pairing_server
from .pairing_server import ListenerSettings

# The longest window, in seconds (0.12's pairing timeout).
MAX_WINDOW = 600
# How long `stop` waits for the running pairing mode to let go of its lock.
STOP_WAIT = 10.0
# How long `start` waits for the detached pairing mode to listen.
START_WAIT = 30.0
# The longest line the operator may type; longer input is dropped.
MAX_COMMAND = 4096

TIMEOUT = pairing_server.TIMEOUT
SIGNAL = pairing_server.SIGNAL
QUIT = pairing_server.QUIT


@dataclass(frozen=True)
class Plan:
    """Everything pairing mode needs, as plain values."""

    listener: ListenerSettings
    window: int  # seconds the port stays open
    pidfile: Path
    pairing_dir: Path
    registry_dir: Path
    ca_dir: Path
    state_settings: Any = None  # the dispatcher settings: which state backend


@dataclass(frozen=True)
class Listening:
    port: int
    pid: int
    window: int
    ca_fingerprint: str


@dataclass(frozen=True)
class Operator:
    """The operator's terminal. Each line typed goes to `on_line` (True
    ends pairing mode); `on_idle` runs about four times a second while the
    terminal is open, to show requests that arrived."""

    fd: int
    on_line: Callable[[str], bool]
    on_idle: Callable[[], None]


@dataclass(frozen=True)
class Started:
    pid: int
    port: int


@dataclass(frozen=True)
class Stopped:
    pid: int | None  # None: no pairing mode was running
    stopped: bool


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
            raise _already_running(self.running_pid()) from None
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


def _already_running(pid: int | None) -> StateError:
    return StateError(
        f"pairing mode is already running (PID {pid or '?'}); stop it with 'ced pairing-mode stop'"
    )


def check_identity(cert: str, key: str) -> None:
    """The dispatcher certificate and key the listener presents must exist."""
    for label, path in (("certificate", cert), ("key", key)):
        if not Path(path).exists():
            raise StateError(
                f"cannot start pairing mode: the dispatcher {label} {path} is "
                "missing; run 'ced setup-ctrl-exec' first"
            )


def ca_fingerprint(ca_dir: Path) -> str:
    """SHA-256 fingerprint of the CA, shown so agents can pin it."""
    from ..pki import ca

    paths = ca.CAPaths(Path(ca_dir))
    try:
        return ca.fingerprint(ca.read_ca_pem(paths))
    except ValueError:
        raise StateError(f"{paths.cert} is not a PEM certificate") from None


def serve(
    plan: Plan,
    *,
    on_listening: Callable[[Listening], None] = lambda listening: None,
    on_queued: Callable[[dict], None] | None = None,
    operator: Operator | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Run pairing mode here until its window closes (TIMEOUT), a signal
    (SIGNAL) or the operator quits (QUIT); returns which. `on_listening`
    comes once the port is open and signals are handled; `on_queued(record)`
    for each request queued (from the connection's thread)."""
    from .pairing_decide import open_queue

    fingerprint = ca_fingerprint(plan.ca_dir)
    queue = open_queue(plan.pairing_dir, plan.registry_dir, plan.state_settings)
    instance = Instance(plan.pidfile)
    instance.acquire()
    swept = queue.sweep_temporary()  # writes a crash left half done
    if swept:
        log.event("temp-sweep", log.INFO, COUNT=swept)
    try:
        listener = pairing_server.PairingListener(plan.listener, queue, on_queued=on_queued)
        try:
            port = listener.listen()
        except OSError as exc:
            raise StateError(
                f"cannot listen on port {plan.listener.port}: {exc.strerror or exc}"
            ) from None
        pid = os.getpid()

        def ready() -> None:
            log.event("pairing-mode-start", PORT=port, PID=pid, TIMEOUT=plan.window)
            on_listening(Listening(port, pid, plan.window, fingerprint))

        inputs: dict[int, Callable[[], str | None]] = {}
        on_idle = None
        if operator is not None:
            reader = CommandLines(operator)
            inputs[operator.fd] = reader.readable
            on_idle = reader.idle
        try:
            why = listener.serve(
                clock() + plan.window, on_ready=ready, inputs=inputs, on_idle=on_idle
            )
        finally:
            listener.close()  # waiting agents hear `approval timeout`
        if why == TIMEOUT:
            log.event("pairing-mode-timeout", PORT=port)
        else:
            log.event("pairing-mode-stop", PID=pid)
        return why
    finally:
        instance.release()


def start(plan: Plan) -> Started:
    """Run pairing mode in a detached process; return once it listens."""
    running = Instance(plan.pidfile).running_pid()
    if running:
        raise _already_running(running)
    ca_fingerprint(plan.ca_dir)  # report a missing CA here, not in the detached process

    def work(report: Callable[[str], None]) -> int:
        serve(plan, on_listening=lambda listening: report(str(listening.port)))
        return 0

    child = detach(work, ready_wait=START_WAIT)
    if child.ready is None or not child.ready.isdigit():
        raise StateError(child.error or "pairing mode did not start (see the log)")
    return Started(child.pid, int(child.ready))


def stop(pidfile: Path, wait: float = STOP_WAIT) -> Stopped:
    """Ask the running pairing mode to stop (SIGTERM) and wait until it has
    let go of its lock."""
    instance = Instance(pidfile)
    pid = instance.running_pid()
    if pid is None:
        remove(instance.pidfile)
        return Stopped(None, True)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and is_locked(instance.lockfile):
        time.sleep(0.05)
    return Stopped(pid, not is_locked(instance.lockfile))


class CommandLines:
    """Lines from the operator's terminal, bounded; after end of input no
    more idle calls (nobody can answer a prompt)."""

    def __init__(self, operator: Operator):
        self.operator = operator
        self.buffer = b""
        self.closed = False

    def readable(self) -> str | None:
        try:
            data = os.read(self.operator.fd, MAX_COMMAND)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.closed = True  # no more commands; keep listening until stopped
            return pairing_server.INPUT_CLOSED
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if self.operator.on_line(line.decode("utf-8", "replace").strip()):
                return QUIT
        if len(self.buffer) > MAX_COMMAND:
            self.buffer = b""
        return None

    def idle(self) -> None:
        if not self.closed:
            self.operator.on_idle()
