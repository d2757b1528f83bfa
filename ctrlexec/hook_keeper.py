"""The keeper every auth hook runs under, so that nothing a hook starts
outlives it (not even a process that left the hook's session with setsid).

Theory of operation. `run_hook` starts a fresh interpreter running KEEPER
(`python -I -S -c KEEPER HOOK`), in a session of its own. The keeper makes
itself a child subreaper (PR_SET_CHILD_SUBREAPER): a process the hook
starts and abandons is re-parented to the keeper instead of to init, so the
keeper can always find every descendant among its own children. It starts
the hook (stdin inherited: the request's JSON goes straight to the hook;
stdout and stderr to /dev/null) and waits. When the hook exits, or when the
caller sends SIGTERM because the hook's time is up, the keeper sweeps: it
SIGKILLs every child it has, reaps, and looks again, until it has none. Then
it exits with the hook's status (a hook killed by a signal: the keeper
kills itself with the same signal), so the caller reads the hook's outcome
from the keeper's.

Limits: a descendant that runs under another user (a setuid program) cannot
be killed unless the caller is root; the sweep uses /proc. If the keeper
cannot become a subreaper it exits 125 with `keeper-failed:` on stderr and
the request is denied; a hook that cannot be executed gives 125 and
`exec-failed: <reason>`.
"""

from __future__ import annotations

# Exit status of the keeper for its own failures (with a line on stderr).
KEEPER_FAILED = 125

KEEPER = r"""
import ctypes, os, signal, subprocess, sys

def children():
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(name))
    return found

def sweep():
    while True:
        kids = children()
        if not kids:
            return
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kids:  # reap these only: their orphans are ours now, alive
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

class Stop(Exception):
    pass

def stop(signum, frame):
    raise Stop()

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.stderr.write("keeper-failed: cannot become a child subreaper\n")
    sys.exit(125)
signal.signal(signal.SIGTERM, stop)
try:
    hook = subprocess.Popen(
        [sys.argv[1]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/"
    )
except OSError as exc:
    sys.stderr.write(f"exec-failed: {exc.strerror or exc}\n")
    sys.exit(125)
status = None
try:
    status = hook.wait()
except Stop:
    pass
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sweep()
if status is None:
    sys.exit(124)
if status < 0:
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
sys.exit(status)
"""
