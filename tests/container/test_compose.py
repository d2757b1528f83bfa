"""compose.yaml as an operator uses it: up, set up the PKI, pair both agents
with the documented commands, run on both through `ced` and the API, take
everything down and up again, run again with nothing re-paired.

Brought up with podman-compose under a unique project name and torn down
with its volumes afterwards. The API port is published on the host's
loopback, so the project is started on its own port map and subnet (a copy
of compose.yaml, and of container/agent.toml whose allowed_ips names the
subnet) to avoid clashing with anything else. The copy of
container/dispatcher.toml sets api_auth_default = "allow" so the API can be
driven without a hook.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import urllib.request
import uuid

import pytest

from tests.conftest import REPO
from tests.support.agentproc import wait_for

pytestmark = pytest.mark.container


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def project(podman, base_image, pyz, tmp_path_factory):
    base_image("bookworm")
    compose = shutil.which("podman-compose")
    if compose is None:
        pytest.fail("podman-compose is missing (../shared/tools/container-env.sh installs it)")
    name = f"cetest{uuid.uuid4().hex[:8]}"
    api_port = _free_port()
    subnet = f"10.89.{random.randrange(100, 250)}.0/24"
    text = (REPO / "compose.yaml").read_text()
    for expected in ('"127.0.0.1:7445:7445"', "10.89.77.0/24", "./container/agent.toml"):
        assert expected in text
    agent_toml = REPO / f".compose-{name}-agent.toml"
    agent_toml.write_text(
        (REPO / "container/agent.toml").read_text().replace("10.89.77.0/24", subnet)
    )
    dispatcher_toml = REPO / f".compose-{name}-dispatcher.toml"
    dispatcher_toml.write_text(
        (REPO / "container/dispatcher.toml")
        .read_text()
        .replace('api_auth_default = "deny"', 'api_auth_default = "allow"')
    )
    compose_file = REPO / f".compose-{name}.yaml"
    compose_file.write_text(
        text.replace('"127.0.0.1:7445:7445"', f'"127.0.0.1:{api_port}:7445"')
        .replace("localhost/ctrl-exec:latest", f"localhost/ctrl-exec:{name}")
        .replace("10.89.77.0/24", subnet)
        .replace("./container/agent.toml", f"./{agent_toml.name}")
        .replace("./container/dispatcher.toml", f"./{dispatcher_toml.name}")
    )
    base = [compose, "-p", name, "-f", str(compose_file)]

    def compose_run(*args: str) -> None:
        done = subprocess.run([*base, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    try:
        compose_run("up", "-d", "--build")
        yield name, api_port, compose_run
    finally:
        subprocess.run([*base, "down", "-v"], cwd=REPO, capture_output=True, timeout=300)
        subprocess.run([podman, "rmi", "-f", f"localhost/ctrl-exec:{name}"], capture_output=True)
        for path in (compose_file, agent_toml, dispatcher_toml):
            path.unlink(missing_ok=True)


def exec_in(podman, container: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [podman, "exec", container, *argv], capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


AGENTS = ("agent-01", "agent-02")


def _runs_everywhere(podman, dispatcher: str, api_port: int, words: str) -> None:
    for agent in AGENTS:

        def ran(agent=agent):
            result = exec_in(
                podman, dispatcher, "ced", "run", agent, "hello", "--", words, check=False
            )
            return result if result.returncode == 0 else None

        result = wait_for(ran, 120, f"{agent} to serve")
        assert f"arg 1: [{words}]" in result.stdout
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port}/run",
        data=json.dumps({"hosts": list(AGENTS), "script": "hello", "args": [words]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        body = json.loads(answer.read())
    assert [r["host"] for r in body["results"]] == list(AGENTS)
    assert all(r["exit"] == 0 and f"arg 1: [{words}]" in r["stdout"] for r in body["results"])


def test_compose_pairs_two_agents_runs_restarts_runs(podman, project):
    name, api_port, compose_run = project
    dispatcher = f"{name}_dispatcher_1"
    exec_in(podman, dispatcher, "ced", "setup-ca")
    exec_in(podman, dispatcher, "ced", "setup-ctrl-exec")
    exec_in(podman, dispatcher, "ced", "pairing-mode", "start", "--timeout", "300")
    for agent in AGENTS:
        asked = json.loads(
            exec_in(
                podman,
                f"{name}_{agent}_1",
                "ctrl-exec-agent",
                "request-pairing",
                "--dispatcher",
                "dispatcher",
                "--background",
                "--json",
            ).stdout
        )
        listed = json.loads(exec_in(podman, dispatcher, "ced", "list-requests", "--json").stdout)
        (request,) = [r for r in listed if r["reqid"] == asked["reqid"]]
        assert request["code"] == asked["code"] and request["hostname"] == agent
        exec_in(podman, dispatcher, "ced", "approve", asked["reqid"])

    # Each agent container starts serving by itself once it holds its certificate.
    _runs_everywhere(podman, dispatcher, api_port, "two words")

    # The services and the operator CLI run as their service users, not root.
    for container, user in (
        (dispatcher, "ctrl-exec"),
        *((f"{name}_{agent}_1", "ctrl-exec-agent") for agent in AGENTS),
    ):
        assert exec_in(podman, container, "id", "-un").stdout.strip() == user
        status = exec_in(podman, container, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert "0" not in uids, (container, uids)

    # compose.yaml's health checks pass for every service
    for container in (dispatcher, *(f"{name}_{agent}_1" for agent in AGENTS)):
        checked = subprocess.run(
            [podman, "healthcheck", "run", container], capture_output=True, text=True, timeout=120
        )
        assert checked.returncode == 0, (container, checked.stdout, checked.stderr)

    # Everything down and up again: the volumes keep the PKI, the registry
    # and the agents' identities; nothing is paired again.
    compose_run("down")
    compose_run("up", "-d")
    _runs_everywhere(podman, dispatcher, api_port, "after restart")
