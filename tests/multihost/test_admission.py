"""Per-address admission on the agent (`allowed_ips`, the volume rate
limit) with two dispatchers at two real addresses: the fleet's in the root
namespace, and a second one inside the bravo namespace. Loopback cannot
show this: every client there has the same address."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns

# A raw TCP client: connect, wait for whatever the agent sends unprompted,
# report what happened. The agent must close without sending a byte.
RAW_PROBE = """
import json, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
try:
    data = sock.recv(4096)
    outcome = {"received": len(data), "closed": not data}
except ConnectionResetError:
    outcome = {"received": 0, "closed": True}
print(json.dumps(outcome))
"""


@pytest.fixture
def second(fleet):
    """Another dispatcher (its own certificate) at bravo's address."""
    return fleet.new_dispatcher("second-dispatcher", host=fleet.hosts["bravo"])


def _ping(dispatcher, name: str) -> dict:
    result = dispatcher.runner.run("ced", "--json", "ping", name)
    [answer] = json.loads(result.stdout)["results"]
    assert result.returncode == (0 if answer["status"] == "ok" else 1), result.stderr
    return answer


def _handshake_refused(address: str) -> str:
    return f"TLS handshake with '{address}' failed - certificate or trust mismatch"


def test_allowed_ips_admits_only_the_dispatcher_address(fleet, second, extra_agents):
    alpha = fleet.hosts["alpha"]
    agent = extra_agents(
        "guarded", alpha, 7501, trusting=(second,), allowed_ips=[fleet.lab.root_address]
    )
    for dispatcher in (fleet.dispatcher, second):
        dispatcher.register(fleet.ca, "guarded", alpha.address, agent.site.port, agent.site.issued)

    assert _ping(fleet.dispatcher, "guarded")["status"] == "ok"

    refused = _ping(second, "guarded")
    assert refused["status"] == "error"
    assert refused["error"] == _handshake_refused(alpha.address)

    # On the wire: the connection is accepted and closed without a single
    # byte (0.12 closes unanswered too, but only after the TLS handshake;
    # we close before any TLS work: docs/compatibility.md).
    probe = subprocess.run(
        fleet.hosts["bravo"].argv(
            sys.executable, "-c", RAW_PROBE, alpha.address, str(agent.site.port)
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(probe.stdout) == {"received": 0, "closed": True}

    log = agent.ctl.log_text()
    blocked = [line for line in log.splitlines() if "ACTION=ip-block " in line]
    assert len(blocked) == 2, log
    assert all(line.endswith(f"PEER={fleet.hosts['bravo'].address}") for line in blocked), log
    assert any(
        "ACTION=ping " in line and f"PEER={fleet.lab.root_address}" in line
        for line in log.splitlines()
    ), log
    assert "ACTION=tls-failure" not in log


def test_rate_limit_blocks_one_address_and_serves_another(fleet, second, extra_agents):
    charlie = fleet.hosts["charlie"]
    bravo = fleet.hosts["bravo"]
    agent = extra_agents(
        "limited",
        charlie,
        7502,
        trusting=(second,),
        rate_limit_disable=False,
        rate_limit_volume="3/60/300",
    )
    for dispatcher in (fleet.dispatcher, second):
        dispatcher.register(
            fleet.ca, "limited", charlie.address, agent.site.port, agent.site.issued
        )

    assert [_ping(second, "limited")["status"] for _ in range(3)] == ["ok"] * 3
    blocked = _ping(second, "limited")
    assert blocked["error"] == _handshake_refused(charlie.address)

    # The other address is served, and the first stays blocked.
    assert [_ping(fleet.dispatcher, "limited")["status"] for _ in range(3)] == ["ok"] * 3
    assert _ping(second, "limited")["status"] == "error"

    log = agent.ctl.log_text().splitlines()
    rate_blocks = [line for line in log if "ACTION=rate-block " in line]
    assert len(rate_blocks) == 1, log  # logged once per block
    assert f"PEER={bravo.address}" in rate_blocks[0] and "REASON=volume" in rate_blocks[0]
    pings = [line for line in log if "ACTION=ping " in line]
    assert sum(f"PEER={bravo.address}" in line for line in pings) == 3
    assert sum(f"PEER={fleet.lab.root_address}" in line for line in pings) == 3
