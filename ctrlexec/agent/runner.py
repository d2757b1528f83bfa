"""Running one script: the only place the agent starts a script process.

Theory of operation. A script is started with execve on an argument list,
never through a shell and never through a PATH search, in a new session (its
own process group), with `/` as working directory and an environment reset
to 0.12's set: a fixed PATH plus HOME, LANG, LC_ALL, TZ, TERM, USER and
LOGNAME when the agent has them. One thread drives the three pipes with a
selector, so a script that fills stderr while we still write its stdin never
deadlocks:

- stdin gets the JSON context, then EOF. Writing stops at `stdin_timeout`
  (logged `stdin-timeout BYTES=<unwritten>`); the script keeps running, as
  0.12. A script that exits or closes stdin without reading is not an error.
- stdout and stderr are read concurrently to EOF. Each keeps at most
  `max_output` bytes; the rest is read and discarded (so the script never
  blocks on a full pipe) and a note saying how much was dropped is
  appended to stderr. Beyond SPILL_AFTER bytes a stream waits in an
  unlinked temporary file, and with an OutputBudget the finished output is
  turned into text only within it (output_budget.py).
- at `timeout` the whole process group gets SIGKILL and a note is appended
  to stderr; the exit is then 126 (killed by a signal). Descendants that
  left the group and still hold the pipes get a short grace, then the pipes
  are closed on them.

Exit codes (0.12's Runner): the script's status; 126 when a signal ended
it; 127 when the exec itself failed (missing file, not executable); -1 when
no process could be started (fork or pipe failure), with the reason in
stderr.

Entry points for any code that runs a script on the agent (the synchronous
`/run` today; an async runner can call them from its own thread or
process): `job_for(resolved, args, stdin, config)` builds the job of an
allowlisted script under the agent's limits, `run_script(job)` runs it to
completion and returns a ScriptResult (it never raises for anything the
script does). `Runner` remembers the process groups it started so a
stopping agent can end them.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Protocol, cast

from .. import log
from .output_budget import SPILL_AFTER, OutputBudget

if TYPE_CHECKING:
    from ..config.load import AgentConfig
    from .allowlist import Resolved

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INHERITED_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "TERM", "USER", "LOGNAME")

EXIT_SIGNALLED = 126
EXIT_EXEC_FAILED = 127
EXIT_NOT_STARTED = -1

# Pipe I/O granularity: one read drains a full Linux pipe buffer.
CHUNK = 65_536
# After a timeout kill, how long pipes held by processes outside the group
# may stay open before we stop reading them.
KILL_DRAIN_SECONDS = 2.0
NOTE_PREFIX = "ctrl-exec-agent: "
# Selector key data of a requester's socket (see Runner.run's `cancel`).
_CANCEL = object()


def script_environment(parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """0.12's script environment: PATH fixed, a few variables copied if set."""
    source = os.environ if parent is None else parent
    env = {"PATH": SAFE_PATH}
    for name in INHERITED_ENV:
        if name in source:
            env[name] = source[name]
    return env


@dataclass(frozen=True)
class ScriptJob:
    executable: str  # the file to execve
    argv: tuple[str, ...]  # argv[0] first
    stdin: bytes = b""
    timeout: float = 3600.0
    stdin_timeout: float = 10.0
    max_output: int = 4 * 1_048_576  # per stream
    env: Mapping[str, str] | None = None  # None: script_environment()
    cwd: str = "/"
    log_fields: Mapping[str, object] = field(default_factory=dict)  # e.g. SCRIPT, REQID
    # Who asked: the privileged executor re-derives the script from its name
    # and logs the request id and dispatcher.
    script: str = ""
    reqid: str = ""
    dispatcher: str = ""
    # Called in the child between fork and exec (the executor applies the
    # script's profile there); it must end the child itself on failure.
    preexec: Callable[[], None] | None = None
    # Called with the pid (= process group) once the script started; run
    # tracking (agent/jobs.py) uses it to signal the group.
    on_start: Callable[[int], None] | None = None
    # Called with a function that stops the run, when the script runs where
    # the agent cannot signal it (the privileged executor); run tracking
    # calls that function to cancel.
    on_stoppable: Callable[[Callable[[], None]], None] | None = None
    # Called with ("stdout"|"stderr", bytes) as the script writes, from the
    # thread that runs it (live output, agent/streaming.py); may block,
    # which holds the script back (back-pressure).
    on_output: Callable[[str, bytes], None] | None = None


