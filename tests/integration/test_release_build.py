"""Air-gapped delivery: two builds of one commit with the same wheels.lock
give the same bytes, SHA256SUMS verifies with `sha256sum -c`, and
`--version --verbose` names the commit, the Python targets and every
bundled wheel's hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WHEEL_CACHE = REPO / ".wheel-cache"


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The committed HEAD cloned twice (different paths, times and umask),
    each built with every target from the same wheel cache."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    head = _git("rev-parse", "HEAD", cwd=REPO)
    base = tmp_path_factory.mktemp("release")
    outputs = []
    for n, umask in ((1, 0o022), (2, 0o077)):
        clone = base / f"checkout-{n}"
        subprocess.run(
            ["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)],
            check=True,
            capture_output=True,
        )
        _git("checkout", "-q", head, cwd=clone)
        old = os.umask(umask)
        try:
            subprocess.run(
                [sys.executable, str(clone / "build_zipapp.py")],
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "CTRL_EXEC_WHEEL_CACHE": str(WHEEL_CACHE)},
                cwd=clone,
            )
        finally:
            os.umask(old)
        outputs.append(clone / "dist" / "ctrl-exec.pyz")
    return head, outputs


def test_two_builds_of_one_commit_are_identical(two_builds):
    _, (one, two) = two_builds
    assert one.read_bytes() == two.read_bytes()


def test_sha256sums_beside_the_archive_verifies(two_builds):
    _, (one, _) = two_builds
    sums = one.parent / "SHA256SUMS"
    digest = hashlib.sha256(one.read_bytes()).hexdigest()
    assert sums.read_text() == f"{digest}  ctrl-exec.pyz\n"
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=one.parent, capture_output=True, text=True
    )
    assert check.returncode == 0 and "ctrl-exec.pyz: OK" in check.stdout


def test_version_verbose_names_commit_targets_and_wheels(two_builds):
    head, (one, _) = two_builds
    text = subprocess.run(
        [sys.executable, str(one), "--version", "--verbose"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"commit: {head}\n" in text
    assert "Python targets: CPython 3.11, 3.12, 3.13, 3.14" in text
    lock = {}
    for line in (REPO / "wheels.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, digest = line.split()
            lock[name] = digest
    report = json.loads(
        subprocess.run(
            [sys.executable, str(one), "--version", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    wheels = report["build"]["wheels"]
    # every bundled wheel is in the lock with the same hash, and is shown
    assert wheels and all(lock[name] == digest for name, digest in wheels.items())
    assert all(f"  {digest}  {name}" in text for name, digest in wheels.items())
    assert any(name.startswith("cryptography-") for name in wheels)
