"""`ced ping` and `ced run` fanned out to agents on three separate network
namespaces, each reached by its own address (not loopback)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.netns

ORDER = ("charlie", "alpha", "bravo")  # not the order they were registered in


def _json(result) -> list[dict]:
    return json.loads(result.stdout)["results"]


def test_ping_reaches_every_agent_at_its_own_address(fleet):
    result = fleet.dispatcher.runner.run("ced", "--json", "ping", *ORDER)
    assert result.returncode == 0, result.stdout + result.stderr
    answers = _json(result)
    assert [a["host"] for a in answers] == list(ORDER)
    assert all(a["status"] == "ok" for a in answers), answers
    log = fleet.dispatcher.runner.log_text()
    for name in ORDER:
        target = f"TARGET={fleet.hosts[name].address}:7443"
        assert any(
            "ACTION=ping " in line and target in line and "RESULT=ok" in line
            for line in log.splitlines()
        ), (name, log)
        # Each agent saw the dispatcher's bridge address, not loopback.
        agent_log = fleet.agents[name].ctl.log_text()
        assert f"PEER={fleet.lab.root_address}" in agent_log
        assert "PEER=127.0.0.1" not in agent_log


def test_run_fans_out_in_the_order_given(fleet):
    result = fleet.dispatcher.runner.run(
        "ced", "--json", "run", *ORDER, "show-context", "--", "one arg"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    answers = _json(result)
    assert [a["host"] for a in answers] == list(ORDER)
    reqids = {a["reqid"] for a in answers}
    assert len(reqids) == 1
    for answer in answers:
        assert answer["exit"] == 0, answer
        context = json.loads(answer["stdout"])
        assert context["args"] == ["one arg"]
        assert context["peer_ip"] == fleet.lab.root_address
        assert context["reqid"] in reqids


@pytest.fixture
def bravo_down(fleet):
    """bravo's namespace link down, its ARP entry forgotten: connecting to
    it fails on neighbour resolution. Restored afterwards."""
    host = fleet.hosts["bravo"]
    host.link(up=False)
    fleet.lab.forget_neighbour(host)
    try:
        yield host
    finally:
        host.link(up=True)
        fleet.lab.forget_neighbour(host)


def test_one_unreachable_agent_fails_alone(fleet, bravo_down):
    expected = f"host '{bravo_down.address}' is unreachable - no route to host or network down"
    run = fleet.dispatcher.runner.run("ced", "--json", "run", *ORDER, "echo-args", "--", "x")
    assert run.returncode == 1, run.stdout + run.stderr
    answers = _json(run)
    assert [a["host"] for a in answers] == list(ORDER)
    by_host = {a["host"]: a for a in answers}
    assert by_host["bravo"]["exit"] == -1
    assert by_host["bravo"]["error"] == expected
    for name in ("charlie", "alpha"):
        assert by_host[name]["exit"] == 0 and by_host[name]["stdout"] == "x\n"

    fleet.lab.forget_neighbour(bravo_down)
    ping = fleet.dispatcher.runner.run("ced", "--json", "ping", *ORDER)
    assert ping.returncode == 1, ping.stdout + ping.stderr
    answers = _json(ping)
    assert [(a["host"], a["status"]) for a in answers] == [
        ("charlie", "ok"),
        ("alpha", "ok"),
        ("bravo", "error"),
    ]
    assert answers[2]["error"] == expected
