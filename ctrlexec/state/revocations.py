"""The dispatcher's revocation lists, shared by a fleet.

Each node keeps its lists as files in `ca_dir` (`revoked-serials`,
`revoked-keys`): the TLS path checks them with one stat per connection and
pairing reads them, with no database on either path. With a PostgreSQL
backend the database holds the union of every node's lists: `ced revoke`
adds to both at once, and each node's fleet round (dispatcher/fleet.py)
adds what the database has to its files, and what its files have to the
database. A revocation made on one node is in force on every node within
`fleet_sync_interval` seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core import lifecycle
from ..pki import revocation

SERIALS = "serial"
KEYS = "key"
SERIALS_FILE = "revoked-serials"
KEYS_FILE = "revoked-keys"


class FileRevocations:
    """The lists in one node's ca_dir."""

    def __init__(self, ca_dir: str | os.PathLike):
        self.ca_dir = Path(ca_dir)

    def revoked(self, kind: str) -> set[str]:
        if kind == SERIALS:
            return set(revocation.read(self.ca_dir / SERIALS_FILE))
        return set(revocation.read_keys(self.ca_dir / KEYS_FILE))

    def add(self, kind: str, values: list[str], note: str = "") -> None:
        for value in values:
            if kind == SERIALS:
                revocation.add(self.ca_dir / SERIALS_FILE, lifecycle.list_line(value), note)
            else:
                revocation.add_key(self.ca_dir / KEYS_FILE, value, note)


def normalised(kind: str, values: set[str]) -> set[str]:
    """Serials are canonical keys already (read() applies 0.12's canonical
    form once; applying it again would turn an all-digit key into another
    serial); key digests are compared in lower case."""
    if kind == SERIALS:
        return {v for v in values if v}
    return {v.lower() for v in values if v}


def reconcile(local: FileRevocations, shared) -> dict[str, int]:
    """Make both hold the union; how many entries each side gained."""
    gained = {"local": 0, "shared": 0}
    for kind in (SERIALS, KEYS):
        mine = normalised(kind, local.revoked(kind))
        theirs = normalised(kind, shared.revoked(kind))
        if mine - theirs:
            shared.add(kind, sorted(mine - theirs))
            gained["shared"] += len(mine - theirs)
        if theirs - mine:
            local.add(kind, sorted(theirs - mine), "from the fleet")
            gained["local"] += len(theirs - mine)
    return gained
