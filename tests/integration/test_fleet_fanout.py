"""Fan-out to a few hundred agents: the fleet simulator (bench/fleet_sim.py)
answers as many agents on as many loopback addresses, each with its own
certificate from the simulator's CA, over real mutual TLS.

What is checked here is behaviour, never speed: every host gets its own
result in the order given (also when some fail), the number of threads
stays within `max_parallel` during the fan-out, a second contact resumes
the agent's TLS session, an agent presenting the wrong certificate is
refused on a resumed session as on a full one, and `ced`'s progress line
on a terminal stays consistent from the first host to the last."""

from __future__ import annotations

import itertools
import json
import os
import pty
import random
import re
import subprocess
import threading

import pytest

from bench import fleet_sim
from ctrlexec import log
from ctrlexec.config.paths import system_layout
from ctrlexec.core import results
from ctrlexec.core.caller import Caller
from ctrlexec.core.lifecycle import ExpectedPeer, peer_problem
from ctrlexec.core.x509 import facts_from_der
from ctrlexec.dispatcher import agent_client
from ctrlexec.dispatcher.engine import BadRequest, Engine, EngineSettings
from ctrlexec.dispatcher.locks import HostScriptLocks
from ctrlexec.dispatcher.registry import Registry
from ctrlexec.dispatcher.tls_sessions import SessionCache

AGENTS = 300
SILENT = 5  # registered, but nobody answers at their address
MAX_PARALLEL = 8


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    work = tmp_path_factory.mktemp("fleet")
    files = fleet_sim.FleetFiles(work, AGENTS)
    manifest = files.prepare()
    agents = files.agents()
    simulator = fleet_sim.FleetSimulator(
        agents[: AGENTS - SILENT], work / "ca.pem", manifest["dispatcher_serial"], workers=8
    ).start()
    files.set_port(simulator.port)
    log_path = work / "dispatcher.log"
    log.configure(log.IDENT_DISPATCHER, str(log_path), "kv")
    try:
        yield files, simulator
    finally:
        simulator.stop()
        log.configure(log.IDENT_DISPATCHER, "stderr", "kv")


def engine_for(files: fleet_sim.FleetFiles, **overrides) -> Engine:
    layout = system_layout(files.dispatcher_root.resolve())
    values = dict(
        cert=str(layout.dispatcher_cert),
        key=str(layout.dispatcher_key),
        ca=str(layout.ca_cert),
        read_timeout=20,
        max_parallel=MAX_PARALLEL,
        max_hosts=1000,
    )
    values.update(overrides)
    return Engine(
        EngineSettings(**values),
        Registry(layout.registry_dir),
        HostScriptLocks(files.work / "locks"),
    )


def names(count: int = AGENTS) -> list[str]:
    return [fleet_sim.agent_name(n) for n in range(count)]


def test_every_host_gets_its_own_result_in_the_order_given(fleet):
    files, simulator = fleet
    hosts = names()
    random.Random(15).shuffle(hosts)
    outcome = engine_for(files).run(hosts, "whoami", ["one arg"], caller=Caller())
    assert [result.wire["host"] for result in outcome] == hosts
    silent = {fleet_sim.agent_name(n) for n in range(AGENTS - SILENT, AGENTS)}
    for result in outcome:
        if result.wire["host"] in silent:
            address = fleet_sim.agent_address(int(result.wire["host"].removeprefix("sim-")))
            assert result.wire["exit"] == -1
            assert result.wire["error"].startswith(
                f"host '{address}' did not respond on port {simulator.port} - connection refused"
            ), result
        else:
            # The simulated agent names itself on the first line: the answer
            # of that very agent, not of a neighbour, is in this host's result.
            assert result.wire["exit"] == 0, result
            assert result.wire["stdout"] == f"{result.wire['host']}\none arg\n"
    assert len({result.wire["reqid"] for result in outcome}) == 1


