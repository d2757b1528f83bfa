"""Dispatcher certificate rotation with an overlap, end to end: `ced
rotate-cert` with two agents online, one offline and one that behaves like a
0.12.3 agent; requests keep working through the overlap; after it the old
serial leaves every map and the offline agent is stale.

The overlap's end is moved into the past by rewriting `rotation.json`, as
time passing would (no sleeping for days).
"""

from __future__ import annotations

import json
import threading

import pytest

from ctrlexec.agent import trust
from ctrlexec.core.x509 import facts_from_pem
from ctrlexec.dispatcher.registry import Registry
from tests.support import testpki
from tests.support.agentproc import (
    APPENDIX_C_SCRIPTS,
    BLOCK,
    DispatcherClient,
    free_port,
    wait_for,
)
from tests.support.fleet import running_fleet
from tests.support.peer012 import Peer012, SerialGate012


@pytest.fixture
def fleet(tmp_path, session_ca, pyz_for):
    scripts = dict(APPENDIX_C_SCRIPTS, block=BLOCK)
    names = ("web-01", "web-02")
    settings = {"script_dirs": []}
    with running_fleet(
        session_ca, pyz_for, tmp_path, names, scripts, settings=settings, ca_key=True
    ) as started:
        droot, dispatcher = started.dispatcher.root, started.issued
        offline = session_ca.issue("web-03")
        testpki.register_agent(droot, "web-03", free_port(), offline, dispatcher)
        gate = SerialGate012({dispatcher.serial_key: "test-dispatcher"})
        with Peer012(session_ca, tmp_path / "perl", behaviour=gate, cn="perl-01") as perl:
            testpki.register_agent(droot, "perl-01", perl.port, perl.issued, dispatcher)
            yield {
                "agents": started.agents,
                "ced": started.dispatcher,
                "droot": droot,
                "old": dispatcher,
                "perl": perl,
                "gate": gate,
                "tmp": tmp_path,
            }


def _map(agents, name) -> dict:
    return trust.load_map(agents[name][1].site.layout.trusted_dispatchers)


def _status(ced) -> dict:
    out = json.loads(ced.run("ced", "serial-status", "--json", check=True).stdout)
    return {a["hostname"]: a["serial_status"] for a in out["agents"]}, out["state"]


def test_rotation_overlap_then_retire(fleet):
    ced, agents, old = fleet["ced"], fleet["agents"], fleet["old"]
    layout = testpki.layout_for(fleet["droot"])
    pids = {name: process.pid for name, (_, process) in agents.items()}

    # A request in flight while the agent's map is rewritten must finish.
    gate = fleet["tmp"] / "gate"
    gate.mkdir()
    held: dict = {}
    web01 = agents["web-01"][1].site
    client = DispatcherClient.for_dispatcher(fleet["droot"])
    worker = threading.Thread(
        target=lambda: held.update(client.run(web01.port, "block", [str(gate)]))
    )
    worker.start()
    wait_for(lambda: (gate / "started").exists(), what="the blocking script")

    result = ced.run("ced", "rotate-cert", "--json")
    assert result.returncode == 1, result.stderr  # web-03 is offline
    report = json.loads(result.stdout)
    new_serial = facts_from_pem(layout.dispatcher_cert.read_text()).serial.trust_key()
    assert report["old_serial"] == old.serial_key and report["new_serial"] == new_serial
    assert sorted(report["updated"]) == ["perl-01", "web-01", "web-02"]
    assert list(report["failed"]) == ["web-03"]

    # The 0.12 agent was told with the OLD certificate (0.12 itself sends the new one).
    rotations = [r for r in fleet["perl"].received if r.path == "/rotate-serial"]
    assert rotations and all(r.peer_serial == old.serial for r in rotations)
    assert fleet["gate"].trusted == {
        old.serial_key: "test-dispatcher",
        new_serial: "test-dispatcher",
    }

    (gate / "go").touch()
    worker.join(30)
    assert held["exit"] == 0 and held["stdout"] == "released\n"
    for name in ("web-01", "web-02"):
        assert _map(agents, name) == {
            old.serial_key: "test-dispatcher",
            new_serial: "test-dispatcher",
        }
        assert agents[name][1].pid == pids[name] and agents[name][1].alive()

    statuses, state = _status(ced)
    assert statuses == {
        "perl-01": "current",
        "web-01": "current",
        "web-02": "current",
        "web-03": "pending",
    }
    assert state["previous_serial"] == old.serial_key and state["current_serial"] == new_serial
    text = ced.run("ced", "serial-status", check=True).stdout
    assert f"Current serial:  {new_serial}" in text and "web-03" in text and "pending" in text

    # Requests during the overlap: all succeed with the new certificate.
    run = ced.run("ced", "run", "web-01", "web-02", "perl-01", "echo-args", "--", "x")
    assert run.returncode == 0, run.stdout + run.stderr

    # A second rotation during the overlap is refused.
    again = ced.run("ced", "rotate-cert")
    assert again.returncode == 1 and "overlap runs until" in again.stderr

    # Time passes: the overlap is over.
    data = json.loads(layout.rotation_file.read_text())
    data["overlap_expires"] = "2000-01-01T00:00:00Z"
    layout.rotation_file.write_text(json.dumps(data))
    done = ced.run("ced", "maintain", "--json")
    summary = json.loads(done.stdout)
    assert summary["stale"] == ["web-03"], summary
    assert sorted(summary["retired"]["removed"]) == ["perl-01", "web-01", "web-02"]
    for name in ("web-01", "web-02"):
        assert _map(agents, name) == {new_serial: "test-dispatcher"}
    assert fleet["gate"].trusted == {new_serial: "test-dispatcher"}
    statuses, state = _status(ced)
    assert statuses["web-03"] == "stale" and statuses["web-01"] == "current"
    assert "previous_serial" not in state and state["previous_retired"]
    previous = layout.dispatcher_cert.with_name(layout.dispatcher_cert.name + ".previous")
    assert not previous.exists()
    run = ced.run("ced", "run", "web-01", "web-02", "perl-01", "echo-args", "--", "y")
    assert run.returncode == 0, run.stdout + run.stderr
    log = ced.log_text()
    for action in ("cert-rotated", "serial-broadcast", "serial-confirmed", "serial-stale"):
        assert f"ACTION={action}" in log
    assert "ACTION=serial-broadcast-fail" in log and "AGENT=web-03" in log


