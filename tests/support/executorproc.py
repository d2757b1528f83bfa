"""The privileged executor for tests: test users made with useradd (and
removed), a deployment root outside /tmp (a `writable` profile gives scripts
a private /tmp, which would hide files kept there), `executor serve` through
the pyz, and a way to run Python code as another user.

Everything here needs root; callers skip loudly otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"


def require_root() -> None:
    import pytest

    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: the executor tests need root (users, mounts, capabilities)")
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"SKIPPED LOUDLY: {SYSTEM_PYTHON} is needed to run code as another user")


@contextlib.contextmanager
def temporary_user(name: str):
    """A system user `name` (no home, no login) for the duration."""
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@contextlib.contextmanager
def shared_root(prefix: str):
    """A directory every user can traverse, outside /tmp, removed after."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class ExecutorProcess:
    """`executor serve` for the agent files under the runner's root."""

    def __init__(self, ctl, socket_path: Path, agent_user: str):
        self.ctl = ctl
        self.socket_path = socket_path
        self.agent_user = agent_user
        self.proc: subprocess.Popen | None = None

    def start(self, seconds: float = 30.0) -> ExecutorProcess:
        self.proc = self.ctl.popen(
            "executor", "serve", "--agent-user", self.agent_user, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + seconds
        while not self.socket_path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"executor serve exited: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("executor socket did not appear")
            time.sleep(0.01)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int:
        from tests.support.agentproc import stop_process

        return stop_process(self.proc)


def run_as(user: str, code: str, *args: str, timeout: float = 120.0) -> dict:
    """Run Python `code` as `user` with the system interpreter (standard
    library only); it prints one JSON value, which is returned."""
    entry = pwd.getpwnam(user)
    result = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", code, *args],
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
