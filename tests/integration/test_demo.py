"""The README's first command ends in `ctrl-exec.pyz demo`: it must work."""

from __future__ import annotations

import os
import re
import signal

import pytest


def test_demo_pairs_and_runs_a_script(pyz, native_cache, tmp_path):
    from tests.conftest import Pyz

    result = Pyz(pyz, native_cache).run("demo", "--dir", str(tmp_path), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    agent_code = re.search(r"the agent shows pairing code (\d{6})", out).group(1)
    assert f"shows code {agent_code}: it matches" in out
    assert re.search(r"==> \S+  \[OK  exit:0  \d+ms  req:[0-9a-f]{16}\]", out)
    for shown in ("arg 1: [two words]", "arg 2: []", "arg 3: [ünïcödé]", "arg 4: [$HOME;true]"):
        assert shown in out
    assert list(tmp_path.iterdir()) == [], "the demo must clean up after itself"


def test_demo_keep_leaves_a_usable_agent(pyz, native_cache, tmp_path):
    from tests.conftest import Pyz

    result = Pyz(pyz, native_cache).run("demo", "--keep", "--dir", str(tmp_path), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int(re.search(r"The agent keeps running \(pid (\d+)\)", result.stdout).group(1))
    try:
        (root,) = tmp_path.iterdir()
        assert f"export CTRL_EXEC_ROOT={root}" in result.stdout
        name = re.search(r"ced run (\S+) uptime-report", result.stdout).group(1)
        kept = Pyz(pyz, native_cache, root)
        run = kept.run("ced", "run", name, "uptime-report")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "root fs:" in run.stdout
        failed = kept.run("ced", "run", name, "fail-on-purpose", "--", "7")
        assert failed.returncode == 1
        assert "exit:7" in failed.stdout
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pytest.fail("the kept agent was not running")
