"""Dispatcher certificate rotation with an overlap (protocol.md §6).

Theory of operation. Agents trust the dispatcher by certificate serial, so a
new dispatcher certificate must be announced to every agent before the old
one is dropped:

1. rotate: keep the old key and certificate (`<cert>.previous`,
   `<key>.previous`), issue a new pair (`<key>.next`, then `<cert>.next`),
   install it over `cert`/`key`, mark every registered agent `pending` and
   write `rotation.json` (current and previous serial, overlap end);
2. broadcast: `POST /rotate-serial {"serial": <new>, "action": "add"}` to
   each pending (or unknown) agent, at its registry address and port,
   presenting the OLD certificate, which the agent still trusts (0.12
   presents the new one and every agent answers 403); an ok answer makes
   the agent `current`;
3. after `cert_overlap_days`: agents still pending become `stale` (they
   must pair again), and the old serial is removed from every current
   agent's map (`action: remove`, presenting the NEW certificate); the
   kept old files are deleted and `rotation.json` records the retirement.

Crash safety: every file is replaced atomically, and `recover()` (run
before any rotation work) completes an interrupted step from what is on
disk: a `.next` certificate means the install did not finish (a lone
`.next` key means the issue did not finish and is dropped); a `.previous`
certificate whose serial differs from the installed one while
`rotation.json` does not name the installed serial means the agents were
not yet marked. So a kill at any instant leaves the old identity or the new
one, never a certificate that does not match its key.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import log
from ..core import lifecycle
from ..core.fleet_trust import FLEET_FIELD, record_added, record_removed
from ..core.results import failure_text, known_failure
from ..core.timefmt import iso_utc
from ..core.x509 import facts_from_pem
from ..errors import CtrlExecError, StateError
from ..store import atomic_write, read_json_object, remove
from .engine import Engine
from .fanout import fan_out
from .identity import dispatcher_id, dispatcher_serial
from .pki_setup import key_owner
from .registry import Target

if TYPE_CHECKING:
    from ..state.interface import AgentRegistry


@dataclass(frozen=True)
class DispatcherFiles:
    cert: Path
    key: Path

    @classmethod
    def of(cls, settings) -> DispatcherFiles:
        return cls(Path(settings.cert), Path(settings.key))

    def _sibling(self, path: Path, suffix: str) -> Path:
        return path.with_name(path.name + suffix)

    @property
    def previous_cert(self) -> Path:
        return self._sibling(self.cert, ".previous")

    @property
    def previous_key(self) -> Path:
        return self._sibling(self.key, ".previous")

    @property
    def next_cert(self) -> Path:
        return self._sibling(self.cert, ".next")

    @property
    def next_key(self) -> Path:
        return self._sibling(self.key, ".next")


@dataclass(frozen=True)
class Rotated:
    old_serial: str
    new_serial: str
    overlap_expires: str
    agents: int


@dataclass
class Broadcast:
    serial: str = ""
    confirmed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Retired:
    serial: str
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


# --- state ----------------------------------------------------------------------


def load_state(path: str | os.PathLike) -> lifecycle.RotationState | None:
    """rotation.json, or None when no rotation was ever made. A corrupt file
    is logged (`rotation-state-corrupt`) and raises StateError: rotation
    work stops until someone looks at it."""
    try:
        data = read_json_object(path)
        return None if data is None else lifecycle.RotationState.from_json(data)
    except (StateError, ValueError) as exc:
        log.event(
            "rotation-state-corrupt",
            log.ERR,
            PATH=str(path),
            ERROR=str(exc)[:200],
            REASON="JSON parse failed - rotation state unreadable",
        )
        raise StateError(f"{path}: rotation state unreadable ({exc})") from None


def save_state(path: str | os.PathLike, state: lifecycle.RotationState) -> None:
    import json

    text = json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode("ascii"), 0o640)


def _serial_of(path: Path) -> str:
    return dispatcher_serial(str(path))


# --- rotate ---------------------------------------------------------------------


def _finish_install(files: DispatcherFiles) -> None:
    if files.next_cert.exists():
        if files.next_key.exists():
            os.replace(files.next_key, files.key)
        os.replace(files.next_cert, files.cert)
    elif files.next_key.exists():
        remove(files.next_key)  # the new certificate was never written


def _record_rotation(settings, registry: AgentRegistry, now: float) -> Rotated | None:
    files = DispatcherFiles.of(settings)
    if not files.previous_cert.exists():
        return None
    old, new = _serial_of(files.previous_cert), _serial_of(files.cert)
    state = load_state(settings.rotation_file)
    if old == new or (state is not None and state.current_serial == new):
        return None
    stamp = iso_utc(now)
    names = registry.names()
    for name in names:

        def change(record: dict) -> None:
            record["serial_status"] = lifecycle.PENDING
            record["serial_broadcast"] = stamp

        try:
            registry.update(name, change)
        except CtrlExecError:
            pass  # removed meanwhile
    rotation = lifecycle.new_rotation(new, old, now, settings.cert_overlap_days)
    save_state(settings.rotation_file, rotation)
    log.event(
        "cert-rotated",
        log.INFO,
        OLD_SERIAL=old,
        NEW_SERIAL=new,
        OVERLAP_EXPIRES=rotation.overlap_expires,
        AGENTS=len(names),
    )
    return Rotated(old, new, rotation.overlap_expires, len(names))


def recover(settings, registry: AgentRegistry, now: float | None = None) -> Rotated | None:
    """Complete a rotation interrupted by a crash (idempotent)."""
    _finish_install(DispatcherFiles.of(settings))
    return _record_rotation(settings, registry, time.time() if now is None else now)


def overlap_in_progress(settings) -> lifecycle.RotationState | None:
    state = load_state(settings.rotation_file)
    return state if state is not None and state.previous_serial else None


def rotate(
    settings, registry: AgentRegistry, now: float | None = None, force: bool = False
) -> Rotated:
    """A new dispatcher key and certificate now; agents marked pending."""
    from ..pki import ca

    now = time.time() if now is None else now
    files = DispatcherFiles.of(settings)
    recover(settings, registry, now)
    running = overlap_in_progress(settings)
    if running is not None and not force:
        raise StateError(
            f"the previous rotation's overlap runs until {running.overlap_expires} "
            f"(old serial {running.previous_serial} still trusted); rotating again now "
            "cuts off agents that have not confirmed the current serial (--force does it anyway)"
        )
    try:
        old_key, old_cert = files.key.read_bytes(), files.cert.read_bytes()
    except FileNotFoundError:
        raise StateError(
            f"no dispatcher certificate at {files.cert}: run 'ced setup-ctrl-exec' first"
        ) from None
    owner = key_owner(settings)
    atomic_write(files.previous_key, old_key, 0o600, owner)
    atomic_write(files.previous_cert, old_cert, 0o644)
    key_pem, issued = ca.issue_key_and_cert(
        ca.CAPaths(Path(settings.ca_dir)),
        ca.DISPATCHER_COMMON_NAME,
        settings.key_type,
        days=settings.cert_days or lifecycle.DISPATCHER_DAYS,
        now=now,
    )
    atomic_write(files.next_key, key_pem, 0o600, owner)
    atomic_write(files.next_cert, issued.cert_pem.encode("ascii"), 0o644)
    _finish_install(files)
    rotated = _record_rotation(settings, registry, now)
    if rotated is None:  # cannot happen: a new certificate has a new serial
        raise StateError("the rotated certificate has the old serial")
    return rotated


def check_and_rotate(settings, registry: AgentRegistry, now: float | None = None) -> Rotated | None:
    """Rotate when at most `cert_renewal_days` remain (and no overlap runs)."""
    now = time.time() if now is None else now
    recover(settings, registry, now)
    try:
        facts = facts_from_pem(Path(settings.cert).read_text("ascii", "replace"))
    except (OSError, ValueError) as exc:
        log.event("cert-check-error", log.WARNING, ERROR=str(exc)[:200])
        raise StateError(f"cannot read the dispatcher certificate {settings.cert}: {exc}") from None
    left = lifecycle.days_left(facts.not_after, now)
    log.event("cert-check", log.INFO, DAYS_LEFT=left, THRESHOLD=settings.cert_renewal_days)
    if not lifecycle.rotation_due(facts.not_after, now, settings.cert_renewal_days):
        return None
    if overlap_in_progress(settings) is not None:
        log.event("cert-check-warn", log.WARNING, ERROR="rotation due but an overlap is running")
        return None
    log.event("cert-renewal-start", log.INFO, DAYS_LEFT=left)
    try:
        return rotate(settings, registry, now)
    except Exception as exc:
        log.event("cert-rotation-fail", log.ERR, ERROR=str(exc)[:200])
        raise


# --- broadcast, retire, stale ---------------------------------------------------


def targets_for(engine: Engine, settings, names: list[str]) -> list[Target]:
    targets = []
    for name in names:
        try:
            targets.extend(engine.registry.resolve([name], default_port=settings.port))
        except CtrlExecError:
            continue  # unregistered meanwhile
    return targets


def _old_context(settings):
    from ..pki.tls import dispatcher_client_context

    files = DispatcherFiles.of(settings)
    if not (files.previous_cert.exists() and files.previous_key.exists()):
        return None
    try:
        return dispatcher_client_context(
            str(files.previous_cert), str(files.previous_key), settings.ca
        )
    except (OSError, ValueError) as exc:
        log.event("broadcast-error", log.WARNING, ERROR=f"old certificate unusable: {exc}")
        return None


def _answer(reply, failure, settings) -> str | None:
    """None when the agent answered ok, else why not."""
    if reply is None:
        return failure_text(known_failure(failure), settings.read_timeout, "rotate")
    if reply.ok and lifecycle.reply_ok(reply.body) is not None:
        return None
    return f"HTTP {reply.status}: " + lifecycle.reply_error(reply.body, "not ok")


def broadcast(engine: Engine, settings, now: float | None = None) -> Broadcast:
    """Announce the current serial to every pending or unknown agent."""
    now = time.time() if now is None else now
    registry = engine.registry
    state = load_state(settings.rotation_file)
    current = state.current_serial if state else dispatcher_serial(settings.cert)
    names = [
        str(r.get("hostname"))
        for r in registry.records()
        if r.get("serial_status") in (lifecycle.PENDING, lifecycle.UNKNOWN)
    ]
    result = Broadcast(current)
    if not names:
        return result
    old = _old_context(settings) if state and state.previous_serial else None
    log.event(
        "serial-broadcast",
        log.INFO,
        HOSTS=",".join(names),
        SERIAL=current,
        DISPATCHER=dispatcher_id(settings.dispatcher_id),
    )
    payload = {"serial": current, "action": lifecycle.ADD}

    def one(target: Target) -> tuple[str, str | None]:
        reply, failure, _ = engine.post(target, "/rotate-serial", payload, old)
        if old is not None and reply is not None and reply.status == 403:
            # Paired after the rotation: it knows only the new certificate.
            reply, failure, _ = engine.post(target, "/rotate-serial", payload)
        return target.name, _answer(reply, failure, settings)

    stamp = iso_utc(now)
    for name, error in fan_out(targets_for(engine, settings, names), one, settings.max_parallel):
        if error is None:

            def change(record: dict) -> None:
                if FLEET_FIELD in record:
                    record_added(record, [current])
                record["serial_status"] = lifecycle.CURRENT
                record["dispatcher_serial"] = current
                record["serial_confirmed"] = stamp

            try:
                registry.update(name, change)
            except CtrlExecError as exc:
                error = f"confirmed, but the registry was not updated: {exc}"
        if error is None:
            result.confirmed.append(name)
            log.event("serial-confirmed", log.INFO, AGENT=name)
        else:
            result.failed[name] = error
            log.event("serial-broadcast-fail", log.WARNING, AGENT=name, ERROR=error[:200])
    return result


def expire_stale(registry: AgentRegistry, settings, now: float | None = None) -> list[str]:
    """After the overlap, agents that never confirmed become `stale` (each
    by the overlap of the rotation that made it pending: lifecycle.pending_expired)."""
    now = time.time() if now is None else now
    state = load_state(settings.rotation_file)
    stale = []
    for record in list(registry.records()):
        if record.get("serial_status") != lifecycle.PENDING:
            continue
        if not lifecycle.pending_expired(record, state, now, settings.cert_overlap_days):
            continue
        name = str(record.get("hostname"))

        def change(rec: dict) -> None:
            if rec.get("serial_status") == lifecycle.PENDING:
                rec["serial_status"] = lifecycle.STALE

        try:
            registry.update(name, change)
        except CtrlExecError:
            continue
        stale.append(name)
        log.event(
            "serial-stale",
            log.WARNING,
            AGENT=name,
            REASON="overlap window expired without confirmation",
        )
    return stale


def retire(engine: Engine, settings, now: float | None = None) -> Retired | None:
    """After the overlap: remove the old serial from every current agent's
    map (new certificate presented), one attempt, then forget it."""
    now = time.time() if now is None else now
    state = load_state(settings.rotation_file)
    if state is None or not state.previous_serial or not state.overlap_over(now):
        return None
    result = Retired(state.previous_serial)
    names = [
        str(r.get("hostname"))
        for r in engine.registry.records()
        if r.get("serial_status") == lifecycle.CURRENT
    ]
    if names:
        log.event("serial-retire", log.INFO, HOSTS=",".join(names), SERIAL=state.previous_serial)
    payload = {"serial": state.previous_serial, "action": lifecycle.REMOVE}

    def one(target: Target) -> tuple[str, str | None]:
        reply, failure, _ = engine.post(target, "/rotate-serial", payload)
        return target.name, _answer(reply, failure, settings)

    for name, error in fan_out(targets_for(engine, settings, names), one, settings.max_parallel):
        if error is None:
            result.removed.append(name)
            _forget_in_fleet_record(engine.registry, name, result.serial)
        else:
            result.failed[name] = error
            log.event("serial-retire-error", log.WARNING, AGENT=name, ERROR=error[:200])
    save_state(settings.rotation_file, state.retired(now))
    files = DispatcherFiles.of(settings)
    remove(files.previous_key)
    remove(files.previous_cert)
    return result


def _forget_in_fleet_record(registry: AgentRegistry, name: str, serial: str) -> None:
    """A fleet's record lists the serials the agent trusts: not this one now."""
    try:
        if FLEET_FIELD in (registry.get(name) or {}):
            registry.update(name, lambda record: record_removed(record, serial))
    except CtrlExecError:
        pass  # unregistered meanwhile


def serial_status(settings, registry: AgentRegistry) -> dict:
    state = load_state(settings.rotation_file)
    agents = [
        {
            "hostname": r.get("hostname"),
            "serial_status": r.get("serial_status") or lifecycle.UNKNOWN,
            "serial_confirmed": r.get("serial_confirmed") or "",
            "dispatcher_serial": r.get("dispatcher_serial") or "",
        }
        for r in registry.records()
    ]
    return {"state": None if state is None else state.to_json(), "agents": agents}


def rotate_and_broadcast(
    engine: Engine, settings, force: bool = False, now: float | None = None
) -> tuple[Rotated, Broadcast]:
    """`ced rotate-cert`: rotate now, then announce the new serial."""
    try:
        rotated = rotate(settings, engine.registry, now, force)
    except Exception as exc:
        log.event("cert-rotation-fail", log.ERR, ERROR=str(exc)[:200])
        raise
    engine.reset_context()
    return rotated, broadcast(engine, settings, now)
