"""The scripts this agent is running now, by owning dispatcher and reqid.

Every run, synchronous or async, is registered here from before its
process starts until after it was reaped, so `GET /running` can tell a
dispatcher (one that crashed, or that has waited longer than its
read_timeout) that its script is still running, and `POST /cancel` can stop
it: SIGTERM to the script's process group, then SIGKILL after
`CANCEL_GRACE` seconds if anything of the group is left.

The process group id is the script's pid (runner starts every script in a
new session); it is known once the runner calls `Job.started(pid)` and is
forgotten when the runner has reaped the script, so a signal never reaches
a recycled pid. A script run by the privileged executor belongs to another
process tree: the executor client hands over a stop function instead
(`Job.stoppable`), which ends the exchange's sending side; the executor
reads that as "cancel" and kills the script's process group at once
(SIGKILL, as when the agent stops).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .. import log
from ..core.run_control import RunningEntry
from ..core.timefmt import iso_utc

# Seconds between SIGTERM and SIGKILL of a cancelled script's process group.
CANCEL_GRACE = 5.0
CANCEL_NOTE = "ctrl-exec-agent: cancelled by the dispatcher\n"
CANCELLED_ERROR = "cancelled by the dispatcher"


class Job:
    def __init__(self, owner: str, reqid: str, script: str, mode: str, started: str, timeout):
        self.owner = owner
        self.reqid = reqid
        self.script = script
        self.mode = mode
        self.started_at = started
        self.timeout = float(timeout)
        self.cancelled = False
        self._pgid: int | None = None
        self._stop: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def entry(self) -> RunningEntry:
        return RunningEntry(self.reqid, self.script, self.mode, self.started_at, self.timeout)

    def started(self, pid: int) -> None:
        """The runner started the script (process group `pid`)."""
        with self._lock:
            self._pgid = pid
            cancelled = self.cancelled
        if cancelled:  # cancelled before the process existed
            self._signal(signal.SIGTERM)

    def stoppable(self, stop: Callable[[], None]) -> None:
        """The run can be stopped by calling `stop` (the executor's runs)."""
        with self._lock:
            self._stop = stop
            cancelled = self.cancelled
        if cancelled:
            stop()

    def reaped(self) -> None:
        with self._lock:
            self._pgid = None
            self._stop = None

    def cancel(self, grace: float) -> None:
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            stop = self._stop
        if stop is not None:
            stop()
            return
        self._signal(signal.SIGTERM)
        timer = threading.Timer(grace, self._signal, (signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    def _signal(self, signum: int) -> None:
        with self._lock:
            if self._pgid is None:
                return
            try:
                os.killpg(self._pgid, signum)
            except (ProcessLookupError, PermissionError):
                pass


class RunningJobs:
    def __init__(self, clock: Callable[[], float] = time.time, cancel_grace: float = CANCEL_GRACE):
        self.clock = clock
        self.cancel_grace = cancel_grace
        self._lock = threading.Lock()
        self._jobs: list[Job] = []

    @contextmanager
    def track(
        self, owner: str, reqid: str, script: str, mode: str, timeout: float
    ) -> Iterator[Job]:
        job = Job(owner, reqid, script, mode, iso_utc(self.clock()), timeout)
        with self._lock:
            self._jobs.append(job)
        try:
            yield job
        finally:
            job.reaped()
            with self._lock:
                self._jobs.remove(job)

    def owned_by(self, owner: str) -> list[RunningEntry]:
        with self._lock:
            return [job.entry() for job in self._jobs if job.owner == owner]

    def cancel(self, owner: str, reqid: str) -> list[Job]:
        """Cancel the owner's runs with this reqid (one per script); the jobs."""
        with self._lock:
            found = [job for job in self._jobs if job.owner == owner and job.reqid == reqid]
        for job in found:
            job.cancel(self.cancel_grace)
            log.event(
                "run-cancel",
                log.WARNING,
                SCRIPT=job.script,
                MODE=job.mode,
                DISPATCHER=owner,
                REQID=reqid,
            )
        return found
