"""host:script locks: one run of a script per agent at a time.

`<locks_dir>/<host>--<script>.lock` (0.12's names; both parts with every
character outside `[A-Za-z0-9_.-]` replaced by `_`), mode 0660, locked with
flock. Unlike 0.12, which only checks that nobody holds them, a dispatch
takes every lock of its hosts before the first request and holds them
until the last answer: a second `ced run` of the same script on the same
host gets a conflict for as long as the first one runs. The kernel drops
the locks when the holder exits, so a crash never leaves one behind.

Locks are keyed by registry name (the agent), not by how the operator
wrote it (`web-01` and `web-01:7443` are the same agent).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .. import log
from ..errors import Locked, StateError
from ..store import FileLock, ensure_dir, is_locked

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_LOCK_FILE = re.compile(r"(.+)--(.+)\.lock")
# A lock directory holds one file per host:script ever run; listing stops
# here rather than reading an unbounded directory into memory.
MAX_LISTED = 100_000


def lock_name(host: str, script: str) -> str:
    return f"{_UNSAFE.sub('_', host)}--{_UNSAFE.sub('_', script)}.lock"


class HeldLocks:
    """Locks taken by one dispatch; release them with `release()` or `with`."""

    def __init__(self, hosts: list[str], script: str, held: list[FileLock]):
        self.hosts = hosts
        self.script = script
        self._held = held

    def release(self) -> None:
        if not self._held:
            return
        for lock in self._held:
            lock.release()
        self._held = []
        log.event("lock-release", log.INFO, HOSTS=",".join(self.hosts), SCRIPT=self.script)

    def __enter__(self) -> HeldLocks:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


class HostScriptLocks:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def acquire(self, hosts: list[str], script: str) -> HeldLocks:
        """Take `host:script` for every host, or none: raise Locked with
        every conflict."""
        ensure_dir(self.directory, 0o770)
        held: list[FileLock] = []
        conflicts: list[str] = []
        for host in hosts:
            lock = FileLock(self.directory / lock_name(host, script), 0o660)
            try:
                lock.acquire(blocking=False)
            except BlockingIOError:
                conflicts.append(f"{host}:{script}")
                continue
            held.append(lock)
        if conflicts:
            for lock in held:
                lock.release()
            log.event("lock-conflict", log.WARNING, CONFLICTS=",".join(conflicts))
            raise Locked(conflicts)
        for host in hosts:
            log.event("lock-acquire", log.INFO, HOST=host, SCRIPT=script)
        return HeldLocks(list(hosts), script, held)

    def held(self) -> list[dict]:
        """Locks some process holds now, sorted by host:script."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries[:MAX_LISTED]:
            match = _LOCK_FILE.fullmatch(entry)
            if match and self._probe(self.directory / entry):
                found.append({"host": match.group(1), "script": match.group(2)})
        return sorted(found, key=lambda lock: f"{lock['host']}:{lock['script']}")

    @staticmethod
    def _probe(path: Path) -> bool:
        try:
            return is_locked(path)
        except PermissionError:
            raise StateError(f"cannot read lock {path}: permission denied") from None
