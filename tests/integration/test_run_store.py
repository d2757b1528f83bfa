"""The dispatcher's run store on real files: modes, purge, aggregation, and a
reader that may not write (a child process that dropped to nobody)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from ctrlexec.core.results import FETCH, RUN, SUBMIT, HostResult
from ctrlexec.dispatcher.registry import Target
from ctrlexec.dispatcher.runstore import RunStore, aggregate
from ctrlexec.errors import CtrlExecError, StateError, UnknownAgents

SUBMITTED = [
    HostResult(SUBMIT, wire)
    for wire in (
        {"host": "a", "script": "s", "status": "accepted", "reqid": "r", "rtt": "1ms"},
        {"host": "b", "script": "s", "status": "busy", "error": "script already running"},
        {"host": "c", "script": "s", "exit": -1, "error": "odd"},
        {"host": "d", "script": "s", "status": "accepted"},
    )
]


# -- the store ----------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_store_round_trip_and_mode(tmp_path):
    store = RunStore(tmp_path / "runs", Clock(1000))
    record = store.record_sync(
        "abc",
        "s",
        ["a"],
        [HostResult(RUN, {"host": "a", "exit": 0})],
        {"username": "u", "source_ip": "1.2.3.4"},
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
        return [
            HostResult(FETCH, dict(self.answers[target.name], host=target.name))
            for target in targets
        ]


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
