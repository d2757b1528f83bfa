"""What `/capabilities` advertises: every allowlisted script, whether the
agent can execute it, its profile, and its schema sidecar when it has a
usable one (operations.md §3.5).

Sidecars are read when the allowlist is loaded (start and SIGHUP), never
executed, at most 64 KiB each; a broken one is logged (`schema-skip`) and
the script stays callable, just untyped.
"""

from __future__ import annotations

import os

from .. import log
from ..core import agent_wire
from .allowlist import Allowlist


def read_sidecar(script_path: str) -> agent_wire.Sidecar | None:
    """The sidecar beside `script_path`; None when absent or unusable (logged)."""
    path = script_path + agent_wire.SIDECAR_SUFFIX
    try:
        with open(path, "rb") as handle:
            raw = handle.read(agent_wire.MAX_SIDECAR_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror}") from None
    return agent_wire.parse_sidecar(raw)


def load_sidecars(allowlist: Allowlist) -> dict[str, agent_wire.Sidecar]:
    found = {}
    for name in allowlist.names():
        try:
            sidecar = read_sidecar(allowlist.entries[name].path)
        except ValueError as exc:
            log.event("schema-skip", log.WARNING, SCRIPT=name, REASON=str(exc)[:200])
            continue
        if sidecar is None:
            continue
        if sidecar.version_rejected:
            log.event(
                "schema-version-derive",
                log.WARNING,
                SCRIPT=name,
                REASON="explicit version invalid or reserved - deriving hash",
            )
        found[name] = sidecar
    return found


def executable(path: str) -> bool:
    """Whether the agent's user can execute `path` (0.12's `-x`), files only."""
    return os.path.isfile(path) and os.access(path, os.X_OK)


def script_entries(
    allowlist: Allowlist,
    sidecars: dict[str, agent_wire.Sidecar],
    default_timeout: float | None = None,
) -> list[dict]:
    """Each script's entry; with `default_timeout` (the agent's
    script_timeout) each also says how long the agent lets it run
    (`timeout`, seconds: an addition to 0.12's shape that a dispatcher uses
    to know how long a synchronous run may take)."""
    found = []
    for name, entry in sorted(allowlist.entries.items()):
        item = agent_wire.script_entry(
            name, entry.path, executable(entry.path), entry.profile, sidecars.get(name)
        )
        if default_timeout is not None:
            limit = entry.timeout or default_timeout
            item["timeout"] = int(limit) if float(limit).is_integer() else limit
        found.append(item)
    return found
