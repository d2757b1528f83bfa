"""The dispatcher's shared state, one contract, both backends: every test
here runs on the state directories and on a real PostgreSQL server
(tests/support/pgserver.py). Registry, run store, host:script locks (held
by another process, freed when it is killed, its holder record kept),
pairing queue and operator decisions, the leader lease, and the schema
migrations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ctrlexec.config.load import load_dispatcher
from ctrlexec.config.paths import system_layout
from ctrlexec.core import pairing as wire
from ctrlexec.core.results import RUN, SUBMIT, HostResult
from ctrlexec.dispatcher import pairing_decide
from ctrlexec.dispatcher.registry import new_record
from ctrlexec.errors import ConfigError, CtrlExecError, Locked, StateError, UnknownAgents
from ctrlexec.pki import ca, csr, keys
from ctrlexec.state import admin, migrations, open_state
from ctrlexec.store import atomic_write
from tests.support.agentproc import wait_for

REPO = Path(__file__).resolve().parents[2]
TABLES = (  # emptied before each PostgreSQL case
    "ctrl_exec_agents, ctrl_exec_runs, ctrl_exec_lock_holders, ctrl_exec_pairing, "
    "ctrl_exec_dispatchers, ctrl_exec_revoked"
)


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["files", "postgresql"])
def backend(request, tmp_path):
    """(settings, State) on a fresh backend of each kind."""
    layout = system_layout(tmp_path)
    settings = load_dispatcher(layout)
    values = {
        "registry_dir": settings.registry_dir,
        "ca_dir": settings.ca_dir,
        "cert": settings.cert,
        "key": settings.key,
        "dispatcher_id": "node-a",
        "state_backend": "files",
        "state_password_file": None,
    }
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_server")
        database = request.getfixturevalue("pg_database")
        values["state_backend"] = server.url(database)
        values["state_password_file"] = str(server.password_file(tmp_path))
        shared = SimpleNamespace(**values)
        admin.migrate(shared)
        server.psql(f"TRUNCATE {TABLES}", database)
    shared = SimpleNamespace(**values)
    state = open_state(shared, layout.runs_dir, layout.locks_dir, layout.pairing_dir)
    return shared, state, layout


def _child(code: str, settings, layout) -> subprocess.Popen:
    """Another process opening the same state (a second dispatcher)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    preamble = textwrap.dedent(
        f"""
        import json, os, sys
        from types import SimpleNamespace
        from ctrlexec.state import open_state
        settings = SimpleNamespace(**json.loads({json.dumps(json.dumps(vars(settings)))}))
        state = open_state(settings, {str(layout.runs_dir)!r}, {str(layout.locks_dir)!r},
                           {str(layout.pairing_dir)!r})
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", preamble + textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# -- registry -------------------------------------------------------------------------------


def agent(name: str, **fields) -> dict:
    record = new_record(
        name, "10.0.0.9", "2026-01-01T00:00:00Z", "", "r", "hostname", 7443, "5", "current"
    )
    record.update(fields)
    return record


def test_registry_round_trip(backend):
    _, state, _ = backend
    registry = state.registry
    assert registry.names() == [] and list(registry.records()) == []
    with registry.lock():
        registry.put(agent("web-02"))
        registry.put(agent("web-01", port=17443, lookup_by="ip"))
    assert registry.names() == ["web-01", "web-02"]
    assert registry.get("web-01")["port"] == 17443
    assert registry.get("nosuch") is None
    assert [r["hostname"] for r in registry.records()] == ["web-01", "web-02"]
    changed = registry.update("web-02", lambda r: r.update(tags={"role": "db"}))
    assert changed["tags"] == {"role": "db"} == registry.get("web-02")["tags"]
    with pytest.raises(UnknownAgents):
        registry.update("nosuch", lambda r: None)
    with pytest.raises(CtrlExecError):
        registry.get("../etc")
    targets = registry.resolve(["web-01", "web-02:9443"], default_port=7443)
    assert [(t.name, t.address, t.port) for t in targets] == [
        ("web-01", "10.0.0.9", 17443),
        ("web-02", "web-02", 9443),
    ]
    with pytest.raises(UnknownAgents):
        registry.resolve(["web-01", "web-99"])
    assert registry.delete("web-01")["hostname"] == "web-01"
    assert registry.delete("web-01") is None
    with registry.lock():
        registry.discard("web-02")
    assert registry.names() == []


def test_registry_is_shared_with_another_process(backend):
    settings, state, layout = backend
    state.registry.put(agent("web-07"))
    child = _child(
        "print(json.dumps(state.registry.get('web-07')['hostname']));"
        "state.registry.update('web-07', lambda r: r.update(ip='10.1.1.1'))",
        settings,
        layout,
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert json.loads(out) == "web-07"
    assert state.registry.get("web-07")["ip"] == "10.1.1.1"


# -- run store ------------------------------------------------------------------------------


def test_run_store(backend):
    _, state, _ = backend
    store = state.runs
    store.clock = Clock(time.time())  # the file backend ages records by mtime
    ran = [HostResult(RUN, {"host": "a", "exit": 0})]
    record = store.record_sync("abc", "s", ["a"], ran, {"username": "u"})
    assert store.load("abc") == record and record["completed"] == int(store.clock.now)
    assert store.load("nothing") is None and store.load("../x") is None
    submitted = [
        HostResult(SUBMIT, {"host": "a", "script": "s", "status": "accepted", "reqid": "r"})
    ]
    store.record_async("def", "s", submitted)

    def finish(current: dict) -> bool:
        current["marker"] = 1
        return True

    assert store.update("def", finish)["marker"] == 1
    assert store.load("def")["marker"] == 1
    assert store.update("def", lambda current: False)["marker"] == 1
    assert store.purge() == 0
    store.clock.now += 86_401
    assert store.load("abc") is None  # past the TTL: never served
    assert store.purge() == 1  # "def"
    assert store.load("def") is None


# -- host:script locks ----------------------------------------------------------------------


HOLD = """
held = state.locks.acquire(["vm", "db"], "sleep")
held.record({"reqid": "r1", "pid": os.getpid(), "user": "op", "since": "now"})
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_lock_held_elsewhere_is_refused_and_freed_when_its_holder_is_killed(backend):
    settings, state, layout = backend
    child = _child(HOLD, settings, layout)
    try:
        assert child.stdout.readline().strip() == "held", child.stderr.read()
        with pytest.raises(Locked) as refused:
            state.locks.acquire(["db", "other"], "sleep")
        assert refused.value.conflicts == ["db:sleep"]
        listed = {lock["host"]: lock for lock in state.locks.held()}
        assert listed["vm"]["state"] == "held" and listed["vm"]["reqid"] == "r1"
        state.locks.acquire(["other"], "sleep").release()  # other pairs are free
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()
        child.stdin.close()
    # The holder died without ending its run: the lock is free, the record stays.
    orphaned = {lock["host"]: lock for lock in _until_orphaned(state)}
    assert orphaned["vm"]["state"] == "orphaned" and orphaned["vm"]["reqid"] == "r1"
    held = state.locks.acquire(["vm"], "sleep")
    assert held.stale["vm"]["reqid"] == "r1"
    held.record({"reqid": "r2", "pid": os.getpid()})
    held.release()
    assert [lock["host"] for lock in state.locks.held()] == ["db"]


def _until_orphaned(state) -> list[dict]:
    """The server notices a killed client's socket at once on loopback, but
    the backend process ends a moment later: wait for that event."""
    deadline = time.monotonic() + 30
    while True:
        locks = state.locks.held()
        if all(lock["state"] == "orphaned" for lock in locks) or time.monotonic() > deadline:
            return locks
        time.sleep(0.05)


def test_interrupted_release_keeps_the_holder_record(backend):
    _, state, _ = backend
    with pytest.raises(KeyboardInterrupt), state.locks.acquire(["vm"], "s") as held:
        held.record({"reqid": "r9", "pid": 1})
        raise KeyboardInterrupt
    again = state.locks.acquire(["vm"], "s")
    assert again.stale["vm"]["reqid"] == "r9"
    again.release()
    assert state.locks.held() == []


# -- pairing queue --------------------------------------------------------------------------


@pytest.fixture
def with_ca(backend):
    settings, state, layout = backend
    paths = ca.CAPaths(Path(settings.ca_dir))
    ca.create_ca(paths)
    key_pem, issued = ca.issue_key_and_cert(paths, ca.DISPATCHER_COMMON_NAME, "ec")
    atomic_write(settings.key, key_pem, 0o600)
    atomic_write(settings.cert, issued.cert_pem.encode(), 0o644)
    return settings, state, layout


def queued(queue, name: str, reqid: str) -> dict:
    request = wire.PairRequest(
        hostname=name,
        csr=csr.build(keys.generate("ec"), name),
        nonce="ab" * 16,
        lookup_by=None,
        port=None,
        ip=None,
    )
    record = wire.queue_record(request, reqid, "10.0.0.5", "2026-01-01T00:00:00Z", "", False)
    assert queue.add(record, 3)
    return record


def test_pairing_queue_approve_deny_withdraw(with_ca):
    settings, state, layout = with_ca
    queue = state.pairing_queue()
    for index in range(3):
        queued(queue, f"a{index}", f"{index:016x}")
    extra = wire.queue_record(
        wire.PairRequest(
            hostname="a9",
            csr=csr.build(keys.generate("ec"), "a9"),
            nonce="",
            lookup_by=None,
            port=None,
            ip=None,
        ),
        "ffff000000000000",
        "10.0.0.5",
        "2026-01-01T00:00:00Z",
        "",
        False,
    )
    assert not queue.add(extra, 3)  # the cap counts undecided requests
    # The operator decides from another node: a queue opened separately.
    other = open_state(settings, layout.runs_dir, layout.locks_dir, layout.pairing_dir)
    approved = pairing_decide.approve(other.pairing_queue(), settings, f"{0:016x}")
    assert state.registry.get("a0") == approved.record
    body = json.loads(queue.decision(f"{0:016x}"))
    assert body["status"] == "approved" and body["nonce"] == "ab" * 16
    with pytest.raises(StateError, match="already been decided"):
        pairing_decide.approve(other.pairing_queue(), settings, f"{0:016x}")
    pairing_decide.deny(other.pairing_queue(), f"{1:016x}")
    assert json.loads(queue.decision(f"{1:016x}")) == wire.denied_body(wire.REASON_REJECTED)
    assert queue.withdraw(f"{1:016x}") is not None  # the decision wins over a timeout
    assert queue.add(extra, 3)
    assert [r["id"] for r in queue.pending()] == [f"{2:016x}", "ffff000000000000"]
    assert queue.withdraw(f"{2:016x}") is None
    for reqid in (f"{0:016x}", f"{1:016x}"):
        queue.delivered(reqid)
        assert queue.decision(reqid) is None
    assert [r["id"] for r in queue.pending()] == ["ffff000000000000"]
    for hostile in ("../agents/x", "ABCDEF0123456789", "nosuch0000000000"):
        with pytest.raises(StateError, match="no pending pairing request"):
            pairing_decide.approve(queue, settings, hostile)


# -- leader lease and schema ----------------------------------------------------------------


def test_one_leader_at_a_time(backend, request):
    settings, state, layout = backend
    if state.kind == "files":
        assert state.leader("maintenance").try_acquire()  # one host: always leads
        return
    child = _child(
        "lease = state.leader('maintenance'); print(lease.try_acquire(), flush=True);"
        "sys.stdin.readline()",
        settings,
        layout,
    )
    try:
        assert child.stdout.readline().strip() == "True"
        here = state.leader("maintenance")
        assert not here.try_acquire()
        assert state.leader("other-duty").try_acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        for stream in (child.stdin, child.stdout, child.stderr):
            stream.close()
    deadline = time.monotonic() + 30
    while not here.try_acquire():  # the dead leader's session ends: the lease is free
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert here.try_acquire()  # held: asking again keeps it
    # Its session is cut (a server restart, a failover): the holder is told
    # once that it lost the lease, then takes it again.
    server = request.getfixturevalue("pg_server")
    pid = here._conn.run("SELECT pg_backend_pid()")[0][0]
    server.psql(f"SELECT pg_terminate_backend({pid})")
    gone = f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
    wait_for(lambda: server.psql(gone) == "0", 30, "the session ended")
    assert not here.try_acquire()
    assert here.try_acquire()
    here.release()


def test_fleet_directory(backend):
    _, state, _ = backend
    fleet = state.fleet
    if state.kind == "files":
        fleet.announce("only", "5")
        assert fleet.members() == {"only": "5"}  # one host: the fleet is itself
        return
    fleet.clock = Clock(1_000_000)
    fleet.announce("node-a", "a1")
    fleet.announce("node-b", "b1")
    fleet.clock.now += 7200
    fleet.announce("node-b", "b2")  # rotated: the id keeps its place
    assert fleet.members() == {"node-a": "a1", "node-b": "b2"}
    assert fleet.members(seen_within=3600) == {"node-b": "b2"}


def test_revocations_reach_every_node(backend, tmp_path):
    """Each node's lists stay files in its ca_dir; PostgreSQL holds the
    union, and a node's round adds what it lacks (both ways)."""
    from ctrlexec.state.revocations import FileRevocations, reconcile

    _, state, _ = backend
    if state.kind == "files":
        assert state.revocations is None  # one host: its files are the list
        return
    node_a, node_b = FileRevocations(tmp_path / "a"), FileRevocations(tmp_path / "b")
    node_a.add("serial", ["deadbeef01", "14"])
    node_a.add("key", ["AB" * 32])
    assert reconcile(node_a, state.revocations) == {"local": 0, "shared": 3}
    state.revocations.add("serial", ["c0ffee"])  # `ced revoke` on a third node
    assert reconcile(node_b, state.revocations) == {"local": 4, "shared": 0}
    assert node_b.revoked("serial") == {"deadbeef01", "14", "c0ffee"}
    assert node_b.revoked("key") == {"ab" * 32}
    assert (tmp_path / "b" / "revoked-serials").read_text().count("00:14") == 1
    assert reconcile(node_a, state.revocations) == {"local": 1, "shared": 0}
    assert reconcile(node_a, state.revocations) == {"local": 0, "shared": 0}


def test_migrations(pg_server, tmp_path):
    name = "t_state_migrations"
    pg_server.drop_database(name)
    pg_server.create_database(name)
    try:
        settings = SimpleNamespace(
            state_backend=pg_server.url(name),
            state_password_file=str(pg_server.password_file(tmp_path)),
            registry_dir=str(tmp_path / "registry"),
        )
        with pytest.raises(StateError, match="run 'ced db migrate'"):
            open_state(settings, tmp_path, tmp_path, tmp_path)
        assert admin.status(settings)["version"] == 0
        done = admin.migrate(settings)
        assert done["applied"] == [m.version for m in migrations.MIGRATIONS]
        assert admin.migrate(settings)["applied"] == []
        status = admin.status(settings)
        assert status["up_to_date"] and status["version"] == migrations.LATEST
        open_state(settings, tmp_path, tmp_path, tmp_path)
    finally:
        pg_server.drop_database(name)


def test_db_commands_refuse_the_file_backend(tmp_path):
    settings = SimpleNamespace(state_backend="files")
    with pytest.raises(ConfigError, match="state backend is 'files'"):
        admin.migrate(settings)
