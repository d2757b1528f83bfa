"""The last PostgreSQL lineage (cluster and timeline) this dispatcher host
used, kept across restarts: `postgresql-lineage.json` in the dispatcher's
state directory (beside `rotation.json`).

A process starting with only an old primary reachable has no memory of the
failover it missed; this file is that memory. One record per database name
(the host list may be reordered or extended without losing it):

    {"version": 1, "databases": {"ctrlexec": {"system": "7713...",
     "timeline": 2, "server": "db2:5432", "recorded": 1764460000}}}

Written atomically, mode 0640 (operators in the service group run `ced` as
themselves and must read it; it holds no secret), only by root (the file
then belongs to `service_user`) or by the service user (`dispatcher
serve`): another account keeps what it learns in memory. The record
only moves forward (a higher timeline of the same cluster); `ced db accept`
replaces it. A record that cannot be read or parsed stops every use of the
database (fail closed) with the path and the reason.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ..core.db_lineage import Lineage
from ..errors import StateError
from ..store import atomic_write, read_json_object

FILE_NAME = "postgresql-lineage.json"
MAX_BYTES = 64 * 1024


class LineageFile:
    def __init__(self, path: Path, database: str, service: tuple[int, int] | None = None):
        """`service`: the service user's uid and gid (None: no such user)."""
        self.path = path
        self.database = database
        self._service = service
        self._lock = threading.Lock()

    def load(self) -> Lineage | None:
        """The recorded lineage of this database; None when none is."""
        record = self._databases().get(self.database)
        if record is None:
            return None
        try:
            system, timeline = record["system"], record["timeline"]
            if not (isinstance(system, str) and system.isdigit() and len(system) <= 20):
                raise ValueError("system")
            if not (isinstance(timeline, int) and timeline >= 1):
                raise ValueError("timeline")
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"{self.path}: the record of {self.database} is malformed ({exc})"
            ) from None
        return Lineage(system, timeline)

    def may_write(self) -> bool:
        """Root and the service user; also the directory's owner (a
        per-user layout, where the service is the user's own)."""
        euid = os.geteuid()
        if euid == 0 or (self._service is not None and euid == self._service[0]):
            return True
        try:
            return os.stat(self.path.parent).st_uid == euid
        except OSError:
            return False

    def advance(self, lineage: Lineage, server: str) -> bool:
        """Record `lineage` if it is ahead of the record (or there is none);
        True when written. Never moves the record back, never to another
        cluster (that is `replace`, through `ced db accept`)."""
        if not self.may_write():
            return False
        with self._lock:
            recorded = self.load()
            if recorded is not None and (
                recorded.system != lineage.system or recorded.timeline >= lineage.timeline
            ):
                return False
            self._write(lineage, server)
            return True

    def replace(self, lineage: Lineage, server: str) -> Lineage | None:
        """Record `lineage` whatever was recorded; what was."""
        if not self.may_write():
            raise StateError(
                f"{self.path} can only be written by root or the service user: "
                "run this command as one of them"
            )
        with self._lock:
            before = self.load()
            self._write(lineage, server)
            return before

    def _databases(self) -> dict:
        try:
            document = read_json_object(self.path, MAX_BYTES)
        except PermissionError:
            raise StateError(
                f"cannot read {self.path} (the PostgreSQL lineage this host used): "
                "permission denied"
            ) from None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if document is None:
            return {}
        databases = document.get("databases")
        if not isinstance(databases, dict):
            raise StateError(f"{self.path}: no 'databases' object")
        return databases

    def _write(self, lineage: Lineage, server: str) -> None:
        databases = self._databases()
        databases[self.database] = {
            "system": lineage.system,
            "timeline": lineage.timeline,
            "server": server,
            "recorded": int(time.time()),
        }
        text = json.dumps({"version": 1, "databases": databases}, indent=2, sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            owner = self._service if os.geteuid() == 0 else None
            atomic_write(self.path, (text + "\n").encode("ascii"), 0o640, owner)
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from None