def test_threads_stay_within_max_parallel_during_a_large_fan_out(fleet):
    files, _ = fleet
    engine = engine_for(files)
    engine.tls_context()
    baseline = threading.active_count()
    tasks_baseline = len(os.listdir("/proc/self/task"))
    samples: list[tuple[int, int]] = []

    def progress(_result) -> None:
        # Sampled as each host's answer arrives, while the fan-out runs.
        samples.append((threading.active_count(), len(os.listdir("/proc/self/task"))))

    outcome = engine.ping(names(AGENTS - SILENT), caller=Caller(), progress=progress)
    assert all(result.wire["status"] == "ok" for result in outcome)
    assert len(samples) == AGENTS - SILENT
    # This thread works too: at most MAX_PARALLEL - 1 helpers besides it.
    peak_threads = max(count for count, _ in samples)
    peak_tasks = max(count for _, count in samples)
    assert peak_threads - baseline <= MAX_PARALLEL - 1, (baseline, peak_threads)
    assert peak_tasks - tasks_baseline <= MAX_PARALLEL - 1, (tasks_baseline, peak_tasks)
    assert peak_threads > baseline  # and the fan-out was parallel
    assert threading.active_count() == baseline  # helpers are gone at the end


def test_a_second_contact_resumes_the_tls_session(fleet):
    files, simulator = fleet
    engine = engine_for(files)
    hosts = names(40)
    before = simulator.resumed()
    first = engine.ping(hosts, caller=Caller())
    assert all(result.wire["status"] == "ok" for result in first)
    assert simulator.resumed() == before  # a new process knows no agent yet
    second = engine.ping(hosts, caller=Caller())
    assert all(result.wire["status"] == "ok" for result in second)
    assert simulator.resumed() == before + len(hosts)


def test_identity_is_checked_on_a_resumed_session(fleet):
    """A remembered session of agent sim-00001 offered again at its address,
    but the registry now expects another certificate: the session is
    resumed (no chain verification) and the agent is still refused."""
    files, _ = fleet
    engine = engine_for(files)
    context = engine.tls_context()
    target = engine.resolve(["sim-00001"])[0]
    other = engine.resolve(["sim-00002"])[0]
    cache = SessionCache(context)
    seen: list[bytes] = []

    def accept(der: bytes) -> str | None:
        seen.append(der)
        return peer_problem(target.expect, der, frozenset())

    first = agent_client.exchange(
        context, target.address, target.port, "POST", "/ping", b"{}", 10,
        check_peer=accept, resume=cache.slot("sim-00001"),
    )  # fmt: skip
    assert isinstance(first, results.AgentReply) and first.status == 200
    assert len(cache) == 1

    expect_other = other.expect
    assert isinstance(expect_other, ExpectedPeer)
    resumed: list[bool] = []
    opened = agent_client.open_tls(
        context, target.address, target.port, 10,
        check_peer=lambda der: (seen.append(der), None)[1], resume=cache.slot("sim-00001"),
    )  # fmt: skip
    assert isinstance(opened, agent_client.ssl.SSLSocket)
    resumed.append(opened.session_reused)
    opened.close()
    assert resumed == [True]
    # The peer certificate is there on the resumed session, the same one.
    assert seen[0] == seen[1] and facts_from_der(seen[1]).subject_cn == "sim-00001"

    refused = agent_client.open_tls(
        context, target.address, target.port, 10,
        check_peer=lambda der: peer_problem(expect_other, der, frozenset()),
        resume=cache.slot("sim-00001"),
    )  # fmt: skip
    assert isinstance(refused, results.Failure) and refused.kind == results.IDENTITY
    assert "sim-00002" in refused.detail
    assert len(cache) == 0  # a refused agent's session is forgotten


def test_a_resumed_session_of_a_revoked_agent_is_refused(fleet):
    files, simulator = fleet
    revoked_file = files.work / "revoked-serials"
    revoked_file.write_text("")
    engine = engine_for(files, revoked_serials=str(revoked_file))
    [first] = engine.ping(["sim-00003"], caller=Caller())
    assert first.wire["status"] == "ok"
    serial = facts_from_der(_peer_der(engine, engine.resolve(["sim-00003"])[0])).serial
    revoked_file.write_text(f"{serial:x}\n")
    before = simulator.resumed()
    [again] = engine.ping(["sim-00003"], caller=Caller())
    assert simulator.resumed() == before + 1  # resumed, and refused all the same
    assert again.wire["status"] == "error" and "revoked" in again.wire["error"], again
    [third] = engine.ping(["sim-00003"], caller=Caller())
    assert third.wire["status"] == "error" and "revoked" in third.wire["error"], third
    assert simulator.resumed() == before + 1  # the refused agent's session was dropped


