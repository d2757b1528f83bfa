"""Certificate rotation in a fleet of dispatchers on one PostgreSQL state
database (docs/high-availability.md): a node that does not hold the
maintenance lease rotates its certificate with `ced rotate-cert`, both
nodes keep driving the agent through the overlap, and after the overlap
that node itself retires its old serial from the agent's map (its own
certificate's phases run whoever leads), and the registry's record of the
map follows every change."""

from __future__ import annotations

import json

import pytest

from ctrlexec.agent import trust
from ctrlexec.core.x509 import facts_from_pem
from tests.support import agentproc, testpki
from tests.support.agentproc import wait_for
from tests.support.nodes import await_fleet_trust, fleet_serials, two_nodes


@pytest.fixture
def fleet(session_ca, pyz_for, tmp_path, pg_server, pg_database):
    with two_nodes(
        session_ca, pyz_for, tmp_path, pg_server, pg_database, agentproc.APPENDIX_C_SCRIPTS
    ) as shared:
        yield shared


def agent_map(fleet) -> set[str]:
    _, agent = fleet.agents["agent-01"]
    return set(trust.load_map(agent.site.layout.trusted_dispatchers))


def serial_of(node) -> str:
    cert = testpki.layout_for(node.ctl.root).dispatcher_cert
    return facts_from_pem(cert.read_text()).serial.trust_key()


def both_drive(fleet) -> None:
    for node in (fleet.a, fleet.b):
        answer = node.client().post("/ping", {"hosts": ["agent-01"]})
        assert answer.status == 200, answer.json
        assert answer.json["results"][0]["status"] == "ok", (node.name, answer.json)


def test_a_follower_rotates_and_retires_its_own_serial(fleet):
    await_fleet_trust(fleet, "agent-01")
    wait_for(
        lambda: sum("SKIPPED=" in node.ctl.log_text() for node in fleet.nodes.values()) == 1,
        60,
        "one node leading, the other following",
    )
    follower = next(node for node in fleet.nodes.values() if "SKIPPED=" in node.ctl.log_text())
    leader = fleet.b if follower is fleet.a else fleet.a
    old, leader_serial = serial_of(follower), serial_of(leader)
    assert agent_map(fleet) == {old, leader_serial}

    rotated = follower.ced("rotate-cert", "--json")
    report = json.loads(rotated.stdout)
    new = serial_of(follower)
    assert report["old_serial"] == old and report["new_serial"] == new
    assert report["updated"] == ["agent-01"], report
    assert agent_map(fleet) == {old, new, leader_serial}
    assert fleet_serials(fleet, "agent-01") == {old, new, leader_serial}
    both_drive(fleet)

    # The overlap ends (time passing, as rotation.json would say), and the
    # follower's next pass comes: at its start, here.
    layout = testpki.layout_for(follower.ctl.root)
    state = json.loads(layout.rotation_file.read_text())
    state["overlap_expires"] = "2000-01-01T00:00:00Z"
    layout.rotation_file.write_text(json.dumps(state))
    follower.api.stop()
    follower.start()
    previous = layout.dispatcher_cert.with_name(layout.dispatcher_cert.name + ".previous")
    # The registry is written as each agent answers; the old files go after
    # the last one, so the retirement is over only once they are gone.
    wait_for(
        lambda: old not in fleet_serials(fleet, "agent-01") and not previous.exists(),
        60,
        "the old serial retired",
    )

    assert agent_map(fleet) == {new, leader_serial}
    assert fleet_serials(fleet, "agent-01") == {new, leader_serial}
    log = follower.ctl.log_text()
    assert "ACTION=maintain PHASES=rotate,broadcast,retire" in log
    assert f"ACTION=serial-retire HOSTS=agent-01 SERIAL={old}" in log
    status = json.loads(follower.ced("serial-status", "--json").stdout)
    assert "previous_serial" not in status["state"] and status["state"]["previous_retired"]
    both_drive(fleet)
