"""`executor serve`: the privileged executor on its Unix socket.

Theory of operation. The main process (root) owns the listening socket and
does nothing but accept, check the peer and fork, so it stays
single-threaded: a forked child may then safely run code between fork and
exec (privdrop.py). Per connection, in this order:

1. The peer's credentials (SO_PEERCRED): only the agent's user or root may
   ask; anyone else gets one refusal record and the connection closes
   (`exec-peer-deny`). The socket file is also 0600 and owned by the agent's
   user, so other users normally cannot even connect.
2. At most MAX_HANDLERS requests at once; beyond that the request is
   refused at once with `executor busy` (the agent reports exit -1).
3. A forked handler process reads one request frame (core/exec_frames.py:
   bounded length, read within REQUEST_READ_SECONDS), re-reads agent.toml and
   scripts.toml, decides (decision.py), runs the script with its profile
   applied in the script's child, and sends its output as it is written
   (at most the script's output limit per stream), then the end record. If
   the agent goes away or half-closes the connection (end of file on the
   socket: the agent is stopping, or a dispatcher cancelled the run) the
   script's process group is killed and what it wrote is still sent.
   SIGTERM to a handler kills its script.

Nothing in a request chooses a path, a user or a profile: it names a
script, and the executor's own reading of the configuration decides. A
request that breaks the framing rules is answered with
`executor: malformed request (...)` and exit -1, and nothing runs.

Signals to the main process: SIGHUP is logged (the configuration is read
per request anyway), SIGTERM/SIGINT stop accepting, remove the socket and
give running handlers SHUTDOWN_GRACE seconds before they are told to stop.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import socket
import stat
import struct
import time
from pathlib import Path

from .. import log
from ..agent.runner import Runner, ScriptJob, script_environment
from ..config.paths import Layout
from ..core import exec_frames
from ..errors import ConfigError, ExecutorRefused, FrameError, ProfileError
from ..netio import received_signals
from . import decision as decisions
from . import privdrop, rootonly

LISTEN_BACKLOG = 64
# Handler processes at once: the agent's max_children plus its async jobs.
MAX_HANDLERS = 512
# A request must arrive whole within this time.
REQUEST_READ_SECONDS = 10.0
# Sending the result: a peer that stops reading is dropped after this.
SEND_TIMEOUT_SECONDS = 30.0
# Sending live output: longer than the agent holds a script back for a
# dispatcher that does not read (agent/streaming.py, 30 s), so the agent
# always gives up on its reader first and reads on, and the run keeps its
# real result.
LIVE_SEND_SECONDS = 60.0
SHUTDOWN_GRACE = 10.0
RECV_CHUNK = 65_536
SOCKET_MODE = 0o600
_PEERCRED = struct.Struct("3i")


def agent_identity(user: str) -> tuple[str, int, int]:
    """(name, uid, gid) of the agent's user; ConfigError when unknown."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise ConfigError(f"agent user {user!r} does not exist", key="--agent-user") from None
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def bind_socket(path: Path, owner_uid: int, owner_gid: int) -> socket.socket:
    """The listening socket at `path`: 0600, owned by the agent's user. A
    stale socket is replaced; any other file there is an error, and so is a
    directory that anyone but root may change (rootonly.py)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    rootonly.check_socket_directory(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise ConfigError(f"{path} exists and is not a socket", key="executor_socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never reachable by others, even for a moment
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chown(path, owner_uid, owner_gid)
    os.chmod(path, SOCKET_MODE)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)


class ExecutorServer:
    def __init__(
        self,
        socket_path: Path,
        agent_user: str,
        layout: Layout,
        agent_toml: Path | None,
        scripts_toml: Path | None,
    ):
        self.socket_path = socket_path
        self.agent_name, self.agent_uid, self.agent_gid = agent_identity(agent_user)
        self.layout = layout
        self.agent_toml = agent_toml
        self.scripts_toml = scripts_toml
        self.handlers: set[int] = set()
        self._listener: socket.socket | None = None
        self._stopping = False

    def listen(self) -> None:
        privdrop.prepare()
        self._listener = bind_socket(self.socket_path, self.agent_uid, self.agent_gid)

    def serve(self) -> None:
        assert self._listener is not None
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, _note_signal)
        log.event(
            "exec-start",
            log.INFO,
            SOCKET=str(self.socket_path),
            AGENT_USER=self.agent_name,
            PID=os.getpid(),
        )
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(wake_r, selectors.EVENT_READ, None)
                selector.register(self._listener, selectors.EVENT_READ, self._listener)
                while not self._stopping:
                    for key, _ in selector.select(1.0):
                        if key.data is None:
                            self._signals(wake_r)
                        elif not self._stopping:
                            self._accept()
                    self._reap()
        finally:
            self._listener.close()
            with contextlib.suppress(OSError):
                self.socket_path.unlink()
            self._drain()
            signal.set_wakeup_fd(-1)
            wake_r.close()
            wake_w.close()

    def _signals(self, wake: socket.socket) -> None:
        for number in received_signals(wake):
            if number == signal.SIGHUP:
                log.event("exec-reload", log.INFO, MSG="configuration is read per request")
            elif number in (signal.SIGTERM, signal.SIGINT):
                self._stopping = True

    def _reap(self) -> None:
        for pid in list(self.handlers):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.handlers.discard(pid)

    def _drain(self) -> None:
        log.event("exec-stop", log.INFO, ACTIVE=len(self.handlers))
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self.handlers and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in self.handlers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in list(self.handlers):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.event("exec-accept-error", log.ERR, ERROR=exc.strerror or str(exc))
                return
            try:
                self._admit(conn)
            finally:
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        conn.settimeout(SEND_TIMEOUT_SECONDS)
        pid, uid, _ = peer_credentials(conn)
        if uid not in (0, self.agent_uid):
            log.event("exec-peer-deny", log.WARNING, UID=uid, PID=pid)
            _send_quietly(conn, exec_frames.encode_failure("executor: peer not allowed"))
            return
        self._reap()
        if len(self.handlers) >= MAX_HANDLERS:
            log.event("exec-busy", log.WARNING, MAX=MAX_HANDLERS)
            _send_quietly(conn, exec_frames.encode_failure("executor: executor busy"))
            return
        try:
            child = os.fork()
        except OSError as exc:
            log.event("exec-fork-fail", log.ERR, ERROR=exc.strerror or str(exc))
            _send_quietly(conn, exec_frames.encode_failure("executor: cannot start a handler"))
            return
        if child:
            self.handlers.add(child)
            return
        # The handler process.
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            assert self._listener is not None
            self._listener.close()
            Handler(self, conn).run()
            status = 0
        except BaseException as exc:  # a handler must never return into the accept loop
            with contextlib.suppress(BaseException):
                log.event("exec-error", log.ERR, ERROR=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            os._exit(status)


def _note_signal(signum, frame) -> None:
    """Installed so the signal is delivered; the wake-up socket carries it."""


def _send_quietly(conn: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(data)


class LiveOutput:
    """The script's output sent as it is written, from the runner's thread:
    at most `cap` bytes per stream (the rest the runner counts as dropped).
    A write that fails or stalls past LIVE_SEND_SECONDS stops the live
    sending; the run goes on (the agent has gone or stopped reading)."""

    def __init__(self, conn: socket.socket, cap: int):
        self.conn = conn
        self.cap = cap
        self.sent = {"stdout": 0, "stderr": 0}
        self.stderr = bytearray()  # what was sent of stderr (its notes follow it)
        self.failed = False

    def output(self, name: str, chunk: bytes) -> None:
        keep = chunk[: max(self.cap - self.sent[name], 0)]
        if not keep or self.failed:
            return
        self.sent[name] += len(keep)
        if name == "stderr":
            self.stderr += keep
        kind = exec_frames.KIND_STDOUT if name == "stdout" else exec_frames.KIND_STDERR
        try:
            self.conn.settimeout(LIVE_SEND_SECONDS)
            self.conn.sendall(exec_frames.encode_output(kind, keep))
        except OSError:
            self.failed = True

    def rest_of_stderr(self, stderr: str) -> str:
        """What the result's stderr adds to what was sent: the runner's notes."""
        sent = self.stderr.decode("utf-8", "replace")
        return stderr[len(sent) :] if stderr.startswith(sent) else ""


class Handler:
    """One request, in its own process."""

    def __init__(self, server: ExecutorServer, conn: socket.socket):
        self.server = server
        self.conn = conn
        self.runner = Runner()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._terminate)
        try:
            request = self._read_request()
        except FrameError as exc:
            log.event("exec-reject", log.WARNING, REASON=str(exc)[:200])
            self._send(exec_frames.encode_failure(f"executor: malformed request ({exc})\n"))
            return
        except TimeoutError:
            reason = f"request not received within {REQUEST_READ_SECONDS:g} s"
            log.event("exec-reject", log.WARNING, REASON=reason)
            self._send(exec_frames.encode_failure(f"executor: malformed request ({reason})\n"))
            return
        except OSError as exc:
            log.event("exec-reject", log.WARNING, REASON=exc.strerror or str(exc))
            return
        fields = {
            "SCRIPT": request.script,
            "REQID": request.reqid[:128],
            "DISPATCHER": request.dispatcher[:128] or "(none)",
        }
        try:
            decided = decisions.decide(
                self.server.layout,
                self.server.agent_toml,
                self.server.scripts_toml,
                request.script,
                self.server.agent_name,
            )
            plan = privdrop.plan_for(decided)
        except ExecutorRefused as exc:
            log.event("exec-deny", log.WARNING, REASON=str(exc)[:200], **fields)
            self._send(exec_frames.encode_failure(f"executor: {exc.reason}\n"))
            return
        except ProfileError as exc:
            log.event("exec-deny", log.WARNING, REASON=str(exc)[:200], **fields)
            self._send(exec_frames.encode_failure(f"executor: {exc}\n"))
            return
        env = script_environment()
        env.update(
            HOME=decided.identity.home,
            USER=decided.identity.name,
            LOGNAME=decided.identity.name,
        )
        live = LiveOutput(self.conn, decided.max_output)
        job = ScriptJob(
            executable=decided.path,
            argv=(decided.argv0, *request.args),
            stdin=request.stdin,
            timeout=decided.timeout,
            stdin_timeout=decided.stdin_timeout,
            max_output=decided.max_output,
            env=env,
            log_fields=fields,
            script=request.script,
            reqid=request.reqid,
            dispatcher=request.dispatcher,
            preexec=privdrop.child_setup(plan),
            on_output=live.output,
        )
        result = self.runner.run(job, cancel=self.conn)
        log.event(
            "exec-run",
            log.INFO,
            PROFILE=decided.profile.name,
            USER=decided.identity.name,
            EXIT=result.exit,
            **fields,
        )
        if live.failed:
            return  # nobody reads: the connection closes, the agent sees a truncated reply
        self._send(
            exec_frames.encode_output(
                exec_frames.KIND_STDERR, live.rest_of_stderr(result.stderr).encode("utf-8")
            )
            + exec_frames.encode_end(
                exec_frames.ExecEnd(
                    result.exit, result.timed_out, result.truncated, result.stdin_unwritten
                )
            )
        )

    def _terminate(self, signum, frame) -> None:
        self.runner.kill_all()

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.conn.settimeout(remaining)
            chunk = self.conn.recv(min(RECV_CHUNK, size - len(chunks)))
            if not chunk:
                raise FrameError(
                    f"truncated request: {len(chunks)} of {size} bytes before end of file"
                )
            chunks += chunk
        return bytes(chunks)

    def _read_request(self) -> exec_frames.ExecRequest:
        deadline = time.monotonic() + REQUEST_READ_SECONDS
        head = self._read_exactly(4, deadline)
        body = self._read_exactly(exec_frames.request_length(head), deadline)
        return exec_frames.decode_request(body)

    def _send(self, data: bytes) -> None:
        self.conn.settimeout(SEND_TIMEOUT_SECONDS)
        try:
            self.conn.sendall(data)
            self.conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the agent went away: nobody to tell


def run(
    layout: Layout,
    agent_toml: Path | None,
    scripts_toml: Path | None,
    socket_path: Path | None,
    agent_user: str,
    configure_logging=None,
) -> None:
    """`executor serve`: check, bind, serve until SIGTERM. ConfigError (exit
    78) for anything that stops it serving safely. `configure_logging(config)`
    is called once the configuration is known to be readable."""
    from ..config.load import load_agent, load_allowlist

    if os.geteuid() != 0:
        raise ConfigError(
            "the executor must run as root: it switches users, capabilities and mounts"
        )
    config = load_agent(layout, agent_toml)
    if configure_logging is not None:
        configure_logging(config)
    # The files must be usable now; they are read again for every request.
    load_allowlist(layout, scripts_toml, config.profiles)
    try:
        decisions.check_configuration(layout, agent_toml, scripts_toml)
    except ExecutorRefused as exc:
        raise ConfigError(
            f"refusing to serve: {exc.detail}; whoever may change agent.toml or "
            "scripts.toml chooses what runs as root"
        ) from None
    if socket_path is None:
        socket_path = Path(config.executor_socket or layout.executor_socket)
    server = ExecutorServer(socket_path, agent_user, layout, agent_toml, scripts_toml)
    try:
        server.listen()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {socket_path}: {exc.strerror or exc}", key="executor_socket"
        ) from None
    server.serve()
