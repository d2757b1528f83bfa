"""The agent's side of the privileged executor: the same `run(ScriptJob) ->
ScriptResult` as the Runner, so synchronous and async runs go through it
unchanged when `executor_socket` is set.

One Unix-socket connection per script. The job names the script; the
executor decides the file, user and profile from its own configuration, so
the agent's resolved path is not sent. Transport failures become exit -1
with 0.12's texts in stderr (`executor unreachable: ...`, `executor write
failed: ...`, `executor closed before responding`, `truncated executor
response`). Output records are handed to the job's `on_output` as they
arrive (live output for `/run-stream`). Stopping the agent, or cancelling
one run (the job's `on_stoppable` gets the stop function), half-closes the
connection, which makes the executor kill that script.
"""

from __future__ import annotations

import socket
import threading
import time

from ..core import exec_frames
from ..errors import FrameError
from .output_budget import OutputBudget
from .runner import EXIT_NOT_STARTED, ScriptJob, ScriptResult

CONNECT_TIMEOUT = 5.0
# Beyond the script's own deadlines: the executor's start, its kill grace
# and the transfer of the result.
REPLY_MARGIN = 30.0
RECV_CHUNK = 65_536
# Room for the notes the runner appends to stderr beyond max_output.
NOTES_ROOM = 4096


def _half_close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already closed: the exchange is over


def _failure(text: str) -> ScriptResult:
    return ScriptResult(EXIT_NOT_STARTED, "", text + "\n")


class ExecutorClient:
    def __init__(self, path: str, clock=time.monotonic, budget: OutputBudget | None = None):
        self.path = path
        self.clock = clock
        self.budget = budget
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def running(self) -> int:
        with self._lock:
            return len(self._open)

    def release(self, result: ScriptResult) -> None:
        if self.budget is not None:
            self.budget.release(result.grant)

    def kill_all(self) -> int:
        """The agent is stopping: end every exchange's sending side. The
        executor reads that as "cancel", kills the script and still sends
        what it wrote, so each run ends with its output and exit 126."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            _half_close(conn)
        return len(conns)

    def run(self, job: ScriptJob) -> ScriptResult:
        try:
            frame = exec_frames.encode_request(
                exec_frames.ExecRequest(
                    job.reqid, job.dispatcher, job.script, job.stdin, tuple(job.argv[1:])
                )
            )
        except FrameError as exc:
            return _failure(f"executor: {exc}")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._open.add(conn)
        try:
            conn.settimeout(CONNECT_TIMEOUT)
            try:
                conn.connect(self.path)
            except OSError as exc:
                return _failure(f"executor unreachable: {exc.strerror or exc}")
            try:
                conn.sendall(frame)
            except OSError as exc:
                return _failure(f"executor write failed: {exc.strerror or exc}")
            if job.on_stoppable is not None:
                job.on_stoppable(lambda: _half_close(conn))
            return self._receive(conn, job)
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _receive(self, conn: socket.socket, job: ScriptJob) -> ScriptResult:
        parser = exec_frames.ResponseParser(job.max_output + NOTES_ROOM, job.on_output)
        deadline = self.clock() + job.timeout + job.stdin_timeout + REPLY_MARGIN
        end = None
        try:
            while end is None:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return _failure("executor did not answer in time")
                conn.settimeout(remaining)
                chunk = conn.recv(RECV_CHUNK)
                if not chunk:
                    break
                end = parser.feed(chunk)
        except FrameError as exc:
            return _failure(f"malformed executor response: {exc}")
        except TimeoutError:
            return _failure("executor did not answer in time")
        except OSError as exc:
            return _failure(f"executor connection failed: {exc.strerror or exc}")
        if end is None:
            if parser.received == 0:
                return _failure("executor closed before responding")
            return _failure("truncated executor response")
        grant = 0
        if self.budget is not None:
            grant = self.budget.acquire(len(parser.stdout) + len(parser.stderr))
        return ScriptResult(
            end.exit,
            parser.stdout.decode("utf-8", "replace"),
            parser.stderr.decode("utf-8", "replace"),
            end.timed_out,
            end.truncated,
            end.stdin_unwritten,
            grant,
        )
