"""The dispatcher's registry of paired agents: one JSON record per agent.

`<registry_dir>/<name>.json`, mode 0644, written atomically; every
read-modify-write holds the registry-wide lock `<registry_dir>/.registry.lock`
(0.12's layout, so both implementations can share a directory).

Record fields (0.12): hostname, ip, paired, expiry, reqid, lookup_by, port,
tags, dispatcher_serial, serial_status, serial_broadcast, serial_confirmed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.lifecycle import ExpectedPeer
from ..core.names import is_agent_name
from ..errors import CtrlExecError, UnknownAgents
from ..store import FileLock, ensure_dir, read_json_object, remove, write_json

DEFAULT_AGENT_PORT = 7443


@dataclass(frozen=True)
class Target:
    """Where one operator-given host reference is dispatched."""

    name: str  # registry name (results are keyed by it)
    reference: str  # as the operator wrote it (`name` or `name:port`)
    address: str  # IP or host name to connect to
    port: int
    expect: ExpectedPeer | None = None  # the certificate it must present

    @property
    def label(self) -> str:
        return f"{self.address}:{self.port}"


def new_record(
    hostname: str,
    ip: str,
    paired: str,
    expiry: str,
    reqid: str,
    lookup_by: str,
    port: int,
    dispatcher_serial: str,
    serial_status: str,
    serial_confirmed: str = "",
) -> dict:
    return {
        "hostname": hostname,
        "ip": ip,
        "paired": paired,
        "expiry": expiry,
        "reqid": reqid,
        "lookup_by": lookup_by,
        "port": int(port),
        "tags": {},
        "dispatcher_serial": dispatcher_serial,
        "serial_status": serial_status,
        "serial_broadcast": "",
        "serial_confirmed": serial_confirmed,
    }


class Registry:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _path(self, name: str) -> Path:
        if not is_agent_name(name):
            raise CtrlExecError(f"invalid agent name: {name!r}")
        return self.directory / f"{name}.json"

    def lock(self) -> FileLock:
        ensure_dir(self.directory, 0o770)
        return FileLock(self.directory / ".registry.lock", 0o660)

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(
            entry[:-5] for entry in entries if entry.endswith(".json") and is_agent_name(entry[:-5])
        )

    def get(self, name: str) -> dict | None:
        return read_json_object(self._path(name))

    def records(self) -> Iterator[dict]:
        for name in self.names():
            record = self.get(name)
            if record is not None:
                yield record

    def put(self, record: dict) -> None:
        """Write one record (caller holds the lock for read-modify-write)."""
        ensure_dir(self.directory, 0o770)
        write_json(self._path(record["hostname"]), record, 0o644)

    def update(self, name: str, change: Callable[[dict], None]) -> dict:
        with self.lock():
            record = self.get(name)
            if record is None:
                raise UnknownAgents([name])
            change(record)
            self.put(record)
            return record

    def discard(self, name: str) -> None:
        """Remove one record (caller holds the lock)."""
        remove(self._path(name))

    def delete(self, name: str) -> dict | None:
        with self.lock():
            record = self.get(name)
            remove(self._path(name))
            return record

    def resolve(
        self, references: list[str], default_port: int = DEFAULT_AGENT_PORT
    ) -> list[Target]:
        """Every reference must be a registered name, optionally `name:port`.
        The address is the stored ip when lookup_by is `ip`, else the name."""
        targets, unknown = [], []
        for reference in references:
            name, port_text = _split_reference(reference)
            record = self.get(name) if is_agent_name(name) else None
            if record is None:
                unknown.append(reference)
                continue
            stored = int(record.get("port") or DEFAULT_AGENT_PORT)
            if port_text is not None:
                port = int(port_text)
            elif stored != DEFAULT_AGENT_PORT:
                port = stored
            else:
                port = default_port  # 0.12: a stored 7443 yields to the global --port
            address = name
            if record.get("lookup_by") == "ip" and record.get("ip"):
                address = str(record["ip"])
            expect = ExpectedPeer.from_record(name, record)
            targets.append(Target(name, reference, address, port, expect))
        if unknown:
            raise UnknownAgents(unknown)
        return targets


def _split_reference(reference: str) -> tuple[str, str | None]:
    name, sep, port = reference.rpartition(":")
    if sep and port.isdigit() and 0 < int(port) < 65536 and name:
        return name, port
    return reference, None
