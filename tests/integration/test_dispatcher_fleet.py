"""Several dispatchers, one fleet, on a real PostgreSQL server: two
`dispatcher serve` nodes (each with its own certificate and dispatcher_id)
through the pyz, real `agent serve` agents and a 0.12-shaped agent.

- `ced db migrate|status` (and the clear refusal on the file backend);
- each node adds the other's serial to the agents that trust it (the 0.12
  /rotate-serial message), so both nodes drive every agent;
- a run on node A is refused as locked on node B while it runs, its holder
  shows in B's `ced list-locks`, and `/status` of A's run answers on B and
  in B's `ced status`;
- an agent paired through B's pairing listener and approved on A is
  dispatched from both nodes;
- kill -9 of A mid-run: its locks are free at once, the holder record stays
  (B asks the agent and refuses while the script still runs, then runs it),
  and B keeps serving;
- a 0.12-shaped agent is driven by both nodes (same wire bytes)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from tests.support import agentproc, apiproc, testpki
from tests.support.agentproc import in_thread, wait_for
from tests.support.nodes import await_fleet_trust, two_nodes
from tests.support.pairing import Reaped, agent_env, start_listener
from tests.support.peer012 import Peer012, SerialGate012

SCRIPTS = dict(agentproc.APPENDIX_C_SCRIPTS, block=agentproc.BLOCK)
REQID = re.compile(r"[0-9a-f]{16}")


@pytest.fixture(scope="module")
def fleet(session_ca, pyz_for, tmp_path_factory, pg_server, pg_database):
    base = tmp_path_factory.mktemp("fleet")
    with two_nodes(session_ca, pyz_for, base, pg_server, pg_database, SCRIPTS) as shared:
        yield shared


def gate(fleet) -> Path:
    """A fresh directory for one `block` run."""
    fleet.gates += 1
    path = fleet.base / "gates" / str(fleet.gates)
    path.mkdir(parents=True)
    return path


# -- schema commands ------------------------------------------------------------------------


def test_db_status_and_help(fleet):
    status = json.loads(fleet.b.ced("db", "status", "--json").stdout)
    assert status["ok"] == 1 and status["up_to_date"] and status["version"] == 1
    assert "ctrlexec" not in json.dumps(status).split("database")[0]  # no user, no password
    assert fleet.password.read_text().strip() not in json.dumps(status)
    text = fleet.b.ced("db", "status").stdout
    assert "schema version 1 (this build: 1) - up to date" in text
    helped = fleet.b.ced("db", "--help").stdout
    assert "migrate" in helped and "status" in helped and "exit 78" in helped


def test_db_commands_on_the_file_backend_say_so(ctl):
    result = ctl.run("ced", "db", "migrate")
    assert result.returncode == 78
    assert "state backend is 'files'" in result.stderr


def test_a_password_never_appears_in_errors(fleet, pyz_for, tmp_path):
    ctl = pyz_for(tmp_path / "wrong")
    wrong = tmp_path / "pw"
    wrong.write_text("not-the-password-xyzzy\n")
    wrong.chmod(0o600)
    apiproc.write_config(ctl.root, state_backend=fleet.url, state_password_file=str(wrong))
    result = ctl.run("ced", "db", "status")
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr
    assert "xyzzy" not in result.stderr + result.stdout + ctl.log_text()
    wrong.chmod(0o644)
    result = ctl.run("ced", "db", "status")
    assert result.returncode == 78 and "readable by others" in result.stderr


# -- two nodes, one fleet -------------------------------------------------------------------


def test_both_nodes_drive_an_agent_paired_with_one(fleet):
    await_fleet_trust(fleet, "agent-01")
    for node in (fleet.a, fleet.b):
        answer = node.client().post("/ping", {"hosts": ["agent-01"]})
        assert answer.status == 200, answer.json
        assert answer.json["results"][0]["status"] == "ok", answer.json


def test_a_run_on_a_is_locked_on_b_and_its_status_answers_on_b(fleet):
    await_fleet_trust(fleet, "agent-01")
    where = gate(fleet)
    pending = in_thread(
        lambda: fleet.a.client().post(
            "/run", {"hosts": ["agent-01"], "script": "block", "args": [str(where)]}
        )
    )
    wait_for((where / "started").exists, 30, "block started")
    refused = fleet.b.client().post(
        "/run", {"hosts": ["agent-01"], "script": "block", "args": [str(where)]}
    )
    assert refused.status == 409 and refused.json["conflicts"] == ["agent-01:block"]
    locks = json.loads(fleet.b.ced("list-locks", "--json").stdout)["locks"]
    assert [(lock["host"], lock["script"], lock["state"]) for lock in locks] == [
        ("agent-01", "block", "held")
    ]
    (where / "go").touch()
    done = pending()
    assert done.status == 200 and done.json["results"][0]["exit"] == 0
    reqid = done.json["reqid"]
    status = fleet.b.client().get(f"/status/{reqid}")
    assert status.status == 200 and status.json["reqid"] == reqid
    assert status.json["results"][0]["stdout"].strip() == "released"
    shown = json.loads(fleet.b.ced("status", reqid, "--json").stdout)
    assert json.dumps(shown).count("released") >= 1
    assert json.loads(fleet.b.ced("list-locks", "--json").stdout)["locks"] == []
    scrape = fleet.b.client().exchange(b"GET /metrics HTTP/1.1\r\nHost: b\r\n\r\n")
    records = re.search(rb"^ctrl_exec_run_store_records (\d+)$", scrape, re.M)
    assert records and int(records.group(1)) >= 1, scrape[-500:]


def test_pairing_through_b_approved_on_a(fleet, pyz_for):
    listener = start_listener(fleet.b.ctl)
    try:
        runner = pyz_for(fleet.base / "agent-02")
        site = agentproc.install_site(
            fleet.session_ca, runner.root, None, name="agent-02", scripts=SCRIPTS
        )
        background = Reaped(
            agent_env(runner, runner.root),
            "agent",
            "request-pairing",
            "--dispatcher",
            "127.0.0.1",
            "--port",
            str(listener.port),
            "--background",
            "--hostname",
            "agent-02",
            "--lookup-by",
            "ip",
            "--ca-fingerprint",
            listener.fingerprint,
        )
        first = background.first()
        assert first["rc"] == 0, first["stderr"]
        reqid = first["stdout"].splitlines()[-1]
        # The request queued by B's listener is listed and approved on A.
        listed = json.loads(fleet.a.ced("list-requests", "--json").stdout)
        assert [r["reqid"] for r in listed] == [reqid]
        fleet.a.ced("approve", reqid, "--agent-port", str(site.port))
        assert background.descendants() == [0]
    finally:
        listener.stop()
    trusted = (runner.root / "var/lib/ctrl-exec-agent/ctrl-exec-dispatchers").read_text()
    assert f"{fleet.a.issued.serial_key} node-a" in trusted
    agent = agentproc.AgentProcess(runner, site).start()
    fleet.agents["agent-02"] = (runner, agent)
    assert fleet.b.ced("list-agents", "--json").stdout.count("agent-02") >= 1
    await_fleet_trust(fleet, "agent-02")
    for node in (fleet.a, fleet.b):
        ran = node.client().post(
            "/run", {"hosts": ["agent-02"], "script": "echo-args", "args": [node.name]}
        )
        assert ran.status == 200 and ran.json["results"][0]["exit"] == 0, ran.json
        assert ran.json["results"][0]["stdout"].strip() == node.name


def test_a_0_12_agent_is_driven_by_both_nodes(fleet, session_ca, tmp_path):
    serial_gate = SerialGate012({fleet.a.issued.serial_key: "node-a"})
    with Peer012(session_ca, tmp_path / "peer", behaviour=serial_gate, cn="old-012") as peer:
        record = testpki.register_agent(
            tmp_path / "scratch", "old-012", peer.port, peer.issued, fleet.a.issued
        )
        fleet.registry.put(record)
        await_fleet_trust(fleet, "old-012")
        # Added by A with 0.12's /rotate-serial: stored under A's id.
        assert serial_gate.trusted.get(fleet.b.issued.serial_key) == "node-a"
        for node in (fleet.a, fleet.b):
            answer = node.client().post("/ping", {"hosts": ["old-012"]})
            assert answer.status == 200 and answer.json["results"][0]["status"] == "ok"
        fleet.registry.delete("old-012")


def test_a_revocation_on_one_node_reaches_the_other(fleet):
    from ctrlexec.pki import revocation

    fleet.a.ced("revoke", "0BADC0FFEE")
    listed = fleet.b.ctl.root / "etc/ctrl-exec/revoked-serials"
    wait_for(lambda: "badc0ffee" in revocation.read(listed), 60, "B's revocation list")
    wait_for(
        lambda: "ACTION=fleet-revocations ADDED=1" in fleet.b.ctl.log_text(), 30, "B's log line"
    )


def test_maintenance_is_done_by_one_node_at_a_time(fleet):
    """One serving node holds the lease and runs the passes; the other
    skips, and `ced maintain` on either host refuses while it is held."""
    wait_for(
        lambda: (
            sum("SKIPPED=" in node.ctl.log_text() for node in fleet.nodes.values()) == 1
            and sum(
                "ACTION=maintain AGENTS=" in node.ctl.log_text() for node in fleet.nodes.values()
            )
            == 1
        ),
        60,
        "one leader, one follower",
    )
    for node in (fleet.a, fleet.b):
        refused = node.ced("maintain", check=False)
        assert refused.returncode == 1
        assert "holds the maintenance lease" in refused.stderr, refused.stderr


def test_kill_9_of_a_mid_run_frees_its_locks_and_b_keeps_serving(fleet):
    await_fleet_trust(fleet, "agent-01")
    where = gate(fleet)
    threading.Thread(
        target=lambda: _ignore(
            lambda: fleet.a.client().post(
                "/run", {"hosts": ["agent-01"], "script": "block", "args": [str(where)]}
            )
        ),
        daemon=True,
    ).start()
    wait_for((where / "started").exists, 30, "block started")
    fleet.a.api.kill()
    locks = wait_for(
        lambda: [
            lock
            for lock in json.loads(fleet.b.ced("list-locks", "--json").stdout)["locks"]
            if lock["state"] == "orphaned"
        ],
        30,
        "A's lock released",
    )
    assert [(lock["host"], lock["script"]) for lock in locks] == [("agent-01", "block")]
    # The script still runs on the agent: B asks it and refuses.
    refused = fleet.b.client().post(
        "/run", {"hosts": ["agent-01"], "script": "block", "args": [str(where)]}
    )
    assert refused.status == 409, refused.json
    (where / "go").touch()
    wait_for(
        lambda: (
            fleet.b.client()
            .post("/run", {"hosts": ["agent-01"], "script": "echo-args", "args": ["b"]})
            .status
            == 200
        ),
        30,
        "B serving",
    )

    def finished():
        answer = fleet.b.client().post(
            "/run", {"hosts": ["agent-01"], "script": "block", "args": [str(where)]}
        )
        return answer if answer.status == 200 else None

    ran = wait_for(finished, 30, "the old run ended, B runs block")
    assert ran.json["results"][0]["exit"] == 0
    assert json.loads(fleet.b.ced("list-locks", "--json").stdout)["locks"] == []


def _ignore(call) -> None:
    try:
        call()
    except Exception:
        pass  # the node was killed under it
