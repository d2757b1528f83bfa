"""Containment of one external call (an auth hook, a script) and of everything it starts.

Theory of operation. Killing a child's process group is not enough: any
descendant can call setsid() (or setpgid()) and leave the group, and it then
outlives the kill. Each call therefore gets a container that follows every
descendant, whatever session or group it moves to:

- **cgroup** (preferred). When this process sits in a cgroup v2 directory it
  may write to (root, or a unit with `Delegate=yes` under systemd), each call
  gets a child cgroup `ctrl-exec-<pid>-<n>`. The child enters it between fork
  and exec (before any privilege drop), so nothing it starts can be outside.
  A kill is one write of "1" to `cgroup.kill` (Linux 5.14+), which the kernel
  applies to every member atomically, forks in flight included. When the
  call ends by itself, processes it left behind on purpose (a daemon a
  script started, as 0.12 allows) are moved back to this process's own
  cgroup, exactly where they would be without containment, and the call's
  cgroup is removed.
- **sweep** (fallback: no cgroup v2, no write access, or forced with
  CTRL_EXEC_CONTAINMENT=sweep). The call's environment carries a random
  marker (CTRL_EXEC_CALL=<128-bit hex>). A kill sends SIGKILL to the process
  group, then repeats until nothing is found: every process whose initial
  environment (/proc/<pid>/environ) holds the marker, and every live
  descendant of the call's first process. A process is signalled through a
  pidfd opened after it was identified and re-checked, so a recycled pid is
  never hit. Costs nothing until a kill; a kill reads /proc once per round.

What escapes the sweep (docs/security.md lists it): a process that both
cleared or replaced its environment and was re-parented away from the call
(double fork), and, for an unprivileged service, a process whose environment
it may not read (a setuid program the call started). The cgroup path has no
such gap; only a process with the privilege to move itself to another cgroup
can leave.

A child subreaper (prctl PR_SET_CHILD_SUBREAPER on the service) was weighed
and not taken: orphans would be re-parented to the multi-threaded service,
which must then reap pids it did not start, and a reaper racing
subprocess.Popen.wait() turns a hook's exit status into 0 (Python reports a
lost child as success): a denial would become an allowance.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import log

MARKER_ENV = "CTRL_EXEC_CALL"
MODE_ENV = "CTRL_EXEC_CONTAINMENT"  # "sweep" forces the fallback; anything else: auto
CGROUP_PREFIX = "ctrl-exec-"
# How long a kill waits for the kernel to empty a call's cgroup before it
# gives up removing the directory (the next start of the service sweeps it).
EMPTY_WAIT_SECONDS = 5.0
# Rounds of the fallback sweep: each round kills what it found; a call's
# processes cannot fork after SIGKILL, so a handful of rounds always settle.
SWEEP_ROUNDS = 20

_counter = itertools.count(1)
_probe_lock = threading.Lock()
_probed: tuple[bool, Path | None] = (False, None)


def _cgroup_v2_mount() -> tuple[str, str] | None:
    """(mount root, mount point) of the cgroup v2 hierarchy, if mounted."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if " - " not in line:
            continue
        after = line.split(" - ", 1)[1].split()
        if after and after[0] == "cgroup2":
            return fields[3], fields[4].replace("\\040", " ")
    return None


def own_cgroup_dir() -> Path | None:
    """This process's cgroup v2 directory, or None (no v2 hierarchy)."""
    mount = _cgroup_v2_mount()
    if mount is None:
        return None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rel = next((line[3:] for line in lines if line.startswith("0::")), None)
    if rel is None or rel.endswith(" (deleted)"):
        return None
    root, point = mount
    if root != "/":
        if rel != root and not rel.startswith(root.rstrip("/") + "/"):
            return None
        rel = rel[len(root) :] or "/"
    return Path(point + rel.rstrip("/")) if rel != "/" else Path(point)


