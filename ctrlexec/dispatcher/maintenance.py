"""One maintenance pass (`ced maintain`) and the loop `dispatcher serve`
runs every `cert_check_interval` seconds.

Phases, each independent (a failing phase is logged `maintain PHASE=...
ERROR=...` and the next one still runs), in 0.12's order:

1. ping every registered agent, renewing the certificates past half-life;
2. rotate the dispatcher certificate when at most `cert_renewal_days` remain;
3. broadcast the current serial to pending and unknown agents;
4. after the overlap: pending agents become stale;
5. after the overlap: the old serial is retired from the agents' maps;
6. purge expired run records.

Dispatchers sharing one database (a fleet) divide them: the node holding
the maintenance lease runs every phase; each of the others runs, on the
same schedule, the phases about its own certificate (rotate, broadcast,
retire; `OWN_PHASES`), which only it can do: its key, its certificate and
its `rotation.json` are its own files. Without that, a node's certificate
would renew only while it led, and its old serial would stay in the
agents' maps after a rotation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import log
from ..core import results
from ..errors import CtrlExecError, StateError
from . import renewal, rotation
from .engine import Engine
from .fanout import fan_out
from .runstore import RunStore

if TYPE_CHECKING:
    from ..state.interface import Leader

PHASES = ("ping", "rotate", "broadcast", "expire", "retire", "purge")
OWN_PHASES = ("rotate", "broadcast", "retire")


@dataclass
class Summary:
    agents: int = 0
    pinged: int = 0
    unreachable: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    renew_failed: dict[str, str] = field(default_factory=dict)
    rotated: dict | None = None
    confirmed: list[str] = field(default_factory=list)
    broadcast_failed: dict[str, str] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    retired: dict | None = None
    purged: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.errors or self.renew_failed or self.broadcast_failed)

    def to_json(self) -> dict:
        return {
            "ok": 1 if self.ok else 0,
            "agents": self.agents,
            "pinged": self.pinged,
            "unreachable": self.unreachable,
            "renewed": self.renewed,
            "renew_failed": self.renew_failed,
            "rotated": self.rotated,
            "confirmed": self.confirmed,
            "broadcast_failed": self.broadcast_failed,
            "stale": self.stale,
            "retired": self.retired,
            "purged": self.purged,
            "errors": self.errors,
        }


def _ping_all(engine: Engine, settings, summary: Summary, now: float) -> None:
    names = engine.registry.names()
    summary.agents = len(names)
    targets = rotation.targets_for(engine, settings, names)
    reqid = engine.new_reqid()

    def one(target) -> results.HostResult:
        reply, failure, rtt = engine.post(target, "/ping", {"reqid": reqid})
        return results.ping_result(target.name, rtt, reply, failure, settings.read_timeout, reqid)

    answers = fan_out(targets, one, settings.max_parallel)
    for answer in answers:
        if answer.failed:
            summary.unreachable.append(answer.host)
        else:
            summary.pinged += 1
    for outcome in renewal.renew_due(engine, settings, targets, answers, now):
        if outcome.ok:
            summary.renewed.append(outcome.host)
        else:
            summary.renew_failed[outcome.host] = outcome.detail


def maintain(
    engine: Engine,
    settings,
    runs_dir,
    now: float | None = None,
    phases: tuple[str, ...] = PHASES,
) -> Summary:
    now = time.time() if now is None else now
    summary = Summary()

    def rotate() -> None:
        done = rotation.check_and_rotate(settings, engine.registry, now)
        if done is not None:
            engine.reset_context()
            summary.rotated = {
                "old_serial": done.old_serial,
                "new_serial": done.new_serial,
                "overlap_expires": done.overlap_expires,
            }

    def broadcast() -> None:
        sent = rotation.broadcast(engine, settings, now)
        summary.confirmed = sent.confirmed
        summary.broadcast_failed = sent.failed

    def expire() -> None:
        summary.stale = rotation.expire_stale(engine.registry, settings, now)

    def retire() -> None:
        retired = rotation.retire(engine, settings, now)
        if retired is not None:
            summary.retired = {
                "serial": retired.serial,
                "removed": retired.removed,
                "failed": retired.failed,
            }

    def purge() -> None:
        runs = engine.state.runs if engine.state is not None else RunStore(runs_dir)
        summary.purged = runs.purge()

    steps: dict[str, Callable[[], None]] = {
        "ping": lambda: _ping_all(engine, settings, summary, now),
        "rotate": rotate,
        "broadcast": broadcast,
        "expire": expire,
        "retire": retire,
        "purge": purge,
    }
    for phase in phases:
        try:
            steps[phase]()
        except (CtrlExecError, OSError, ValueError) as exc:
            summary.errors[phase] = str(exc)[:300]
            log.event("maintain", log.ERR, PHASE=phase, ERROR=str(exc)[:200])
        except Exception as exc:  # one phase's bug must not stop the others
            summary.errors[phase] = f"{type(exc).__name__}: {exc}"[:300]
            log.event("maintain", log.ERR, PHASE=phase, ERROR=f"{type(exc).__name__}: {exc}")
    if phases == PHASES:
        log.event("maintain", log.INFO, AGENTS=summary.agents, PINGED=summary.pinged)
    else:
        log.event("maintain", log.INFO, PHASES=",".join(phases))
    return summary


def maintain_once(engine: Engine, settings, runs_dir) -> Summary:
    """`ced maintain`: one pass, if no other dispatcher of the fleet is
    doing maintenance (it holds the lease while its `dispatcher serve`
    runs); StateError otherwise."""
    leader = engine.state.leader("maintenance") if engine.state is not None else None
    if leader is not None and not leader.try_acquire():
        raise StateError(
            "a dispatcher serve of the fleet holds the maintenance lease and runs a pass "
            "every cert_check_interval seconds; stop it to run one by hand"
        )
    try:
        return maintain(engine, settings, runs_dir)
    finally:
        if leader is not None:
            leader.release()


class MaintenanceLoop:
    """`maintain` at start and then every `cert_check_interval` seconds, on a
    daemon thread, until `stop()`.

    Dispatchers sharing one database: the pass runs on the node holding the
    maintenance lease. The others try to take it every `fleet_sync_interval`
    seconds (at most every pass interval), so when the holder dies, a
    survivor takes over within one of those rounds, logs `maintain
    LEASE=taken` and runs a pass at once; they log `maintain SKIPPED=...`
    once per pass interval and run the phases of their own certificate
    (`OWN_PHASES`). The holder checks its lease as often, so a lease
    lost with its database session (a failover) is taken again."""

    def __init__(
        self,
        engine: Engine,
        settings,
        runs_dir,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engine = engine
        self.settings = settings
        self.runs_dir = runs_dir
        self.interval = float(interval or settings.cert_check_interval)
        self.shared = engine.state is not None and engine.state.kind != "files"
        retry = float(getattr(settings, "fleet_sync_interval", self.interval))
        self.retry = min(retry, self.interval) if self.shared else self.interval
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0

    def start(self) -> MaintenanceLoop:
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        leader = self.engine.state.leader("maintenance") if self.engine.state else None
        leading = False
        due = self.clock()  # the first pass (or SKIPPED line) at once
        while not self._stop.is_set():
            due, leading = self.step(leader, leading, due)
            self._stop.wait(max(0.0, min(self.retry, due - self.clock())))

    def step(self, leader: Leader | None, leading: bool, due: float) -> tuple[float, bool]:
        """One wake-up: take or check the lease, run the pass when it is due
        (or at once on taking the lease). Returns the next due time and
        whether this node leads."""
        now = self.clock()
        try:
            held = leader is None or leader.try_acquire()
            if held and (not leading or now >= due):
                if self.shared and not leading:
                    log.event("maintain", log.INFO, LEASE="taken")
                maintain(self.engine, self.settings, self.runs_dir)
                self.passes += 1
                return now + self.interval, True
            if not held and now >= due:
                log.event("maintain", log.INFO, SKIPPED="another node leads")
                maintain(self.engine, self.settings, self.runs_dir, phases=OWN_PHASES)
                return now + self.interval, False
            return due, held
        except Exception as exc:
            log.event("maintain", log.ERR, PHASE="loop", ERROR=f"{type(exc).__name__}: {exc}")
            return (now + self.interval if now >= due else due), False

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)  # a daemon: a pass in flight dies with the process
