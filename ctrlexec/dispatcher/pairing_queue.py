"""The pairing queue: one directory of small files, shared by the listener
(`ced pairing-mode`) and the operator's `ced approve` / `ced deny`.

Files, per request id (0.12's names, plus `.commit`):

- `<reqid>.json`      the queued request (protocol.md §4.7);
- `<reqid>.commit`    an approval decided but not yet fully applied;
- `<reqid>.approved`  the approval body the listener sends to the agent;
- `<reqid>.denied`    the denial body.

Every change happens under `.queue.lock`, and every file is written
atomically, so a request is never counted twice and a reader never sees half
a file.

An approval is two writes in two places (the registry record and the
`.approved` body) that must both happen or neither. It is first written whole
to `.commit` (the commit point); applying it writes the registry record, then
`.approved`, then removes `.commit`. Anyone holding the lock who finds a
`.commit` applies it again (all three steps are idempotent), so a crash at
any instant leaves either no registration or, after the next look at the
queue, a complete one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ..core.http import encode_json
from ..core.ids import PAIRING_REQID
from ..core.pairing import CLIENT_WINDOW, STALE_AFTER
from ..errors import StateError
from ..store import (
    FileLock,
    atomic_write,
    ensure_dir,
    read_json_object,
    read_state,
    remove,
    sweep_temporary,
)
from .registry import Registry

FILE_MODE = 0o640
# Queue files are small (a CSR is at most 10 KiB); refuse to parse more.
MAX_QUEUE_FILE = 256 * 1024


class PairingQueue:
    def __init__(
        self,
        directory: str | os.PathLike,
        registry: Registry,
        clock: Callable[[], float] = time.time,
    ):
        self.directory = Path(directory)
        self.registry = registry
        self.clock = clock

    # --- paths and locking --------------------------------------------------

    def path(self, reqid: str, suffix: str) -> Path:
        if not PAIRING_REQID.matches(reqid):
            raise StateError(f"not a pairing request id: {reqid!r}")
        return self.directory / f"{reqid}{suffix}"

    def lock(self) -> FileLock:
        ensure_dir(self.directory, 0o770)
        return FileLock(self.directory / ".queue.lock", 0o660)

    def _ids(self, suffix: str) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [
            name[: -len(suffix)]
            for name in names
            if name.endswith(suffix) and PAIRING_REQID.matches(name[: -len(suffix)])
        ]

    def _read(self, path: Path) -> dict | None:
        return read_json_object(path, MAX_QUEUE_FILE)

    # --- housekeeping (caller holds the lock) -------------------------------

    def sweep_temporary(self) -> int:
        """Remove writes a crash left half done (temp files) in the queue and
        registry directories; run when pairing mode starts."""
        now = self.clock()
        return sum(
            sweep_temporary(directory, now)
            for directory in (self.directory, self.registry.directory)
        )

    def recover(self) -> list[str]:
        """Finish every approval a crash interrupted. Returns their ids."""
        done = []
        for reqid in self._ids(".commit"):
            commit = self._read(self.path(reqid, ".commit"))
            if commit is None:
                continue
            self._apply(reqid, commit)
            done.append(reqid)
        return done

    def expire(self) -> list[str]:
        """Delete undecided requests older than 10 minutes (0.12), and
        decisions no listener picked up within the agent's window."""
        now = self.clock()
        expired = []
        for reqid in self._ids(".json"):
            if self._decided(reqid):
                continue
            if _age(self.path(reqid, ".json"), now) > STALE_AFTER:
                remove(self.path(reqid, ".json"))
                expired.append(reqid)
        for suffix in (".approved", ".denied"):
            for reqid in self._ids(suffix):
                if _age(self.path(reqid, suffix), now) > CLIENT_WINDOW:
                    remove(self.path(reqid, suffix))
                    remove(self.path(reqid, ".json"))
        return expired

    def _decided(self, reqid: str) -> bool:
        return any(self.path(reqid, s).exists() for s in (".commit", ".approved", ".denied"))

    def _pending_ids(self) -> list[str]:
        return [reqid for reqid in self._ids(".json") if not self._decided(reqid)]

    def tidy(self) -> None:
        """recover + expire (caller holds the lock)."""
        self.recover()
        self.expire()

    # --- the listener's side ------------------------------------------------

    def add(self, record: dict, max_queue: int) -> bool:
        """Queue a request unless `max_queue` are already pending."""
        with self.lock():
            self.tidy()
            if len(self._pending_ids()) >= max_queue:
                return False
            atomic_write(self.path(record["id"], ".json"), encode_json(record), FILE_MODE)
            return True

    def decision(self, reqid: str) -> bytes | None:
        """The body to send when the request is decided, else None."""
        if self.path(reqid, ".commit").exists():
            with self.lock():
                self.recover()
        return self._body(reqid)

    def _body(self, reqid: str) -> bytes | None:
        for suffix in (".approved", ".denied"):
            try:
                return read_state(self.path(reqid, suffix), MAX_QUEUE_FILE)
            except FileNotFoundError:
                continue
        return None

    def delivered(self, reqid: str) -> None:
        """The agent has its answer: forget the request."""
        with self.lock():
            for suffix in (".approved", ".denied", ".json"):
                remove(self.path(reqid, suffix))

    def withdraw(self, reqid: str) -> bytes | None:
        """The wait ended without an answer (timeout, agent gone, pairing
        mode stopping). Returns a decision that landed meanwhile, if any;
        otherwise removes the request."""
        with self.lock():
            self.recover()
            body = self._body(reqid)
            if body is None:
                remove(self.path(reqid, ".json"))
            return body

    # --- the operator's side ------------------------------------------------

    def pending(self) -> list[dict]:
        """Undecided requests, oldest first."""
        if not self.directory.is_dir():
            return []
        with self.lock():
            self.tidy()
            ids = self._pending_ids()
        records = []
        for reqid in ids:
            record = self._read(self.path(reqid, ".json"))
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: (str(r.get("received", "")), str(r.get("id", ""))))

    def get_pending(self, reqid: str) -> dict:
        """The undecided request (caller holds the lock); StateError otherwise."""
        if not PAIRING_REQID.matches(reqid):
            raise StateError(f"no pending pairing request '{reqid}'")
        record = self._read(self.path(reqid, ".json"))
        if record is None:
            raise StateError(f"no pending pairing request '{reqid}' (see 'ced list-requests')")
        if self._decided(reqid):
            raise StateError(f"pairing request '{reqid}' has already been decided")
        return record

    def commit_approval(self, reqid: str, approved: dict, record: dict) -> None:
        """Record the decision (commit point), then apply it (caller holds the lock)."""
        commit = {"approved": approved, "record": record}
        atomic_write(self.path(reqid, ".commit"), encode_json(commit), FILE_MODE)
        self._apply(reqid, commit)

    def _apply(self, reqid: str, commit: dict) -> None:
        record, approved = commit.get("record"), commit.get("approved")
        if not isinstance(record, dict) or not isinstance(approved, dict):
            raise StateError(f"{self.path(reqid, '.commit')} is malformed")
        with self.registry.lock():
            self.registry.put(record)
        atomic_write(self.path(reqid, ".approved"), encode_json(approved), FILE_MODE)
        remove(self.path(reqid, ".commit"))

    def deny(self, reqid: str, body: dict) -> dict:
        """Decide `reqid` as denied (caller holds the lock); returns the request."""
        request = self.get_pending(reqid)
        atomic_write(self.path(reqid, ".denied"), encode_json(body), FILE_MODE)
        remove(self.path(reqid, ".json"))
        return request


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
