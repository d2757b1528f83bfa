"""Handing work to a background process that outlives the command.

Two commands do this: `ced pairing-mode start` (the listener keeps the port
open after the command returns) and `agent request-pairing --background`
(the wait for the operator's decision continues after the request id is
printed). Both need the same things, done once here: no output buffered
twice by the fork, a child in its own session (a Ctrl-C or a closed
terminal of the caller does not reach it) with standard input and output on
/dev/null, its exit status being the outcome of the work, and - when the
caller must know that the work started - one line from the child read with
a deadline, so a child that fails early is reported by the command that
started it.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import EXIT_FAILURE, CtrlExecError

# The longest line a child reports to its parent.
MAX_REPORT = 4096
_READY = "ready "
_ERROR = "error "


@dataclass(frozen=True)
class Detached:
    """In the parent: the child's pid and, when it was waited for, what it
    reported: `ready` (the work's readiness text) or `error` (why it failed
    before being ready). Both None: nothing came in time."""

    pid: int
    ready: str | None = None
    error: str | None = None


Work = Callable[[Callable[[str], None]], int]


def detach(work: Work, ready_wait: float | None = None) -> Detached:
    """Run `work(report)` in a detached child; the child exits with the
    value `work` returns (a CtrlExecError: its exit code; anything else: 1).

    `report(text)` tells the parent the work is ready. With `ready_wait`,
    the parent waits that many seconds for the report (or an error) before
    returning; without, it returns at once. Returns only in the parent."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(work, write_end)  # never returns
    os.close(write_end)
    try:
        if ready_wait is None:
            return Detached(pid)
        line = _read_line(read_end, ready_wait)
    finally:
        os.close(read_end)
    if line.startswith(_READY):
        return Detached(pid, ready=line[len(_READY) :])
    if line.startswith(_ERROR):
        return Detached(pid, error=line[len(_ERROR) :])
    return Detached(pid)


def _child(work: Work, report_fd: int) -> None:
    code = EXIT_FAILURE
    try:
        os.setsid()  # outlive the caller's session and process group
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
        code = work(lambda text: _send(report_fd, _READY + text))
    except CtrlExecError as exc:
        _send(report_fd, _ERROR + str(exc))
        code = exc.exit_code
    except BaseException as exc:
        _send(report_fd, f"{_ERROR}{type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


def _send(fd: int, text: str) -> None:
    line = " ".join(text.split())[: MAX_REPORT - 1] + "\n"
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    except OSError:
        pass  # the parent stopped waiting


def _read_line(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data and len(data) < MAX_REPORT:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, MAX_REPORT)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
