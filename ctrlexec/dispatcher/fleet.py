"""Several dispatchers, one fleet: every node's serial in every agent's map.

Each `dispatcher serve` of a fleet (nodes sharing one PostgreSQL state
database) has its own certificate and `dispatcher_id` and announces both in
the database. An agent learns one dispatcher at pairing: the node that
approved it (0.12's approval carries one serial). The rest of the fleet is
added with 0.12's own message for a new trusted serial, `POST
/rotate-serial {"serial": S, "action": "add"}`, sent by a node the agent
already trusts; the agent stores S under that caller's id and reloads its
map. Nothing new travels on the wire, so a 0.12 agent joins a fleet too.

The registry record keeps `fleet_serials` (ours, core/fleet_trust.py): the
serials this agent's map is known to hold. Each node, every
`fleet_sync_interval` seconds, sends what is missing to the agents whose map
holds its own serial; an agent nobody can reach yet (not restarted after
pairing, down) is tried again on the next round.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .. import log
from ..core import lifecycle
from ..core.fleet_trust import missing_serials, record_added
from ..errors import CtrlExecError
from .engine import Engine
from .fanout import fan_out
from .identity import dispatcher_id, dispatcher_serial
from .registry import Target
from .rotation import _answer

# Seconds since its last announcement after which a node's serial is no
# longer added to agents (at least ten rounds).
MEMBER_TTL = 3600.0


@dataclass
class Spread:
    added: dict[str, list[str]] = field(default_factory=dict)  # agent -> serials added
    failed: dict[str, str] = field(default_factory=dict)  # agent -> why


def spread_trust(engine: Engine, settings, own: str, fleet: list[str]) -> Spread:
    """Add every fleet serial to the maps of the agents that trust `own`."""
    result = Spread()
    work: dict[str, list[str]] = {}
    for record in engine.registry.records():
        missing = missing_serials(record, own, fleet)
        if missing:
            work[str(record.get("hostname"))] = missing
    if not work:
        return result
    targets: list[Target] = []
    for name in sorted(work):
        try:
            targets.extend(engine.registry.resolve([name], default_port=settings.port))
        except CtrlExecError:
            continue  # unregistered meanwhile

    def one(target: Target) -> tuple[str, list[str], str | None]:
        added: list[str] = []
        for serial in work[target.name]:
            payload = {"serial": serial, "action": lifecycle.ADD}
            reply, failure, _ = engine.post(target, "/rotate-serial", payload)
            error = _answer(reply, failure, settings)
            if error is not None:
                return target.name, added, error
            added.append(serial)
        return target.name, added, None

    for name, added, error in fan_out(targets, one, settings.max_parallel):
        if added:
            result.added[name] = added

            def change(record: dict, added: list[str] = added) -> None:
                record_added(record, added)

            try:
                engine.registry.update(name, change)
            except CtrlExecError as exc:
                error = error or str(exc)
            log.event("fleet-trust", log.INFO, AGENT=name, SERIALS=",".join(added))
        if error is not None:
            result.failed[name] = error
            log.event("fleet-trust", log.WARNING, AGENT=name, ERROR=error[:200])
    return result


def sync_once(engine: Engine, settings) -> Spread:
    """Announce this node, then spread the fleet's serials."""
    own = dispatcher_serial(settings.cert)
    if engine.state.revocations is not None:
        from ..state.revocations import FileRevocations, reconcile

        gained = reconcile(FileRevocations(settings.ca_dir), engine.state.revocations)
        if gained["local"]:
            log.event("fleet-revocations", log.INFO, ADDED=gained["local"])
    fleet = engine.state.fleet
    fleet.announce(dispatcher_id(settings.dispatcher_id), own)
    # A node that stopped announcing itself (decommissioned, or down for
    # long) is not added to more agents; it is again once it is back.
    recent = max(MEMBER_TTL, 10 * float(settings.fleet_sync_interval))
    serials = sorted(set(fleet.members(seen_within=recent).values()) | {own})
    if serials == [own]:
        return Spread()  # alone: nothing to add anywhere
    return spread_trust(engine, settings, own, serials)


class FleetLoop:
    """`sync_once` at start and every `fleet_sync_interval` seconds, on a
    daemon thread, until `stop()` (dispatcher serve on a shared database)."""

    def __init__(self, engine: Engine, settings):
        self.engine = engine
        self.settings = settings
        self.interval = float(settings.fleet_sync_interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FleetLoop:
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sync_once(self.engine, self.settings)
            except Exception as exc:  # the next round tries again
                log.event("fleet-trust", log.ERR, ERROR=f"{type(exc).__name__}: {exc}"[:300])
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
