"""What a registry record says about the dispatcher serials an agent's map
holds, when several dispatchers share one state database.

The record keeps `fleet_serials` (ours): the serials the agent is known to
trust. A record without it (the file backend, or an agent no fleet round
has reached yet) holds `dispatcher_serial` only. Every change of an
agent's map that a node makes through `/rotate-serial` (a fleet round's
add, a rotation's add, a retirement's remove) is written here too, so the
next round knows what the agent has.
"""

from __future__ import annotations

from typing import Any

FLEET_FIELD = "fleet_serials"
# One agent's map grows by at most this many serials in one round.
MAX_FLEET = 64


def known_serials(record: dict[str, Any]) -> list[str]:
    value = record.get(FLEET_FIELD)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    serial = record.get("dispatcher_serial")
    return [serial] if isinstance(serial, str) and serial else []


def missing_serials(record: dict[str, Any], own: str, fleet: list[str]) -> list[str]:
    """What to add to this agent's map, when this node can (it is trusted)."""
    known = known_serials(record)
    if own not in known:
        return []
    return [serial for serial in fleet if serial not in known][:MAX_FLEET]


def record_added(record: dict[str, Any], added: list[str]) -> None:
    """The agent's map now holds `added` too."""
    known = known_serials(record)
    record[FLEET_FIELD] = known + [s for s in added if s not in known]


def record_removed(record: dict[str, Any], serial: str) -> None:
    """The agent's map no longer holds `serial` (a fleet record only: a
    record without the field is left as it is)."""
    if FLEET_FIELD in record:
        record[FLEET_FIELD] = [s for s in known_serials(record) if s != serial]
