"""compose.yaml as an operator uses it: up, set up the PKI, pair, run.

Brought up with podman-compose under a unique project name and torn down
with its volumes afterwards. The API port is published on the host's
loopback, so the project is started on its own port map (a copy of
compose.yaml with a free port) to avoid clashing with anything else.
"""

from __future__ import annotations

import json
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
    text = (REPO / "compose.yaml").read_text()
    assert '"127.0.0.1:7445:7445"' in text
    compose_file = REPO / f".compose-{name}.yaml"
    compose_file.write_text(
        text.replace('"127.0.0.1:7445:7445"', f'"127.0.0.1:{api_port}:7445"').replace(
            "localhost/ctrl-exec:latest", f"localhost/ctrl-exec:{name}"
        )
    )
    base = [compose, "-p", name, "-f", str(compose_file)]
    try:
        up = subprocess.run(
            [*base, "up", "-d", "--build"], cwd=REPO, capture_output=True, text=True, timeout=900
        )
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        yield name, api_port
    finally:
        subprocess.run([*base, "down", "-v"], cwd=REPO, capture_output=True, timeout=300)
        subprocess.run([podman, "rmi", "-f", f"localhost/ctrl-exec:{name}"], capture_output=True)
        compose_file.unlink(missing_ok=True)


def exec_in(podman, container: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [podman, "exec", container, *argv], capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


def test_compose_pairs_and_runs(podman, project):
    name, api_port = project
    dispatcher, agent = f"{name}_dispatcher_1", f"{name}_agent_1"
    exec_in(podman, dispatcher, "ced", "setup-ca")
    exec_in(podman, dispatcher, "ced", "setup-ctrl-exec")
    exec_in(podman, dispatcher, "ced", "pairing-mode", "start", "--timeout", "120")
    asked = json.loads(
        exec_in(
            podman,
            agent,
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
    assert request["code"] == asked["code"] and request["hostname"] == "agent-01"
    exec_in(podman, dispatcher, "ced", "approve", asked["reqid"])

    # The agent container starts serving by itself once it holds its certificate.
    def ran():
        result = exec_in(
            podman, dispatcher, "ced", "run", "agent-01", "hello", "--", "two words", check=False
        )
        return result if result.returncode == 0 else None

    result = wait_for(ran, 60, "the agent to serve")
    assert "arg 1: [two words]" in result.stdout

    # The API is up and, with no hook configured, refuses by default.
    def health():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{api_port}/health", timeout=2)
        except urllib.error.HTTPError as refused:
            return refused.code
        except OSError:
            return None
        return 200

    assert wait_for(health, 60, "the API") == 403
