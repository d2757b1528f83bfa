"""Run records: async state transitions, failure rules, status text, and
the dispatcher's run store on real files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from ctrlexec.core import report, run_record
from ctrlexec.dispatcher.registry import Target, UnknownAgents
from ctrlexec.dispatcher.runstore import RunStore, aggregate
from ctrlexec.errors import CtrlExecError, StateError

SUBMITTED = [
    {"host": "a", "script": "s", "status": "accepted", "reqid": "r", "rtt": "1ms"},
    {"host": "b", "script": "s", "status": "busy", "error": "script already running"},
    {"host": "c", "script": "s", "exit": -1, "error": "odd"},
    {"host": "d", "script": "s", "status": "accepted"},
]


def test_async_record():
    record = run_record.async_record("r", "s", SUBMITTED, 100, {"username": "u", "source_ip": "ip"})
    assert record == {
        "reqid": "r",
        "script": "s",
        "mode": "async",
        "created": 100,
        "hosts": {
            "a": {"status": "accepted"},
            "b": {"status": "busy", "error": "script already running"},
            "c": {"status": "error", "error": "odd"},
            "d": {"status": "accepted"},
        },
        "pending": ["a", "d"],
        "complete": False,
        "submitter": {"username": "u", "source_ip": "ip"},
    }
    assert "submitter" not in run_record.public(record)


def test_merge_transitions():
    record = run_record.async_record("r", "s", SUBMITTED, 100)
    record["hosts"]["d"]["fetch_error"] = "earlier"
    changed = run_record.merge_fetched(
        record,
        {
            "a": {
                "host": "a",
                "status": "done",
                "exit": 3,
                "stdout": "o",
                "stderr": "e",
                "owner": "x",
                "rtt": "1ms",
            },
            "b": {"host": "b", "status": "done", "exit": 0},  # terminal: stays busy
            "d": {"host": "d", "status": "running"},
        },
    )
    assert changed
    assert record["hosts"]["a"] == {"status": "done", "exit": 3, "stdout": "o", "stderr": "e"}
    assert record["hosts"]["b"]["status"] == "busy"
    assert record["hosts"]["d"] == {"status": "running"}
    assert record["pending"] == ["d"] and record["complete"] is False
    assert not run_record.merge_fetched(record, {"d": {"status": "running"}})
    assert run_record.merge_fetched(record, {"d": {"status": "error", "error": "refused"}})
    assert record["hosts"]["d"] == {"status": "running", "fetch_error": "refused"}
    run_record.merge_fetched(record, {"d": {"status": "something-new"}})
    assert record["hosts"]["d"]["fetch_error"] == "fetch failed"
    run_record.merge_fetched(record, {"d": {"status": "unknown", "reqid": "r"}})
    assert record["hosts"]["d"] == {"status": "expired"}
    assert record["complete"] is True and record["pending"] == []


def test_interrupted_is_kept():
    record = run_record.async_record("r", "s", SUBMITTED[:1], 1)
    run_record.merge_fetched(
        record,
        {
            "a": {
                "status": "done",
                "exit": -1,
                "stdout": "",
                "stderr": "",
                "error": "interrupted: x",
                "interrupted": True,
            }
        },
    )
    assert record["hosts"]["a"]["interrupted"] is True
    assert run_record.any_failed(record)


@pytest.mark.parametrize(
    "entry,failed",
    [
        ({"status": "done", "exit": 0}, False),
        ({"status": "done", "exit": 2}, True),
        ({"status": "done", "exit": None}, True),
        ({"status": "done", "exit": False}, True),
        ({"status": "busy"}, True),
        ({"status": "error"}, True),
        ({"status": "expired"}, True),
        ({"status": "running"}, False),
    ],
)
def test_host_failed(entry, failed):
    assert run_record.host_failed(entry) is failed


def test_sync_failures():
    ok = run_record.sync_record("r", "s", ["a"], [{"host": "a", "exit": 0}], 5)
    assert ok["complete"] is True and not run_record.any_failed(ok)
    assert "submitter" not in ok
    bad = run_record.sync_record("r", "s", ["a"], [{"host": "a", "exit": 0}, {"exit": -1}], 5)
    assert run_record.any_failed(bad)


def test_status_text():
    record = run_record.async_record("0123", "s", SUBMITTED, 1)
    run_record.merge_fetched(
        record,
        {
            "a": {"status": "done", "exit": 1, "stdout": "out\n", "stderr": "err\n"},
            "d": {"status": "error", "error": "host 'd' did not respond"},
        },
    )
    assert report.status_text(record) == (
        "Request 0123  (script: s)  [PENDING]\n"
        "==> a  [done  exit:1]\nout\n    STDERR: err\n"
        "==> b  [BUSY]\n    script already running\n"
        "==> c  [ERROR]\n    odd\n"
        "==> d  [accepted]\n    (fetch pending: host 'd' did not respond)\n"
    )
    sync = run_record.sync_record(
        "0123",
        "s",
        ["a"],
        [{"host": "a", "exit": 0, "rtt": "3ms", "reqid": "0123", "stdout": "hi\n"}],
        1,
    )
    assert report.status_text(sync) == (
        "Request 0123  (script: s)  [COMPLETE]\n==> a  [OK  exit:0  3ms  req:0123]\nhi\n"
    )


def test_async_submit_text():
    assert report.async_submit_text("ab", SUBMITTED[:3], "ced status") == (
        "Submitted async run  req:ab\n==> a  [accepted  1ms]\n"
        "==> b  [BUSY: script already running]\n==> c  [ERROR: odd]\n"
        "Check progress with: ced status ab\n"
    )


# -- the store ----------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_store_round_trip_and_mode(tmp_path):
    store = RunStore(tmp_path / "runs", Clock(1000))
    record = store.record_sync(
        "abc", "s", ["a"], [{"host": "a", "exit": 0}], {"username": "u", "source_ip": "1.2.3.4"}
    )
    path = tmp_path / "runs" / "abc.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert store.load("abc") == record and record["completed"] == 1000
    assert store.load("nothing") is None
    assert store.load("../etc/passwd") is None
    path.write_text("{")
    with pytest.raises(StateError):
        store.load("abc")
    with pytest.raises(CtrlExecError):
        store.path("a/b")


def test_purge(tmp_path):
    clock = Clock(100_000)
    store = RunStore(tmp_path, clock)
    for reqid in ("old", "new"):
        store.record_sync(reqid, "s", [], [])
    os.utime(tmp_path / "old.json", (clock.now - 86_401, clock.now - 86_401))
    for name, age in ((".old.json.x.tmp", 3_601), (".new.json.y.tmp", 10), ("notes.txt", 10**6)):
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (clock.now - age, clock.now - age))
    assert store.load("old") is None and (tmp_path / "old.json").exists() is False
    store.record_sync("old", "s", [], [])
    os.utime(tmp_path / "old.json", (clock.now - 86_401, clock.now - 86_401))
    assert store.purge() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".new.json.y.tmp",
        "new.json",
        "notes.txt",
    ]


class Engine:
    """The two engine calls aggregation makes, answering from a table."""

    def __init__(self, answers: dict[str, dict], known: set[str]):
        self.answers = answers
        self.known = known
        self.asked: list[str] = []

    def resolve(self, names, port=None):
        [name] = names
        if name not in self.known:
            raise UnknownAgents([name])
        return [Target(name, name, "127.0.0.1", port or 7443)]

    def fetch_results(self, targets, reqid):
        self.asked += [target.name for target in targets]
        return [dict(self.answers[target.name], host=target.name) for target in targets]


def test_aggregate(tmp_path):
    store = RunStore(tmp_path, Clock(50))
    store.record_async("r1", "s", SUBMITTED, {"username": "", "source_ip": "x"})
    engine = Engine({"a": {"status": "running"}}, known={"a"})
    record = aggregate(store, engine, "r1")
    assert engine.asked == ["a"]
    assert record["hosts"]["a"] == {"status": "running"}
    assert record["hosts"]["d"] == {"status": "accepted", "fetch_error": "not a registered agent"}
    assert json.loads((tmp_path / "r1.json").read_text()) == record
    # nothing new: the record is not rewritten
    os.utime(tmp_path / "r1.json", (1, 1))
    aggregate(store, engine, "r1")
    assert (tmp_path / "r1.json").stat().st_mtime == 1
    engine.answers["a"] = {"status": "done", "exit": 0, "stdout": "", "stderr": ""}
    engine.known.add("d")
    engine.answers["d"] = {"status": "unknown"}
    record = aggregate(store, engine, "r1")
    assert record["complete"] is True
    engine.asked.clear()
    aggregate(store, engine, "r1")
    assert engine.asked == []
    assert aggregate(store, engine, "missing") is None


def as_unprivileged(work):
    """`work()` run by a user who may read but not write: this user when not
    root, else a child process that dropped to nobody (65534)."""
    if os.geteuid() != 0:
        return work()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, report, never return into pytest
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_aggregate_read_only():
    """A reader who cannot write the store still sees the agents' answers."""
    base = Path(tempfile.mkdtemp(prefix="runs-ro-"))
    try:
        base.chmod(0o755)
        store = RunStore(base / "runs", Clock(50))
        store.record_async("r1", "s", SUBMITTED[:1])
        (base / "runs").chmod(0o555)
        (base / "runs" / "r1.json").chmod(0o444)
        engine = Engine(
            {"a": {"status": "done", "exit": 0, "stdout": "", "stderr": ""}}, known={"a"}
        )
        seen = as_unprivileged(lambda: aggregate(store, engine, "r1"))
        assert seen["complete"] is True and seen["hosts"]["a"]["status"] == "done"
        assert store.load("r1")["complete"] is False  # nothing was written
    finally:
        (base / "runs").chmod(0o755)
        shutil.rmtree(base)
