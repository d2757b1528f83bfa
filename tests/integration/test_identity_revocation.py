"""The dispatcher reaches only the registered agent, and revocation takes
effect at the next connection on both sides, without a restart."""

from __future__ import annotations

import json

import pytest

from ctrlexec.dispatcher.registry import Registry
from tests.support import testpki
from tests.support.agentproc import DispatcherClient
from tests.support.fleet import running_fleet


@pytest.fixture
def pair(tmp_path, session_ca, pyz_for):
    with running_fleet(session_ca, pyz_for, tmp_path, ("web-01", "web-02")) as fleet:
        yield {
            "ced": fleet.dispatcher,
            "agents": fleet.agents,
            "droot": fleet.dispatcher.root,
            "dispatcher": fleet.issued,
        }


def _results(completed) -> list[dict]:
    return json.loads(completed.stdout)["results"]


def test_a_different_agent_on_the_port_is_refused(pair):
    ced, agents = pair["ced"], pair["agents"]
    port2 = agents["web-02"][1].site.port
    completed = ced.run("ced", "--json", "run", f"web-01:{port2}", "echo-args", "--", "x")
    assert completed.returncode == 1
    [result] = _results(completed)
    assert "is not the registered agent" in result["error"], result
    assert "'web-01' is registered with serial" in result["error"]
    # nothing ran there
    assert "ACTION=run " not in agents["web-02"][0].log_text()


def test_rename_keeps_working_because_the_serial_is_checked(pair):
    ced = pair["ced"]
    ced.run("ced", "edit-agent", "web-01", "--rename", "frontend", check=True)
    completed = ced.run("ced", "--json", "run", "frontend", "echo-args", "--", "ok")
    assert completed.returncode == 0, completed.stdout
    assert _results(completed)[0]["stdout"] == "ok\n"


def test_records_without_a_serial_are_checked_by_cn(pair):
    ced, agents = pair["ced"], pair["agents"]
    registry = Registry(testpki.layout_for(pair["droot"]).registry_dir)

    def as_012(record: dict) -> None:
        for key in ("cert_serial", "cert_fingerprint", "cert_cn"):
            record.pop(key, None)

    registry.update("web-01", as_012)
    assert ced.run("ced", "run", "web-01", "echo-args").returncode == 0
    port2 = agents["web-02"][1].site.port
    completed = ced.run("ced", "--json", "run", f"web-01:{port2}", "echo-args")
    [result] = _results(completed)
    assert "presented a certificate for CN 'web-02', not 'web-01'" in result["error"]


def test_revoke_agent_refused_by_the_dispatcher_at_once(pair):
    ced = pair["ced"]
    assert ced.run("ced", "ping", "web-02").returncode == 0
    done = ced.run("ced", "--json", "revoke", "--agent", "web-02", check=True)
    assert json.loads(done.stdout)["ok"] == 1
    completed = ced.run("ced", "--json", "run", "web-02", "echo-args")
    [result] = _results(completed)
    assert "is revoked" in result["error"] and completed.returncode == 1
    assert result["error"].endswith("to use the host again, pair it again for a new certificate")
    assert ced.run("ced", "run", "web-01", "echo-args").returncode == 0
    # the dispatcher's own serial is refused without --force
    own = pair["dispatcher"].serial_key
    refused = ced.run("ced", "revoke", own)
    assert refused.returncode == 1 and "this dispatcher's own certificate" in refused.stderr


def test_push_cuts_a_dispatcher_off_at_the_next_connection(pair, session_ca, tmp_path):
    ced, agents = pair["ced"], pair["agents"]
    # A second dispatcher both agents trust (an HA peer), then lost.
    other_root = tmp_path / "other"
    other = testpki.install_dispatcher(session_ca, other_root)
    from ctrlexec.agent import trust

    for _, process in agents.values():
        trust.add_dispatcher(process.site.layout.trusted_dispatchers, other.serial_key, "other")
    client = DispatcherClient.for_dispatcher(other_root)
    port1 = agents["web-01"][1].site.port
    assert client.request(port1, "POST", "/ping", {}).status == 200
    done = ced.run("ced", "--json", "revoke", format(other.serial, "x"), "--push")
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(report["pushed"]) == ["web-01", "web-02"]
    for _, process in agents.values():
        reply = client.request(process.site.port, "POST", "/ping", {})
        assert reply.status == 403 and reply.json() == {"error": "certificate revoked"}
        assert process.alive()
    # the pushing dispatcher still works
    assert ced.run("ced", "run", "web-01", "web-02", "echo-args").returncode == 0


def test_revocation_list_edit_takes_effect_without_restart(pair):
    agents = pair["agents"]
    site = agents["web-01"][1].site
    client = DispatcherClient.for_dispatcher(pair["droot"])
    assert client.request(site.port, "POST", "/ping", {}).status == 200
    site.layout.revoked_serials.parent.mkdir(parents=True, exist_ok=True)
    colon = ":".join(
        f"{b:02X}" for b in pair["dispatcher"].serial.to_bytes(20, "big").lstrip(b"\0")
    )
    site.layout.revoked_serials.write_text(f"# lost\n{colon}\n")
    reply = client.request(site.port, "POST", "/ping", {})
    assert reply.status == 403 and reply.json() == {"error": "certificate revoked"}