def _cgroup_base() -> Path | None:
    """The directory under which calls get their cgroups, probed once."""
    global _probed
    with _probe_lock:
        if _probed[0]:
            return _probed[1]
        base = own_cgroup_dir()
        usable = (
            base is not None
            and os.access(base, os.W_OK)
            and os.access(base / "cgroup.procs", os.W_OK)
        )
        _probed = (True, base if usable else None)
        if base is not None and usable:
            _sweep_leftover_cgroups(base)
        return _probed[1]


def _sweep_leftover_cgroups(base: Path) -> None:
    """Remove empty call cgroups that a process no longer running left (a crash)."""
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for entry in entries:
        owner = entry.name[len(CGROUP_PREFIX) :].split("-")[0]
        if not entry.name.startswith(CGROUP_PREFIX) or not owner.isdigit():
            continue
        if os.path.exists(f"/proc/{owner}"):
            continue  # a live process's call (another service in this cgroup)
        try:
            entry.rmdir()
        except OSError:
            pass  # still populated, or not ours to remove


def mode() -> str:
    """'cgroup' or 'sweep': what a call started now would use."""
    if os.environ.get(MODE_ENV, "") == "sweep":
        return "sweep"
    return "cgroup" if _cgroup_base() is not None else "sweep"


class Call:
    """One contained call. Use: env(), preexec() for Popen, started(pid),
    then kill()/signal() as needed, and finish() once the first process was
    reaped."""

    def __init__(self, cgroup: Path | None):
        self.cgroup = cgroup
        self.marker = os.urandom(16).hex()
        self.pid: int | None = None
        self.killed = False
        self.signalled = False
        self.finished = False
        self._lock = threading.Lock()
        self._procs_fd: int | None = None

    @property
    def mode(self) -> str:
        return "cgroup" if self.cgroup is not None else "sweep"

    def env(self) -> dict[str, str]:
        """Variables the child's environment must carry (the sweep's marker)."""
        return {} if self.cgroup is not None else {MARKER_ENV: self.marker}

    def preexec(self, then: Callable[[], None] | None = None) -> Callable[[], None] | None:
        """The function to run in the child between fork and exec: enter the
        call's cgroup, then `then` (a privilege drop)."""
        if self.cgroup is None:
            return then
        fd = os.open(self.cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        self._procs_fd = fd

        def enter() -> None:
            os.write(fd, b"0")  # "0": the writing process itself
            if then is not None:
                then()

        return enter

    def started(self, pid: int | None) -> None:
        """The first process exists (None: it could not be started)."""
        self._close_procs_fd()
        self.pid = pid

    def _close_procs_fd(self) -> None:
        if self._procs_fd is not None:
            os.close(self._procs_fd)
            self._procs_fd = None

    def kill(self) -> None:
        """SIGKILL everything the call started, now."""
        with self._lock:
            self.killed = True
        if self.cgroup is not None:
            _write(self.cgroup / "cgroup.kill", b"1")
            return
        if self.pid is not None:
            _killpg(self.pid, signal.SIGKILL)
        _sweep(self.marker, self.pid, signal.SIGKILL, SWEEP_ROUNDS)

    def signal(self, signum: int) -> None:
        """Send `signum` to every process of the call (a cancel's SIGTERM).
        A call that was signalled ends with a kill of whatever is left."""
        if signum == signal.SIGKILL:
            self.kill()
            return
        with self._lock:
            self.signalled = True
        if self.pid is not None:
            _killpg(self.pid, signum)
        if self.cgroup is not None:
            for pid in _members(self.cgroup):
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass
        else:
            _sweep(self.marker, self.pid, signum, 1)

    def finish(self, kill: bool = False) -> None:
        """The call is over (its first process reaped). With `kill`, or after
        a kill or a signal, nothing it started survives; otherwise what it
        left running is released (cgroup: moved to this process's cgroup)."""
        self._close_procs_fd()
        with self._lock:
            if self.finished:
                return
            self.finished = True
        doomed = kill or self.killed or self.signalled
        if self.cgroup is None:
            if doomed:
                # The first process is reaped: its pid (and group id) may be
                # reused already, so only the marker finds what is left.
                _sweep(self.marker, None, signal.SIGKILL, SWEEP_ROUNDS)
            return
        if doomed:
            _write(self.cgroup / "cgroup.kill", b"1")
        else:
            _release(self.cgroup)
        if _wait_empty(self.cgroup, EMPTY_WAIT_SECONDS):
            try:
                self.cgroup.rmdir()
            except OSError as exc:
                log.event("contain-error", log.WARNING, CGROUP=self.cgroup.name, ERROR=exc.strerror)
        else:
            log.event("contain-error", log.WARNING, CGROUP=self.cgroup.name, ERROR="not empty")


def open_call() -> Call:
    """A container for one call: its own cgroup where possible, else the sweep."""
    base = None if os.environ.get(MODE_ENV, "") == "sweep" else _cgroup_base()
    if base is not None:
        path = base / f"{CGROUP_PREFIX}{os.getpid()}-{next(_counter)}"
        try:
            path.mkdir()
        except OSError as exc:
            log.event("contain-fallback", log.WARNING, ERROR=exc.strerror or str(exc))
            return Call(None)
        if (path / "cgroup.kill").exists():
            return Call(path)
        # A kernel before 5.14: no atomic kill; the sweep is the safer tool.
        path.rmdir()
        _disable_cgroups("no cgroup.kill (Linux 5.14 or later needed)")
    return Call(None)


def _disable_cgroups(reason: str) -> None:
    global _probed
    with _probe_lock:
        _probed = (True, None)
    log.event("contain-fallback", log.WARNING, ERROR=reason)


def _write(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


def _members(cgroup: Path) -> list[int]:
    try:
        return [int(x) for x in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _release(cgroup: Path) -> None:
    """Move every process still in `cgroup` to its parent (ours)."""
    target = cgroup.parent / "cgroup.procs"
    for _ in range(SWEEP_ROUNDS):
        pids = _members(cgroup)
        if not pids:
            return
        for pid in pids:
            _write(target, str(pid).encode())


def _wait_empty(cgroup: Path, timeout: float) -> bool:
    """Wait (on cgroup.events notifications) until no process is left."""
    deadline = time.monotonic() + timeout
    try:
        with open(cgroup / "cgroup.events", "rb", buffering=0) as events:
            poller = select.poll()
            poller.register(events, select.POLLPRI | select.POLLERR)
            while b"populated 0" not in events.read():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                poller.poll(min(remaining, 0.1) * 1000)
                events.seek(0)
            return True
    except OSError:
        return False


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except OSError:
        pass


def _proc_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _has_marker(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return (b"\0" + data).find(needle) >= 0


def _sweep(marker: str, root: int | None, signum: int, rounds: int) -> None:
    needle = f"\0{MARKER_ENV}={marker}\0".encode()
    me = os.getpid()
    for _ in range(rounds):
        stats = {pid: _stat(pid) for pid in _proc_pids() if pid != me}
        live = {pid: st for pid, st in stats.items() if st is not None and st[0] not in "ZX"}
        found = {pid for pid in live if _has_marker(pid, needle)}
        found |= _descendants(root, live)
        if not found:
            return
        for pid in found:
            _signal_checked(pid, live[pid][2], signum)


def _descendants(root: int | None, live: dict[int, tuple[str, int, int]]) -> set[int]:
    if root is None:
        return set()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in live.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    if root in live:
        found.add(root)
    return found


def _signal_checked(pid: int, start: int, signum: int) -> None:
    """Signal `pid` only if it is still the process that was identified."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):
            _kill_if_same(pid, start, signum)
        return
    try:
        current = _stat(pid)
        if current is None or current[2] != start:
            return  # gone, or the pid now names another process
        signal.pidfd_send_signal(pidfd, signum)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def _kill_if_same(pid: int, start: int, signum: int) -> None:
    current = _stat(pid)
    if current is not None and current[2] == start:
        try:
            os.kill(pid, signum)
        except OSError:
            pass
