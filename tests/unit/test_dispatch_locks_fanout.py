"""host:script locks and the bounded fan-out."""

import os
import threading

import pytest

from ctrlexec.dispatcher import locks as locks_mod
from ctrlexec.dispatcher.fanout import fan_out
from ctrlexec.dispatcher.locks import HostScriptLocks, lock_name
from ctrlexec.errors import Locked


@pytest.mark.parametrize(
    "host, script, name",
    [
        ("web-01", "backup", "web-01--backup.lock"),
        ("web.example.org", "a_b", "web.example.org--a_b.lock"),
        ("we b/../x", "s:1", "we_b_.._x--s_1.lock"),
    ],
)
def test_lock_file_names_are_0_12s(host, script, name):
    assert lock_name(host, script) == name


def test_locks_are_held_until_released(tmp_path):
    locks = HostScriptLocks(tmp_path / "locks")
    held = locks.acquire(["web-01", "db-02"], "backup")
    assert locks.held() == [
        {"host": "db-02", "script": "backup", "state": "held"},
        {"host": "web-01", "script": "backup", "state": "held"},
    ]
    assert oct((tmp_path / "locks" / "web-01--backup.lock").stat().st_mode & 0o777) == "0o660"
    with pytest.raises(Locked) as conflict:
        locks.acquire(["web-01", "other", "db-02"], "backup")
    assert conflict.value.conflicts == ["web-01:backup", "db-02:backup"]
    # all-or-nothing: the free host was not left locked by the failed attempt
    assert {lock["host"] for lock in locks.held()} == {"web-01", "db-02"}
    different_script = locks.acquire(["web-01"], "restore")
    different_script.release()
    held.release()
    assert locks.held() == []
    locks.acquire(["web-01"], "backup").release()


HOLDER = {
    "pid": 4242,
    "user": "ops",
    "caller": "cli",
    "username": "alice",
    "since": "2026-11-29T12:00:00Z",
    "reqid": "00aa11bb22cc33dd",
}


def test_holder_record_is_listed_and_removed_on_a_clean_release(tmp_path):
    locks = HostScriptLocks(tmp_path)
    held = locks.acquire(["vm"], "backup")
    assert held.stale == {}
    held.record(HOLDER)
    [listed] = locks.held()
    assert listed == {"host": "vm", "script": "backup", "state": "held", **HOLDER}
    assert oct((tmp_path / "vm--backup.lock.holder").stat().st_mode & 0o777) == "0o660"
    held.release()
    assert locks.held() == [] and not (tmp_path / "vm--backup.lock.holder").exists()


def test_an_interrupted_holder_leaves_its_record_for_the_next_taker(tmp_path):
    """Ctrl-C or a crash: the flock goes with the process, the record stays,
    and the next taker is told (stale) so it can ask the agent."""
    locks = HostScriptLocks(tmp_path)
    with pytest.raises(KeyboardInterrupt), locks.acquire(["vm", "db"], "backup") as held:
        held.record(HOLDER)
        raise KeyboardInterrupt
    assert [(lock["host"], lock["state"]) for lock in locks.held()] == [
        ("db", "orphaned"),
        ("vm", "orphaned"),
    ]
    again = locks.acquire(["vm"], "backup")
    assert again.stale == {"vm": HOLDER}
    again.release(keep={"vm"})  # still running there: the old record stays
    assert locks.acquire(["vm"], "backup").stale == {"vm": HOLDER}


def test_an_unreadable_holder_record_still_counts(tmp_path):
    (tmp_path / "vm--s.lock.holder").write_bytes(b'{"reqid": "r1", "pi')
    assert HostScriptLocks(tmp_path).acquire(["vm"], "s").stale == {"vm": {}}


def test_held_on_a_missing_directory_is_empty(tmp_path):
    assert HostScriptLocks(tmp_path / "absent").held() == []


def test_listing_ignores_foreign_files(tmp_path):
    (tmp_path / "README").write_text("x")
    (tmp_path / "vm--s.lock").write_text("")
    assert HostScriptLocks(tmp_path).held() == []
    assert locks_mod.MAX_LISTED >= 1000


def test_fan_out_keeps_input_order_and_bounds_parallelism():
    active = 0
    peak = 0
    gate = threading.Lock()
    release = threading.Event()
    started = threading.Semaphore(0)

    def work(item: int) -> int:
        nonlocal active, peak
        with gate:
            active += 1
            peak = max(peak, active)
        started.release()
        release.wait(10)
        with gate:
            active -= 1
        return item * 10

    done: list[int] = []
    outcome: list = []
    runner = threading.Thread(
        target=lambda: outcome.append(fan_out(list(range(20)), work, 4, done.append))
    )
    runner.start()
    for _ in range(4):
        assert started.acquire(timeout=10)
    assert not started.acquire(timeout=0.01)  # a fifth is not started while four run
    release.set()
    runner.join(10)
    assert outcome == [[item * 10 for item in range(20)]]
    assert peak == 4 and sorted(done) == outcome[0]


def test_fan_out_edge_cases():
    assert fan_out([], lambda item: item, 8) == []
    assert fan_out([3], lambda item: item + 1, 8) == [4]
    assert fan_out([1, 2, 3], lambda item: item, 0) == [1, 2, 3]


def test_fan_out_runs_in_this_process_only():
    # threads, not forks: the pid seen by every call is ours
    assert set(fan_out(list(range(5)), lambda item: os.getpid(), 5)) == {os.getpid()}
