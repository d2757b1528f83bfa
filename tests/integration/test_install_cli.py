"""`install` on this host without changing it: --dry-run lists the steps a
real run would take and touches nothing; refusals are clear. The real
install runs in tests/container/test_systemd_install.py."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys

import pytest

from ctrlexec import installer


def _unit_verify_available() -> bool:
    return shutil.which("systemd-analyze") is not None


def test_dry_run_lists_the_steps_and_changes_nothing(pyz, tmp_path):
    prefix = tmp_path / "prefix"
    result = subprocess.run(
        [sys.executable, str(pyz), "install", "--role", "agent", "--prefix", str(prefix),
         "--dry-run", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    steps = "\n".join(report["steps"])
    for name in installer.PROGRAM_NAMES:
        assert f"link {prefix}/bin/{name} -> {prefix}/lib/ctrl-exec/ctrl-exec.pyz" in steps
    assert f"install {prefix}/lib/ctrl-exec/ctrl-exec.pyz" in steps
    assert not prefix.exists()


def test_refusals(pyz, tmp_path):
    def run(*args, python=sys.executable, **kwargs):
        return subprocess.run(
            [python, str(pyz), "install", *args],
            capture_output=True, text=True, timeout=60, **kwargs,
        )  # fmt: skip

    no_role = run("--dry-run")
    assert no_role.returncode == 2 and "--role" in no_role.stderr
    purge_alone = run("--role", "agent", "--purge", "--dry-run")
    assert purge_alone.returncode != 0 and "--purge goes with --uninstall" in purge_alone.stderr
    # install writes the system paths: a --root (or CTRL_EXEC_ROOT) that would
    # be ignored is refused, so nobody installs for real while meaning a sandbox
    sandbox = tmp_path / "sandbox"
    for how in (
        run("--role", "agent", "--root", str(sandbox), "--dry-run", "--json"),
        run("--role", "agent", "--dry-run", env={**os.environ, "CTRL_EXEC_ROOT": str(sandbox)}),
    ):
        assert how.returncode == 2 and "--root" in how.stderr and "/etc" in how.stderr, how
        assert "/usr/local" not in how.stdout
    assert run("--role", "agent", "--root", "/", "--dry-run").returncode == 0
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        tmp_path.chmod(0o755)
        as_user = run(
            "--role", "agent", "--prefix", str(tmp_path / "p"), python="python3",
            preexec_fn=lambda: (os.setgid(nobody.pw_gid), os.setuid(nobody.pw_uid)),
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )  # fmt: skip
        assert as_user.returncode != 0 and "run it as root" in as_user.stderr


@pytest.mark.skipif(not _unit_verify_available(), reason="systemd-analyze not installed")
def test_units_are_accepted_by_systemd_analyze(tmp_path):
    """The container test verifies them where the programs exist; here the
    ExecStart programs are stand-ins under a temporary prefix."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in installer.PROGRAM_NAMES:
        stub = bindir / name
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    units = []
    for unit in installer.UNITS.values():
        text = (
            (repo / "examples/systemd" / unit).read_text().replace("/usr/local/bin/", f"{bindir}/")
        )
        (tmp_path / unit).write_text(text)
        units.append(str(tmp_path / unit))
    verified = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=120
    )
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