@dataclass(frozen=True)
class ScriptResult:
    exit: int
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: tuple[str, ...] = ()  # "stdout", "stderr"
    stdin_unwritten: int = 0
    # Bytes of the OutputBudget this result holds until its holder calls
    # release(result) (after the reply is sent or the record written).
    grant: int = field(default=0, compare=False)


def job_for(
    resolved: Resolved,
    args: tuple[str, ...],
    stdin: bytes,
    config: AgentConfig,
    log_fields: Mapping[str, object] | None = None,
    reqid: str = "",
    dispatcher: str = "",
) -> ScriptJob:
    """The job for an allowlisted script under this agent's limits: its
    canonical file, argv[0] as the allowlist writes it, the per-script
    timeout (else `script_timeout`), `stdin_timeout`, `max_output_bytes`."""
    return ScriptJob(
        executable=resolved.executable,
        argv=(resolved.argv0, *args),
        stdin=stdin,
        timeout=resolved.entry.timeout or config.script_timeout,
        stdin_timeout=config.stdin_timeout,
        max_output=config.max_output_bytes,
        log_fields=dict(log_fields or {}),
        script=resolved.entry.name,
        reqid=reqid,
        dispatcher=dispatcher,
    )


def start_failure(exc: OSError, executable: str) -> tuple[int, str]:
    """Exit code and stderr text when Popen raised: the exec of the script
    failed (127), or no process could be made at all (-1)."""
    reason = exc.strerror or str(exc)
    if exc.filename == executable:
        return EXIT_EXEC_FAILED, f"{NOTE_PREFIX}cannot execute {executable}: {reason}\n"
    return EXIT_NOT_STARTED, f"{NOTE_PREFIX}cannot start script: {reason}\n"


def exit_code(returncode: int) -> int:
    return EXIT_SIGNALLED if returncode < 0 else returncode


class _Capture:
    """One stream's output: the first SPILL_AFTER bytes in memory, the rest
    (up to `cap`) in an unlinked temporary file, anything beyond counted."""

    def __init__(self, name: str, cap: int, on_output: Callable[[str, bytes], None] | None = None):
        self.name = name
        self.cap = cap
        self.data = bytearray()
        self.file: IO[bytes] | None = None
        self.size = 0
        self.dropped = 0
        self.on_output = on_output

    def add(self, chunk: bytes) -> None:
        if self.on_output is not None:
            self.on_output(self.name, chunk)
        room = self.cap - self.size
        keep = chunk[: max(room, 0)]
        self.dropped += len(chunk) - len(keep)
        if not keep:
            return
        if self.file is None and len(self.data) + len(keep) > SPILL_AFTER:
            self._spill()
        if self.file is not None:
            try:
                self.file.write(keep)
            except OSError as exc:  # the disk filled up: what does not fit is dropped
                log.event("output-spill-fail", log.WARNING, ERROR=exc.strerror or str(exc))
                self.dropped += len(keep)
                return
        else:
            self.data += keep
        self.size += len(keep)

    def _spill(self) -> None:
        try:
            spill = tempfile.TemporaryFile(prefix="ctrl-exec-output-")  # noqa: SIM115 (closed by close())
        except OSError as exc:  # no room for a file: keep it in memory (bounded by cap)
            log.event("output-spill-fail", log.WARNING, ERROR=exc.strerror or str(exc))
            return
        try:
            spill.write(self.data)
        except OSError as exc:
            log.event("output-spill-fail", log.WARNING, ERROR=exc.strerror or str(exc))
            spill.close()
            return
        self.file = spill
        self.data = bytearray()

    def text(self) -> str:
        if self.file is None:
            return self.data.decode("utf-8", "replace")
        try:
            self.file.seek(0)
            return self.file.read().decode("utf-8", "replace")
        finally:
            self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class ScriptExecutor(Protocol):
    """What runs scripts for the agent: this module's Runner, or the
    executor client when `executor_socket` is set."""

    def run(self, job: ScriptJob) -> ScriptResult: ...

    def release(self, result: ScriptResult) -> None: ...

    def kill_all(self) -> int: ...


