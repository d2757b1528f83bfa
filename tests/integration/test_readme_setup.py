"""The README's two quick-start commands, run as written in a fresh copy of
the source tree (what a new user has after a clone):

1. `python3 build_zipapp.py && python3 dist/ctrl-exec.pyz demo`
2. `python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest`

The lines are taken from README.md itself. The wheel download cache of this
checkout is reused (CTRL_EXEC_WHEEL_CACHE, docs/testing.md), and the test
suite the second command starts is limited to tests/unit through
PYTEST_ADDOPTS (docs/testing.md's `.venv/bin/python -m pytest tests/unit -q`):
running the whole suite from inside itself would start it again. CI runs
the unlimited command (.ci/run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO


def _quick_start_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    after = text[text.index("## Quick start") :]
    start = after.index("```sh\n") + len("```sh\n")
    block = after[start : after.index("```", start)]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


README_SETUP = _quick_start_lines()


@pytest.fixture
def checkout(tmp_path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    target = tmp_path / "ctrl-exec"
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if not source.is_file():
            continue  # deleted in the working tree
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)
    return target


def test_readme_quick_start_commands_work(checkout, native_cache):
    assert README_SETUP == [
        "python3 build_zipapp.py && python3 dist/ctrl-exec.pyz demo",
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'"
        " && .venv/bin/python -m pytest",
    ], "README's quick start changed: update this test"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTRL_EXEC_", "PYTEST_"))}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        CTRL_EXEC_WHEEL_CACHE=str(REPO / ".wheel-cache"),
        CTRL_EXEC_CACHE_DIR=str(native_cache),
        PYTEST_ADDOPTS="tests/unit -q -p no:cacheprovider",
    )
    build_and_demo, venv_and_tests = README_SETUP
    done = subprocess.run(
        ["/bin/sh", "-c", build_and_demo],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "The demo worked" in done.stdout
    done = subprocess.run(
        ["/bin/sh", "-c", venv_and_tests],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
