"""Unit tests keep their temporary files in memory, and their compiled code.

`tmp_path` here is a fresh directory under one per-run directory on tmpfs
(/dev/shm) when the host has a usable one, removed at the end of the run.
The files are as real as anywhere (modes, owners, links, O_NOFOLLOW); what
goes is the disk: an fsync of every atomic write and the removal of the
previous runs' trees cost more than the tests themselves on a busy host.

`tmp_path_factory` is replaced the same way, so that a unit run never
creates pytest's numbered base directory (/tmp/pytest-of-<user>/pytest-N):
pytest removes the oldest of those at the end of a session that made one,
and when that was the tree of an earlier whole-suite run (venvs, pyz copies,
thousands of files) the removal alone took seconds and made a unit run
take twice as long as the one before it.

Compiled modules are cached (`__pycache__`, ignored by git and by the pyz
build) even when PYTHONDONTWRITEBYTECODE is set: recompiling the package and
re-rewriting every test module's asserts on each run was a third of the
unit layer's time.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.dont_write_bytecode = False  # see above: test modules imported after this are cached

MEMORY = Path("/dev/shm")
_numbers = itertools.count()


def _memory_root() -> str | None:
    """/dev/shm when files there can be written and marked executable."""
    try:
        probe = Path(tempfile.mkdtemp(prefix="ctrl-exec-probe-", dir=MEMORY))
    except OSError:
        return None
    try:
        script = probe / "x"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
        return str(MEMORY) if os.access(script, os.X_OK) else None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@pytest.fixture(scope="session")
def unit_tmp_root() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="ctrl-exec-unit-", dir=_memory_root()))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _fresh_dir(root: Path, name: str) -> Path:
    path = root / f"{re.sub(r'[^A-Za-z0-9_-]', '_', name)[:40]}-{next(_numbers)}"
    path.mkdir()
    return path


@pytest.fixture
def tmp_path(request: pytest.FixtureRequest, unit_tmp_root: Path) -> Path:
    return _fresh_dir(unit_tmp_root, request.node.name)


class UnitTempFactory:
    """tmp_path_factory's `mktemp` and `getbasetemp`, under unit_tmp_root."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, basename: str, numbered: bool = True) -> Path:
        return _fresh_dir(self.root, basename)

    def getbasetemp(self) -> Path:
        return self.root


@pytest.fixture(scope="session")
def tmp_path_factory(unit_tmp_root: Path) -> UnitTempFactory:
    return UnitTempFactory(unit_tmp_root)