def test_rotate_serial_checks_on_the_agent(fleet, session_ca, tmp_path):
    agents = fleet["agents"]
    site = agents["web-01"][1].site
    client = DispatcherClient.for_dispatcher(fleet["droot"])
    old = fleet["old"]

    def rotate(body):
        reply = client.request(site.port, "POST", "/rotate-serial", body)
        return reply.status, reply.json()

    assert rotate({}) == (200, {"status": "error", "error": "serial required"})
    assert rotate({"serial": "ab", "action": "swap"}) == (
        200,
        {"status": "error", "error": "invalid action 'swap'"},
    )
    assert rotate({"serial": "not-hex!"})[1]["error"].startswith("invalid serial")
    assert rotate({"serial": "a" * 41})[1]["error"].startswith("invalid serial")
    # Its own serial cannot be removed by the connection presenting it.
    status, body = rotate({"serial": old.serial_key, "action": "remove"})
    assert body["status"] == "error" and "this connection presents" in body["error"]
    # Add: the id is the caller's, whatever the body says.
    status, body = rotate({"serial": "ABCDEF", "action": "add", "dispatcher": "evil"})
    assert status == 200 and body == {
        "status": "ok",
        "action": "add",
        "serial": "ABCDEF",
        "dispatcher": "test-dispatcher",
    }
    assert _map(agents, "web-01")["abcdef"] == "test-dispatcher"
    # An entry owned by another dispatcher cannot be removed.
    trust.add_dispatcher(site.layout.trusted_dispatchers, "beef", "other-dispatcher")
    status, body = rotate({"serial": "beef", "action": "remove"})
    assert body == {"status": "error", "error": "serial not owned by 'test-dispatcher'"}
    assert rotate({"serial": "abcdef", "action": "remove"})[1]["status"] == "ok"
    assert "abcdef" not in _map(agents, "web-01")
    # Untrusted callers never get there.
    stranger = session_ca.issue("stranger")
    (tmp_path / "s.crt").write_bytes(stranger.cert_pem)
    (tmp_path / "s.key").write_bytes(stranger.key_pem)
    other = DispatcherClient(tmp_path / "s.crt", tmp_path / "s.key", site.layout.agent_ca)
    reply = other.request(site.port, "POST", "/rotate-serial", {"serial": "cc"})
    assert reply.status == 403 and reply.json()["error"] == "serial mismatch"


def test_registry_keeps_port_for_broadcast(fleet):
    """The broadcast goes to each agent's registered port (0.12 always uses 7443)."""
    records = Registry(testpki.layout_for(fleet["droot"]).registry_dir)
    ports = {r["hostname"]: r["port"] for r in records.records()}
    assert all(port != 7443 for port in ports.values())
    result = fleet["ced"].run("ced", "rotate-cert", "--json")
    assert set(json.loads(result.stdout)["updated"]) == {"web-01", "web-02", "perl-01"}


def test_maintain_rotates_when_cert_renewal_days_remain(fleet):
    from tests.support.apiproc import write_config

    ced = fleet["ced"]
    # The dispatcher certificate has 825 days: a threshold above that is due now.
    write_config(fleet["droot"], cert_renewal_days=900)
    done = ced.run("ced", "maintain", "--json")
    summary = json.loads(done.stdout)
    assert summary["rotated"]["old_serial"] == fleet["old"].serial_key
    assert sorted(summary["confirmed"]) == ["perl-01", "web-01", "web-02"]
    assert list(summary["broadcast_failed"]) == ["web-03"] and done.returncode == 1
    log = ced.log_text()
    assert "ACTION=cert-renewal-start" in log and "ACTION=cert-check DAYS_LEFT=" in log
    # a second pass does not rotate again during the overlap
    again = json.loads(ced.run("ced", "maintain", "--json").stdout)
    assert again["rotated"] is None