def _peer_der(engine: Engine, target) -> bytes:
    sock = agent_client.open_tls(engine.tls_context(), target.address, target.port, 10)
    assert not isinstance(sock, results.Failure)
    try:
        return sock.getpeercert(binary_form=True) or b""
    finally:
        sock.close()


def test_max_hosts_bounds_one_operation(fleet):
    files, _ = fleet
    engine = engine_for(files, max_hosts=100)
    with pytest.raises(BadRequest, match=r"too many hosts: 101 \(at most 100 per operation\)"):
        engine.ping(names(101), caller=Caller())


def test_ced_pings_hundreds_of_agents_with_max_hosts_set(fleet, pyz, native_cache):
    """Through the pyz, with `max_hosts` raised in ctrl-exec.toml."""
    from tests.conftest import Pyz

    files, _ = fleet
    root = files.dispatcher_root.resolve()
    config = system_layout(root).dispatcher_config
    config.write_text("max_hosts = 1000\nmax_parallel = 16\n")
    try:
        runner = Pyz(pyz, native_cache, root)
        hosts = names()
        done = runner.run("ced", "--json", "ping", *hosts, timeout=300)
    finally:
        config.unlink()
    assert done.returncode == 1, done.stderr  # the silent agents fail
    answers = json.loads(done.stdout)["results"]
    assert [answer["host"] for answer in answers] == hosts
    ok = [answer for answer in answers if answer["status"] == "ok"]
    assert len(ok) == AGENTS - SILENT
    assert all(answer["version"] == fleet_sim.VERSION for answer in ok)


PROGRESS = re.compile(rb"\[ *(\d+)/(\d+)\] hosts done, (\d+) failed, (\d+) running, [\d.]+ s")


def test_the_progress_line_stays_accurate_over_hundreds_of_agents(fleet, pyz, native_cache):
    """Every redraw of `ced ping`'s progress line on a terminal, with answers
    arriving from up to 16 threads at once: counts never go back, done plus
    running is the total, and the summary matches the results."""
    from tests.conftest import Pyz

    files, _ = fleet
    root = files.dispatcher_root.resolve()
    config = system_layout(root).dispatcher_config
    config.write_text("max_hosts = 1000\nmax_parallel = 16\n")
    runner = Pyz(pyz, native_cache, root)
    master, slave = pty.openpty()
    seen = bytearray()

    def drain() -> None:  # read while ced writes: a full pty would stall it
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has gone
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain)
    try:
        proc = subprocess.Popen(
            runner.argv("ced", "--json", "ping", *names()),
            env=runner.env(),
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        reader.start()
        stdout, _ = proc.communicate(timeout=300)
        reader.join(30)
    finally:
        config.unlink()
        os.close(master)
    assert proc.returncode == 1  # the silent agents fail
    answers = json.loads(stdout)["results"]
    failed = sum(1 for answer in answers if answer["status"] != "ok")
    assert failed == SILENT
    drawn = [tuple(map(int, m.groups())) for m in PROGRESS.finditer(bytes(seen))]
    assert drawn[0] == (0, AGENTS, 0, AGENTS), bytes(seen[:200])
    assert drawn[-1] == (AGENTS, AGENTS, SILENT, 0), drawn[-5:]
    for (done, total, bad, running), (later_done, _, later_bad, _) in itertools.pairwise(drawn):
        assert total == AGENTS and done + running == AGENTS and bad <= done
        assert later_done >= done and later_bad >= bad
    _, _, summary = bytes(seen).rpartition(b"\r\x1b[K")
    expected = rb"%d ok, 0 failed, %d unreachable in \d+\.\d s\r?\n" % (AGENTS - SILENT, SILENT)
    assert re.fullmatch(expected, summary), summary
