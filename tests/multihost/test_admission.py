"""Per-address admission on the agent (`allowed_ips`, the volume rate
limit) with two dispatchers at two real addresses: the fleet's in the root
namespace, and a second one inside the bravo namespace. Loopback cannot
show this: every client there has the same address."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import testpki

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


def _closed_before_tls(address: str) -> str:
    return (
        f"host '{address}': closed by the agent before the TLS handshake "
        "(allowed_ips, rate limit or overload: see the agent's log)"
    )


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
    assert refused["error"] == _closed_before_tls(alpha.address)

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


# A client with no certificate at all, trying again and again: how each
# attempt ended, as seen from the client.
CERTLESS = """
import json, socket, ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
outcomes = []
for _ in range(int(sys.argv[3])):
    raw = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    handshaken = False
    try:
        tls = context.wrap_socket(raw)
        handshaken = True
        tls.sendall(b"POST /ping HTTP/1.0\\r\\nContent-Length: 2\\r\\n\\r\\n{}")
        outcomes.append("answered" if tls.recv(100) else "refused-by-tls")
    except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
        outcomes.append("refused-by-tls" if handshaken else "closed-before-tls")
    except ssl.SSLError:
        outcomes.append("refused-by-tls")
    finally:
        raw.close()
print(json.dumps(outcomes))
"""


def _ping_all(dispatcher, names: list[str]) -> list[dict]:
    result = dispatcher.runner.run("ced", "--json", "ping", *names, timeout=120)
    return json.loads(result.stdout)["results"]


def test_rate_limit_blocks_strangers_never_the_trusted_dispatcher(fleet, second, extra_agents):
    """Default rate limits: 1,000 pings from the paired dispatcher in quick
    succession are all answered; a client without a certificate is blocked
    after a few attempts, and `ced` from its address names the block."""
    charlie = fleet.hosts["charlie"]
    bravo = fleet.hosts["bravo"]
    agent = extra_agents("limited", charlie, 7502, trusting=(second,), rate_limit_disable=False)
    # One agent under 100 names: each `ced ping` below is 100 connections.
    names = [f"limited-{n}" for n in range(100)]
    issued = agent.site.issued
    for name in names:
        testpki.register_agent(
            fleet.dispatcher.root,
            name,
            agent.site.port,
            issued,
            fleet.dispatcher.issued,
            ip=charlie.address,
        )
    second.register(fleet.ca, "limited", charlie.address, agent.site.port, agent.site.issued)

    # As fast as this machine allows (about a minute; the old rule blocked
    # the 11th within a minute). No timing is asserted: the count matters.
    answers = [answer for _ in range(10) for answer in _ping_all(fleet.dispatcher, names)]
    assert len(answers) == 1000
    failed = [a for a in answers if a["status"] != "ok"]
    assert not failed, failed[:3]

    probe = subprocess.run(
        bravo.argv(sys.executable, "-c", CERTLESS, charlie.address, str(agent.site.port), "50"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcomes = json.loads(probe.stdout)
    assert "answered" not in outcomes, outcomes
    # refused by TLS until the probe rule blocks the address, then closed
    # before any TLS work
    assert outcomes[:2] == ["refused-by-tls"] * 2, outcomes
    assert outcomes[-40:] == ["closed-before-tls"] * 40, outcomes

    # `ced` at the blocked address says what happened.
    blocked = _ping(second, "limited")
    assert blocked["error"] == _closed_before_tls(charlie.address)
    # The paired dispatcher elsewhere is still served.
    assert _ping_all(fleet.dispatcher, names[:3])[0]["status"] == "ok"

    log = agent.ctl.log_text().splitlines()
    rate_blocks = [line for line in log if "ACTION=rate-block " in line]
    assert len(rate_blocks) == 1, rate_blocks  # logged once per block
    assert f"PEER={bravo.address}" in rate_blocks[0] and "REASON=probe" in rate_blocks[0]
    pings = [line for line in log if "ACTION=ping " in line]
    assert sum(f"PEER={fleet.lab.root_address}" in line for line in pings) >= 1000
