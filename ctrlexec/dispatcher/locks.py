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

The kernel's release is also the weakness: a dispatcher killed outright
(kill -9, a crash, Ctrl-C) loses its locks while its scripts may still run
on the agents. So the holder also writes `<lock file>.holder` (JSON: pid,
user, since, reqid; atomic, 0660) and removes it when the run has really
ended. A taker that gets the flock and still finds a holder file knows its
writer stopped without seeing its run end: `acquire` returns those records
as `stale`, and the engine asks the agent whether that reqid still runs
before it goes on (engine.Engine.run). The holder file is also what
`list-locks` shows.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .. import log
from ..errors import Locked, StateError
from ..store import FileLock, atomic_write, ensure_dir, is_locked

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_LOCK_FILE = re.compile(r"(.+)--(.+)\.lock")
# A lock directory holds one file per host:script ever run; listing stops
# here rather than reading an unbounded directory into memory.
MAX_LISTED = 100_000
HOLDER_SUFFIX = ".holder"
# A holder record is a handful of short fields.
MAX_HOLDER_BYTES = 4096
HOLDER_FIELDS = ("pid", "user", "since", "reqid", "caller", "username")


def lock_name(host: str, script: str) -> str:
    return f"{_UNSAFE.sub('_', host)}--{_UNSAFE.sub('_', script)}.lock"


def holder_path(directory: Path, host: str, script: str) -> Path:
    return directory / (lock_name(host, script) + HOLDER_SUFFIX)


def read_holder(path: Path) -> dict | None:
    """The holder record at `path`; None when there is none. A record that
    cannot be read as one still counts (as `{}`): its writer did not finish."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_HOLDER_BYTES + 1)
    except OSError:
        return {}
    try:
        value = json.loads(raw) if len(raw) <= MAX_HOLDER_BYTES else None
    except (ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        return {}
    return {key: value[key] for key in HOLDER_FIELDS if isinstance(value.get(key), (str, int))}


class HeldLocks:
    """Locks taken by one dispatch; release them with `release()` or `with`.

    `stale` maps each host whose previous holder stopped before its run
    ended to that holder's record."""

    def __init__(
        self,
        hosts: list[str],
        script: str,
        held: list[FileLock],
        directory: Path | None = None,
        stale: dict[str, dict] | None = None,
    ):
        self.hosts = hosts
        self.script = script
        self.stale = stale or {}
        self._held = held
        self._directory = directory

    def record(self, holder: dict) -> None:
        """Write our holder record beside every lock (replacing stale ones)."""
        assert self._directory is not None
        data = json.dumps(holder, sort_keys=True).encode("utf-8")
        for host in self.hosts:
            path = holder_path(self._directory, host, self.script)
            try:
                atomic_write(path, data, 0o660)
            except OSError as exc:
                raise StateError(f"cannot write lock holder {path}: {exc.strerror}") from None
        self.stale = {}

    def release(self, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Release every lock. The holder records of `keep` stay: those
        hosts may still be running the script (an interrupted dispatch), so
        the next taker asks their agents first."""
        if not self._held:
            return
        if self._directory is not None:
            for host in self.hosts:
                if host not in keep:
                    _remove(holder_path(self._directory, host, self.script))
        for lock in self._held:
            lock.release()
        self._held = []
        fields = {"KEPT": ",".join(sorted(keep))} if keep else {}
        log.event(
            "lock-release", log.INFO, HOSTS=",".join(self.hosts), SCRIPT=self.script, **fields
        )

    def __enter__(self) -> HeldLocks:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        # Interrupted (Ctrl-C, a crash in progress): the scripts may still run.
        self.release(keep=set(self.hosts) if exc_type is not None else frozenset())


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.event("lock-fail", log.WARNING, FILE=str(path), ERROR=exc.strerror or str(exc))


class HostScriptLocks:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def acquire(self, hosts: list[str], script: str) -> HeldLocks:
        """Take `host:script` for every host, or none: raise Locked with
        every conflict. Records a previous holder left are in
        `HeldLocks.stale`; `HeldLocks.record()` writes ours."""
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
        stale: dict[str, dict] = {}
        for host in hosts:
            left = read_holder(holder_path(self.directory, host, script))
            if left is not None:
                stale[host] = left
        for host in hosts:
            log.event("lock-acquire", log.INFO, HOST=host, SCRIPT=script)
        return HeldLocks(list(hosts), script, held, self.directory, stale)

    def held(self) -> list[dict]:
        """Locks some process holds now, sorted by host:script."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"cannot list locks in {self.directory}: {exc.strerror}") from None
        found = []
        for entry in entries[:MAX_LISTED]:
            match = _LOCK_FILE.fullmatch(entry)
            if not match:
                continue
            held = self._probe(self.directory / entry)
            holder = read_holder(self.directory / (entry + HOLDER_SUFFIX))
            if not held and holder is None:
                continue
            lock = {"host": match.group(1), "script": match.group(2)}
            lock["state"] = "held" if held else "orphaned"
            lock.update(holder or {})
            found.append(lock)
        return sorted(found, key=lambda lock: f"{lock['host']}:{lock['script']}")

    @staticmethod
    def _probe(path: Path) -> bool:
        try:
            return is_locked(path)
        except PermissionError:
            raise StateError(f"cannot read lock {path}: permission denied") from None
