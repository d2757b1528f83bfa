"""Several `dispatcher serve` nodes on one PostgreSQL state database, for
the tests of a fleet of dispatchers: each node has its own root, its own
certificate from the session CA and its own `dispatcher_id`, and every
node can sign (pairing). `two_nodes` starts node A and node B with one
agent, `agent-01`, paired with A (its map trusts A only; the nodes' fleet
round adds B) and registered in the shared registry."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from tests.support import agentproc, apiproc, testpki
from tests.support.agentproc import wait_for


@dataclass
class Node:
    name: str
    ctl: object  # Pyz runner with this node's root
    issued: testpki.Issued
    config: dict
    api: apiproc.ApiProcess | None = None

    def write_config(self) -> None:
        apiproc.write_config(self.ctl.root, **self.config)

    def start(self) -> apiproc.ApiProcess:
        self.api = apiproc.ApiProcess(self.ctl, **self.config).start()
        self.write_config()  # ApiProcess removes it once listening; ced needs it
        return self.api

    def ced(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.ctl.run("ced", *args, check=check)

    def client(self):
        assert self.api is not None
        return self.api.client()


def state_settings(url: str, password: Path) -> SimpleNamespace:
    return SimpleNamespace(
        state_backend=url, state_password_file=str(password), registry_dir="/nonexistent"
    )


@contextmanager
def two_nodes(session_ca, pyz_for, base: Path, pg_server, pg_database, scripts: dict) -> Iterator:
    password = pg_server.password_file(base)
    url = pg_server.url(pg_database)
    nodes = {}
    for name in ("node-a", "node-b"):
        ctl = pyz_for(base / name)
        issued = testpki.install_dispatcher(session_ca, ctl.root)
        testpki.install_ca_key(session_ca, ctl.root)  # every node can sign (pairing)
        config = {
            "state_backend": url,
            "state_password_file": str(password),
            "dispatcher_id": name,
            "api_auth_default": "allow",
            "fleet_sync_interval": 1,
        }
        nodes[name] = Node(name, ctl, issued, config)
        nodes[name].write_config()
    migrated = json.loads(nodes["node-a"].ced("db", "migrate", "--json").stdout)
    assert migrated["ok"] == 1 and migrated["applied"] == [1]

    from ctrlexec.state import open_state

    registry = open_state(state_settings(url, password), base, base, base).registry
    runner = pyz_for(base / "agent-01")
    site = agentproc.install_site(session_ca, runner.root, nodes["node-a"].issued, scripts=scripts)
    agent = agentproc.AgentProcess(runner, site).start()
    record = testpki.register_agent(
        base / "scratch", "agent-01", site.port, site.issued, nodes["node-a"].issued
    )
    registry.put(record)
    shared = SimpleNamespace(
        nodes=nodes,
        a=nodes["node-a"],
        b=nodes["node-b"],
        registry=registry,
        base=base,
        agents={"agent-01": (runner, agent)},
        url=url,
        password=password,
        session_ca=session_ca,
        gates=0,
    )
    try:
        for node in nodes.values():
            node.start()
        yield shared
    finally:
        for node in nodes.values():
            if node.api is not None and node.api.proc.poll() is None:
                node.api.stop()
        for _, process in shared.agents.values():
            process.stop()


def fleet_serials(fleet, name: str) -> set[str]:
    record = fleet.registry.get(name) or {}
    return set(record.get("fleet_serials") or [])


def await_fleet_trust(fleet, name: str) -> None:
    """Every node's current serial in the agent's map (a node's sync round adds them)."""
    wanted = {node.issued.serial_key for node in fleet.nodes.values()}
    wait_for(lambda: wanted <= fleet_serials(fleet, name), 60, f"fleet trust on {name}")
