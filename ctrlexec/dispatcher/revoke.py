"""`ced revoke`: cut a certificate off.

The serial goes into the dispatcher's list (`<ca_dir>/revoked-serials`),
which every dispatcher connection checks after the handshake: an agent
presenting a revoked certificate is never dispatched to, by `ced` or by a
running API (the list is re-read when it changes, no restart). With
`--push` the serial is also sent to every registered agent
(`POST /revoke-serial`, our extension; a trusted dispatcher only), which
adds it to its own revocation list and refuses that certificate from its
next connection on: this is how a lost or compromised dispatcher is cut off
(a dispatcher is revocable like any certificate). Agents that cannot be
reached, or that do not know the endpoint (0.12 agents answer 404), are
reported: their revoked-serials file must be edited by hand.

Agent serials recorded at approval and renewal let `--agent NAME` find the
certificate of a host that is already gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import log
from ..core import lifecycle
from ..core.results import failure_text, known_failure
from ..core.serial import normalise_received, serial_to_hex
from ..errors import CtrlExecError
from ..pki import revocation
from .engine import REVOKED_SERIALS, Engine
from .fanout import fan_out
from .identity import dispatcher_serial
from .pairing_decide import REVOKED_KEYS


@dataclass
class Revoked:
    serials: list[str]
    new: bool
    pushed: list[str] = field(default_factory=list)
    not_pushed: dict[str, str] = field(default_factory=dict)


def serials_of_agent(engine: Engine, name: str) -> list[str]:
    record = engine.registry.get(name)
    if record is None:
        raise CtrlExecError(f"unknown agent: {name}")
    found = []
    for key in ("cert_serial", "cert_serial_next"):
        value = record.get(key)
        if isinstance(value, str) and value:
            found.append(serial_to_hex(value))
    if not found:
        raise CtrlExecError(
            f"the registry has no certificate serial for '{name}' (paired by 0.12 or an "
            "older release): revoke by SERIAL, read from the agent's certificate"
        )
    return found


def revoke(
    engine: Engine,
    settings,
    agent: str | None = None,
    serial: str | None = None,
    push: bool = False,
    force: bool = False,
) -> Revoked:
    if agent:
        keys = serials_of_agent(engine, agent)
    else:
        key = serial_to_hex(serial or "")
        if not key:
            raise CtrlExecError(f"not a certificate serial: {serial!r}")
        keys = [key]
    own = normalise_received(dispatcher_serial(settings.cert))
    if own in keys and not force:
        raise CtrlExecError(
            f"{own} is this dispatcher's own certificate: revoking it cuts this dispatcher "
            "off from every agent it is pushed to (rotate first; --force to do it anyway)"
        )
    path = os.path.join(settings.ca_dir, REVOKED_SERIALS)
    note = f"agent {agent}" if agent else "by serial"
    new = False
    for key in keys:
        new |= revocation.add(path, lifecycle.list_line(key), note)
        log.event("revoke", log.WARNING, SERIAL=key, AGENT=agent or "-")
    record = engine.registry.get(agent) if agent else None
    digest = (record or {}).get("cert_key_sha256")
    if isinstance(digest, str) and digest:
        # The host's key is never certified again (pairing, approval).
        revocation.add_key(os.path.join(settings.ca_dir, REVOKED_KEYS), digest, note)
    shared = engine.state.revocations if engine.state is not None else None
    if shared is not None:  # the fleet's list: every node adds it to its files
        shared.add("serial", list(keys), note)
        if isinstance(digest, str) and digest:
            shared.add("key", [digest.lower()], note)
    result = Revoked(keys, new)
    if push:
        _push(engine, settings, keys, result, skip=agent)
    return result


def _push(engine: Engine, settings, keys: list[str], result: Revoked, skip: str | None) -> None:
    names = [n for n in engine.registry.names() if n != skip]
    targets = []
    for name in names:
        try:
            targets.extend(engine.registry.resolve([name], default_port=settings.port))
        except CtrlExecError as exc:
            result.not_pushed[name] = str(exc)

    def one(target) -> tuple[str, str | None]:
        for key in keys:
            reply, failure, _ = engine.post(target, "/revoke-serial", {"serial": key})
            if reply is None:
                return target.name, failure_text(
                    known_failure(failure), settings.read_timeout, "revoke"
                )
            if reply.status == 404:
                return target.name, "the agent has no /revoke-serial (0.12): edit its list"
            if not reply.ok or lifecycle.reply_ok(reply.body) is None:
                return target.name, f"HTTP {reply.status}: " + lifecycle.reply_error(
                    reply.body, "not ok"
                )
        return target.name, None

    for name, error in fan_out(targets, one, settings.max_parallel):
        if error is None:
            result.pushed.append(name)
        else:
            result.not_pushed[name] = error
            log.event("revoke-push-fail", log.WARNING, AGENT=name, ERROR=error[:200])
