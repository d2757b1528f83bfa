"""Shared fixtures: one built ctrl-exec.pyz per session, and a runner for it.

The pyz is `dist/ctrl-exec.pyz`, rebuilt by build_zipapp.py when its inputs
(the package, the build script, wheels.lock) changed since the last build.
The build happens once, after collection and before the first test, only
when a collected test needs the pyz, with a line saying so and how long it
took. CTRL_EXEC_PYZ points the suite at an already built archive instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DIST_PYZ = REPO / "dist" / "ctrl-exec.pyz"
STAMP = REPO / "dist" / ".ctrl-exec.pyz.inputs"


def _inputs_digest() -> str:
    digest = hashlib.sha256()
    files = sorted(
        p
        for tree in ("ctrlexec", "examples")
        for p in (REPO / tree).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    files += [REPO / "build_zipapp.py", REPO / "wheels.lock"]
    for path in files:
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(sys.version.encode())
    return digest.hexdigest()


def build_pyz(say=print) -> Path:
    """The pyz to test, built first when its inputs changed; `say` gets one
    line about what happened."""
    override = os.environ.get("CTRL_EXEC_PYZ")
    if override:
        say(f"pyz: testing {override} (CTRL_EXEC_PYZ)")
        return Path(override).resolve()
    wanted = _inputs_digest()
    if DIST_PYZ.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        say(f"pyz: {DIST_PYZ.relative_to(REPO)} is up to date")
        return DIST_PYZ
    say(f"pyz: building {DIST_PYZ.relative_to(REPO)} (its inputs changed) ...")
    started = time.monotonic()
    built = subprocess.run(
        [sys.executable, str(REPO / "build_zipapp.py")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if built.returncode != 0:
        raise pytest.UsageError(
            f"build_zipapp.py failed (exit {built.returncode}):\n{built.stderr[-4000:]}"
        )
    STAMP.write_text(wanted)
    say(f"pyz: built {DIST_PYZ.relative_to(REPO)} in {time.monotonic() - started:.1f}s")
    return DIST_PYZ


_built: list[Path] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the pyz up front, in sight, when any collected test needs it."""
    if not any("pyz" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    _built.append(build_pyz(say))


@pytest.fixture(scope="session")
def pyz() -> Path:
    return _built[0] if _built else build_pyz()


@pytest.fixture(scope="session")
def native_cache(tmp_path_factory) -> Path:
    """One native-library cache for the whole session (extract once)."""
    return tmp_path_factory.mktemp("native-cache")


class Pyz:
    """Runs `python3 ctrl-exec.pyz ...` the way an operator would."""

    def __init__(self, path: Path, cache: Path, root: Path | None = None):
        self.path = path
        self.cache = cache
        self.root = root

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTRL_EXEC_")}
        env["CTRL_EXEC_CACHE_DIR"] = str(self.cache)
        if self.root is not None:
            env["CTRL_EXEC_ROOT"] = str(self.root)
            env["CTRL_EXEC_LOG_TARGET"] = str(self.root / "ctrl-exec.log")
        env.update(extra or {})
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, str(self.path), *args]

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 60,
        check: bool = False,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.argv(*args),
            env=self.env(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{args} exited {result.returncode}\nstdout:\n{result.stdout}"
                f"\nstderr:\n{result.stderr}"
            )
        return result

    def popen(self, *args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return subprocess.Popen(self.argv(*args), env=self.env(env), **kwargs)

    def log_text(self) -> str:
        assert self.root is not None
        path = self.root / "ctrl-exec.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def ctl(pyz, native_cache, tmp_path) -> Pyz:
    """The pyz with a fresh `--root` (via CTRL_EXEC_ROOT) under tmp_path."""
    root = tmp_path / "root"
    root.mkdir()
    return Pyz(pyz, native_cache, root)


@pytest.fixture(scope="session")
def pyz_for(pyz, native_cache):
    """A Pyz runner for a given root, for fixtures wider than one test."""

    def make(root: Path) -> Pyz:
        root.mkdir(parents=True, exist_ok=True)
        return Pyz(pyz, native_cache, root)

    return make


@pytest.fixture(scope="session")
def session_ca():
    """The one test CA of the session (tests/support/testpki.py)."""
    from tests.support.testpki import SessionCA

    return SessionCA()


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session (tests/support/pgserver.py);
    skips with the reason when it cannot run here."""
    from tests.support import pgserver

    reason = pgserver.unavailable_reason()
    if reason:
        if os.environ.get("CTRL_EXEC_REQUIRE_POSTGRESQL"):
            pytest.fail(f"PostgreSQL is required here (CTRL_EXEC_REQUIRE_POSTGRESQL): {reason}")
        pytest.skip(f"SKIPPED LOUDLY: PostgreSQL tests cannot run: {reason}")
    server = pgserver.start_server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg_database(pg_server, request):
    """A database of its own for one test module, dropped after it."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())
    pg_server.drop_database(name)
    pg_server.create_database(name)
    yield name
    pg_server.drop_database(name)
