"""The one-file archive on a stock Debian with only apt's python3.

The image is container/Containerfile, the same one operators build; trixie
ships CPython 3.13, so this proves the archive's native set for a newer
interpreter than the build host's.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.container


@pytest.fixture(scope="module")
def trixie_image(podman, base_image, pyz):
    base_image("trixie")
    tag = f"localhost/ctrl-exec-test:{uuid.uuid4().hex[:12]}"
    built = subprocess.run(
        [
            podman,
            "build",
            "--pull=never",
            "-q",
            "-f",
            str(REPO / "container/Containerfile"),
            "--build-arg",
            "SUITE=trixie",
            "-t",
            tag,
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    yield tag
    subprocess.run([podman, "rmi", "-f", tag], capture_output=True)


def run_in(
    podman: str, image: str, *argv: str, entrypoint: str | None = None
) -> subprocess.CompletedProcess:
    command = [podman, "run", "--rm", "--network=none"]
    if entrypoint:
        command += ["--entrypoint", entrypoint]
    return subprocess.run([*command, image, *argv], capture_output=True, text=True, timeout=300)


def test_doctor_generates_a_key_with_the_bundled_cryptography(podman, trixie_image):
    result = run_in(podman, trixie_image, "doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["python"].startswith("3.13.")
    assert report["ok"] is True
    # Imported from the archive's unpacked native set, not from a system package.
    assert report["cryptography_from"].startswith("/var/cache/ctrl-exec/")


def test_program_names_pick_roles_in_the_image(podman, trixie_image):
    versions = run_in(podman, trixie_image, "--version", entrypoint="ced")
    assert versions.returncode == 0, versions.stderr
    assert "ctrl-exec" in versions.stdout
    agent_help = run_in(podman, trixie_image, "--help", entrypoint="ctrl-exec-agent")
    assert agent_help.returncode == 0, agent_help.stderr
    assert "request-pairing" in agent_help.stdout
    for name in ("ctrl-exec-dispatcher", "ctrl-exec-api", "cea", "ctrl-exec-executor"):
        named = run_in(podman, trixie_image, "--help", entrypoint=name)
        assert named.returncode == 0, (name, named.stderr)


def test_cache_is_private_to_root(podman, trixie_image):
    result = run_in(
        podman,
        trixie_image,
        "-c",
        "ctrl-exec doctor >/dev/null && stat -c '%a %U' /var/cache/ctrl-exec",
        entrypoint="/bin/sh",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["700", "root"]
