"""Targeting on agents in separate network namespaces: `@all`, shell-style
patterns and `--tag` select exactly the right agents, through `ced` and the
API's `select` field, from the tags the agents themselves report."""

from __future__ import annotations

import json

import pytest

from tests.support import apiproc, testpki

pytestmark = pytest.mark.netns

PORT = 7450
# name -> (fleet host it runs on, the tags its agent.toml declares)
TAGGED = {
    "web-1": ("alpha", {"env": "prod", "role": "web"}),
    "web-2": ("bravo", {"env": "staging", "role": "web"}),
    "db-1": ("charlie", {"env": "prod", "role": "db"}),
}


@pytest.fixture
def tagged(fleet, extra_agents, session_ca):
    for name, (on, tags) in TAGGED.items():
        host = fleet.hosts[on]
        process = extra_agents(name, host, PORT, tags=tags)
        fleet.dispatcher.register(
            session_ca, name, host.address, process.site.port, process.site.issued
        )
    yield fleet
    registry = testpki.layout_for(fleet.dispatcher.root).registry_dir
    for name in TAGGED:
        (registry / f"{name}.json").unlink(missing_ok=True)


def ced(fleet, *argv):
    return fleet.dispatcher.runner.run("ced", *argv)


def hosts_of(completed) -> list[str]:
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return [result["host"] for result in json.loads(completed.stdout)["results"]]


def test_ced_selects_by_pattern_all_and_tags(tagged):
    fleet = tagged
    # the tags come from the agents (GET /capabilities), cached in the registry
    shown = ced(fleet, "list-agents", "--tags", "--refresh")
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split()[-1] for line in shown.stdout.splitlines()[2:]}
    assert rows["web-1"] == "env=prod,role=web" and rows["db-1"] == "env=prod,role=db"
    assert rows["alpha"] == "-"
    registered = sorted(
        record["hostname"] for record in json.loads(ced(fleet, "--json", "list-agents").stdout)
    )

    assert hosts_of(ced(fleet, "--json", "run", "web-*", "echo-args", "--", "x")) == [
        "web-1",
        "web-2",
    ]
    assert hosts_of(ced(fleet, "--json", "run", "--tag", "env=prod", "echo-args")) == [
        "db-1",
        "web-1",
    ]
    assert hosts_of(
        ced(
            fleet, "--json", "run", "--tag", "role=web", "--tag", "env=staging", "@all", "echo-args"
        )
    ) == ["web-2"]
    # every registered agent, including any another test left stopped
    everyone = json.loads(ced(fleet, "--json", "ping", "@all").stdout)["results"]
    assert [result["host"] for result in everyone] == registered
    assert hosts_of(ced(fleet, "--json", "ping", "*-1", "--tag", "role=db")) == ["db-1"]
    # the agents really ran it: each at its own address
    [one] = json.loads(ced(fleet, "--json", "run", "db-*", "show-context").stdout)["results"]
    assert json.loads(one["stdout"])["peer_ip"] == fleet.lab.root_address

    dry = ced(fleet, "run", "--dry-run", "web-*", "echo-args")
    assert (dry.returncode, dry.stdout) == (0, "web-1\nweb-2\n")
    as_json = json.loads(ced(fleet, "--json", "ping", "--dry-run", "--tag", "role=web").stdout)
    assert as_json == {"ok": 1, "hosts": ["web-1", "web-2"]}

    empty = ced(fleet, "run", "nomatch-*", "echo-args")
    assert (empty.returncode, empty.stdout) == (1, "")
    assert "no agent matches nomatch-*" in empty.stderr
    empty_json = ced(fleet, "--json", "ping", "--tag", "env=dev")
    assert empty_json.returncode == 1
    assert json.loads(empty_json.stdout)["ok"] == 0


def test_the_api_select_field(tagged):
    fleet = tagged
    assert ced(fleet, "list-agents", "--refresh").returncode == 0
    api = apiproc.ApiProcess(fleet.dispatcher.runner, api_auth_default="allow").start()
    try:
        client = api.client()
        response = client.post(
            "/run",
            {"script": "echo-args", "select": {"hosts": ["web-*"], "tags": {"env": "prod"}}},
        )
        assert response.status == 200, response.json
        assert [result["host"] for result in response.json["results"]] == ["web-1"]
        response = client.post("/ping", {"hosts": ["alpha"], "select": {"tags": {"role": "db"}}})
        assert [result["host"] for result in response.json["results"]] == ["alpha", "db-1"]
        empty = client.post("/run", {"script": "echo-args", "select": {"hosts": ["zzz-*"]}})
        assert empty.status == 400 and "no agent matches zzz-*" in empty.json["detail"]
    finally:
        api.stop()
