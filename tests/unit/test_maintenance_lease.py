"""When the maintenance loop runs a pass on a fleet sharing a database
(dispatcher/maintenance.py MaintenanceLoop.step), on an injected clock: a
follower retries the lease every fleet_sync_interval and runs a pass as soon
as it takes it, and meanwhile runs its own certificate's phases once per
cert_check_interval; the holder runs a whole pass every cert_check_interval."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ctrlexec import log
from ctrlexec.dispatcher import maintenance


class Lease:
    def __init__(self, free: bool):
        self.free = free

    def try_acquire(self) -> bool:
        return self.free

    def release(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(monkeypatch):
    passes: list[float] = []
    events: list[tuple[str, dict]] = []
    clock = Clock()
    own: list[float] = []

    def maintain(*args, phases=maintenance.PHASES):
        (passes if phases == maintenance.PHASES else own).append(clock.now)
        assert phases in (maintenance.PHASES, maintenance.OWN_PHASES)

    monkeypatch.setattr(maintenance, "maintain", maintain)

    def seen(action, level, fields):
        events.append((action, dict(fields)))

    monkeypatch.setattr(log._state, "observers", [*log._state.observers, seen])

    def loop(kind: str) -> maintenance.MaintenanceLoop:
        engine = SimpleNamespace(state=SimpleNamespace(kind=kind))
        settings = SimpleNamespace(cert_check_interval=3600, fleet_sync_interval=5)
        return maintenance.MaintenanceLoop(engine, settings, "/nonexistent", clock=clock)

    return SimpleNamespace(passes=passes, own=own, events=events, clock=clock, loop=loop)


def test_a_follower_takes_the_lease_within_one_round_and_runs_a_pass_at_once(world):
    loop = world.loop("postgresql")
    assert (loop.interval, loop.retry) == (3600.0, 5.0)
    lease = Lease(free=False)
    due, leading = loop.step(lease, False, world.clock.now)
    assert (due, leading) == (world.clock.now + 3600, False)
    assert world.events == [("maintain", {"SKIPPED": "another node leads"})]
    assert world.own == [world.clock.now]  # its own certificate's phases, on schedule
    world.clock.now += 5
    assert loop.step(lease, leading, due) == (due, False)  # quiet retry
    assert world.passes == [] and len(world.events) == 1 and len(world.own) == 1
    lease.free = True  # the holder died
    world.clock.now += 5
    due, leading = loop.step(lease, leading, due)
    assert world.passes == [world.clock.now] and leading
    assert due == world.clock.now + 3600
    assert world.events[-1] == ("maintain", {"LEASE": "taken"})


def test_the_holder_runs_one_pass_per_interval_and_retakes_a_lost_lease(world):
    loop = world.loop("postgresql")
    lease = Lease(free=True)
    due, leading = loop.step(lease, False, world.clock.now)
    assert len(world.passes) == 1
    world.clock.now += 5
    assert loop.step(lease, leading, due) == (due, True)
    assert len(world.passes) == 1
    world.clock.now = due
    due, leading = loop.step(lease, leading, due)
    assert len(world.passes) == 2
    lease.free = False  # its session ended (a failover) and another node took it
    world.clock.now += 5
    due, leading = loop.step(lease, leading, due)
    assert not leading and len(world.passes) == 2
    lease.free = True
    world.clock.now += 5
    due, leading = loop.step(lease, leading, due)
    assert leading and len(world.passes) == 3


def test_a_database_error_is_logged_and_retried(world):
    loop = world.loop("postgresql")

    class Down(Lease):
        def try_acquire(self) -> bool:
            raise OSError("connection refused")

    due, leading = loop.step(Down(free=False), False, world.clock.now)
    assert not leading and due == world.clock.now + 3600
    assert world.events[-1][1]["PHASE"] == "loop"


def test_the_file_backend_keeps_one_pass_per_interval(world):
    loop = world.loop("files")
    assert loop.retry == loop.interval == 3600.0
    _, leading = loop.step(None, False, world.clock.now)
    assert len(world.passes) == 1 and leading
    assert not [e for e in world.events if "LEASE" in e[1]]