class Runner:
    """Runs jobs; remembers the process groups it started. With a budget,
    finished output is turned into text only within it (output_budget.py);
    the caller gives it back with release(result)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, budget: OutputBudget | None = None
    ):
        self._clock = clock
        self.budget = budget
        self._lock = threading.Lock()
        self._groups: set[int] = set()

    def running(self) -> int:
        with self._lock:
            return len(self._groups)

    def release(self, result: ScriptResult) -> None:
        if self.budget is not None:
            self.budget.release(result.grant)

    def kill_all(self) -> int:
        """SIGKILL every running script's process group (agent shutdown)."""
        with self._lock:
            groups = list(self._groups)
        for group in groups:
            _kill_group(group)
        return len(groups)

    def run(self, job: ScriptJob, cancel: socket.socket | None = None) -> ScriptResult:
        """Run `job` to completion. With `cancel`, the script's process group
        is killed as soon as that socket reaches end of file (the requester
        went away)."""
        env = script_environment() if job.env is None else dict(job.env)
        try:
            proc = subprocess.Popen(
                list(job.argv),
                executable=job.executable,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=job.cwd,
                close_fds=True,
                start_new_session=True,
                preexec_fn=job.preexec,
            )
        except OSError as exc:
            code, text = start_failure(exc, job.executable)
            return ScriptResult(code, "", text)
        except ValueError as exc:  # e.g. NUL in a value: nothing was started
            return ScriptResult(EXIT_NOT_STARTED, "", f"{NOTE_PREFIX}cannot start script: {exc}\n")
        with self._lock:
            self._groups.add(proc.pid)
        try:
            if job.on_start is not None:
                job.on_start(proc.pid)
            return _Exchange(proc, job, self._clock, cancel, self.budget).run()
        finally:
            with self._lock:
                self._groups.discard(proc.pid)


def _close(fileobj: object) -> None:
    """Close a pipe registered with the selector (always a file object here)."""
    cast(IO[bytes], fileobj).close()


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Exchange:
    """The pipes of one running script, driven to completion."""

    def __init__(
        self,
        proc: subprocess.Popen,
        job: ScriptJob,
        clock: Callable[[], float],
        cancel: socket.socket | None = None,
        budget: OutputBudget | None = None,
    ):
        self.proc = proc
        self.cancel = cancel
        self.budget = budget
        self.job = job
        self.clock = clock
        self.out = _Capture("stdout", job.max_output, job.on_output)
        self.err = _Capture("stderr", job.max_output, job.on_output)
        self.selector = selectors.DefaultSelector()
        self.stdin_view = memoryview(job.stdin)
        self.written = 0
        self.stdin_open = True
        self.killed_at: float | None = None
        self.timed_out = False
        self.unwritten = 0

    def run(self) -> ScriptResult:
        start = self.clock()
        deadline = start + self.job.timeout
        stdin_deadline = start + self.job.stdin_timeout
        try:
            self._register()
            self._pump(deadline, stdin_deadline)
        finally:
            self._close_all()
        try:
            self._wait(deadline)
            grant = 0
            if self.budget is not None:
                grant = self.budget.acquire(self.out.size + self.err.size)
            return replace(self._result(), grant=grant)
        finally:
            self.out.close()
            self.err.close()

    def _register(self) -> None:
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        if self.job.stdin:
            os.set_blocking(self.proc.stdin.fileno(), False)
            self.selector.register(self.proc.stdin, selectors.EVENT_WRITE, None)
        else:
            self._close_stdin()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ, self.out)
        self.selector.register(self.proc.stderr, selectors.EVENT_READ, self.err)
        if self.cancel is not None:
            self.selector.register(self.cancel, selectors.EVENT_READ, _CANCEL)

    def _pipes_open(self) -> bool:
        return any(key.data is not _CANCEL for key in self.selector.get_map().values())

    def _pump(self, deadline: float, stdin_deadline: float) -> None:
        while self._pipes_open():
            now = self.clock()
            if self.stdin_open and now >= stdin_deadline:
                self.unwritten = len(self.stdin_view) - self.written
                log.event("stdin-timeout", log.WARNING, BYTES=self.unwritten, **self.job.log_fields)
                self._close_stdin()
            if self.killed_at is None and now >= deadline:
                self._kill()
            if self.killed_at is not None and now >= self.killed_at + KILL_DRAIN_SECONDS:
                return
            limit = deadline if self.killed_at is None else self.killed_at + KILL_DRAIN_SECONDS
            if self.stdin_open:
                limit = min(limit, stdin_deadline)
            for key, _ in self.selector.select(max(0.0, limit - now)):
                if key.data is None:
                    self._write_stdin()
                elif key.data is _CANCEL:
                    self._check_cancel()
                else:
                    self._read(key)

    def _write_stdin(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.written += os.write(
                self.proc.stdin.fileno(), self.stdin_view[self.written : self.written + CHUNK]
            )
        except BlockingIOError:
            return
        except OSError:  # the script closed its stdin or exited: stop writing
            self._close_stdin()
            return
        if self.written >= len(self.stdin_view):
            self._close_stdin()

    def _read(self, key: selectors.SelectorKey) -> None:
        try:
            chunk = os.read(key.fd, CHUNK)
        except OSError:
            chunk = b""
        if chunk:
            key.data.add(chunk)
            return
        self.selector.unregister(key.fileobj)
        _close(key.fileobj)

    def _check_cancel(self) -> None:
        assert self.cancel is not None
        try:
            data = self.cancel.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.selector.unregister(self.cancel)
        if not data and self.killed_at is None:
            log.event("run-cancel", log.WARNING, **self.job.log_fields)
            self.killed_at = self.clock()
            _kill_group(self.proc.pid)

    def _close_stdin(self) -> None:
        if not self.stdin_open:
            return
        self.stdin_open = False
        assert self.proc.stdin is not None
        try:
            self.selector.unregister(self.proc.stdin)
        except (KeyError, ValueError):
            pass  # never registered (empty stdin)
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def _close_all(self) -> None:
        self._close_stdin()
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            if key.data is not _CANCEL:  # the caller's socket stays the caller's
                _close(key.fileobj)
        self.selector.close()

    def _kill(self) -> None:
        self.timed_out = True
        self.killed_at = self.clock()
        _kill_group(self.proc.pid)

    def _wait(self, deadline: float) -> None:
        if self.killed_at is None:
            try:
                self.proc.wait(timeout=max(0.0, deadline - self.clock()))
                return
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc.wait()

    def _result(self) -> ScriptResult:
        notes = []
        if self.timed_out:
            notes.append(
                f"script timed out after {self.job.timeout:g} s; its process group was killed"
            )
        truncated = []
        for capture in (self.out, self.err):
            if capture.dropped:
                truncated.append(capture.name)
                notes.append(
                    f"{capture.name} truncated: {capture.dropped} bytes beyond the "
                    f"{capture.cap}-byte limit were discarded"
                )
        stderr = self.err.text()
        if notes:
            if stderr and not stderr.endswith("\n"):
                stderr += "\n"
            stderr += "".join(f"{NOTE_PREFIX}{note}\n" for note in notes)
        # A script that exited by itself before the kill keeps its status.
        return ScriptResult(
            exit_code(self.proc.returncode),
            self.out.text(),
            stderr,
            self.timed_out,
            tuple(truncated),
            self.unwritten,
        )


_default_runner = Runner()


def default_runner() -> Runner:
    return _default_runner


def run_script(job: ScriptJob, runner: Runner | None = None) -> ScriptResult:
    """Run one script to completion (see the module docstring). Never raises
    for anything the script does; the result carries the exit code."""
    return (runner or _default_runner).run(job)
