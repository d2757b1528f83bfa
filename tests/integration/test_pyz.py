"""The one-file appliance: ctrl-exec.pyz runs anywhere with only CPython,
unpacks its native libraries safely, and picks its role."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _clean_env(cache: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTRL_EXEC_", "PYTHON"))}
    if cache is not None:
        env["CTRL_EXEC_CACHE_DIR"] = str(cache)
    return env


def test_version_from_an_empty_dir_without_site_packages(pyz, tmp_path):
    result = subprocess.run(
        [sys.executable, "-I", str(pyz), "--version"],
        cwd=tmp_path,
        env=_clean_env(None),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ctrl-exec ")


@pytest.mark.parametrize(
    "role, modes",
    [
        (
            "agent",
            [
                "serve",
                "request-pairing",
                "pairing-status",
                "self-check",
                "self-ping",
                "promote-cert",
                "cert-staged",
                "paired",
            ],
        ),
        (
            "ced",
            [
                "run",
                "status",
                "wait",
                "ping",
                "pairing-mode",
                "list-requests",
                "approve",
                "deny",
                "setup-ca",
                "setup-ctrl-exec",
                "list-agents",
                "edit-agent",
                "list-locks",
                "rotate-cert",
                "serial-status",
                "unpair",
                "maintain",
            ],
        ),
    ],
)
def test_role_help_lists_the_0_12_modes(pyz, tmp_path, role, modes):
    result = subprocess.run(
        [sys.executable, "-I", str(pyz), role, "--help"],
        cwd=tmp_path,
        env=_clean_env(None),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    listed = {
        line.split()[0]
        for line in result.stdout.splitlines()
        if line.startswith("    ") and line.split()
    }
    assert set(modes) <= listed


@pytest.mark.parametrize(
    "link, version_line",
    [
        ("ced", "ctrl-exec-dispatcher "),
        ("ctrl-exec-dispatcher", "ctrl-exec-dispatcher "),
        ("ctrl-exec-agent", "ctrl-exec-agent "),
        ("cea", "ctrl-exec-agent "),
        ("ctrl-exec-executor", "ctrl-exec-executor "),
    ],
)
def test_symlink_name_picks_the_role(pyz, tmp_path, link, version_line):
    (tmp_path / link).symlink_to(pyz)
    result = subprocess.run(
        [str(tmp_path / link), "--version"], env=_clean_env(None), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(version_line)


def test_unknown_role_is_a_clear_usage_error(pyz):
    result = subprocess.run(
        [sys.executable, str(pyz), "nope"], env=_clean_env(None), capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unknown role 'nope'" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A venv with no cryptography (and no pip)."""
    where = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import cryptography"], capture_output=True)
    assert probe.returncode != 0
    return python


def _doctor(python: Path, pyz: Path, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-I", "-S", str(pyz), "doctor", "--json"],
        cwd=cwd,
        env=_clean_env(cache),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cryptography_comes_from_the_bundle(pyz, bare_venv, tmp_path):
    cache = tmp_path / "cache"
    result = _doctor(bare_venv, pyz, cache, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["cryptography_from"].startswith(str(cache) + "/cryptography-")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_ten_concurrent_first_runs_share_one_safe_cache(pyz, bare_venv, tmp_path):
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: _doctor(bare_venv, pyz, cache, tmp_path), range(10)))
    for result in results:
        assert result.returncode == 0, result.stderr
    assert _mode(cache) == 0o700
    sets = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    assert [p.name.split("-")[0] for p in sets] == ["cffi", "cryptography"]
    for directory in sets:
        assert _mode(directory) == 0o700 and os.lstat(directory).st_uid == os.geteuid()
        for path in directory.rglob("*"):
            if path.is_file():
                assert _mode(path) & 0o077 == 0, path
    leftovers = [p.name for p in cache.iterdir() if p.is_dir() and p.name.startswith(".")]
    assert leftovers == []


def test_tampered_cache_is_detected_and_reextracted(pyz, bare_venv, tmp_path):
    cache = tmp_path / "cache"
    assert _doctor(bare_venv, pyz, cache, tmp_path).returncode == 0
    crypto_dir = next(cache.glob("cryptography-*"))
    victim = crypto_dir / "cryptography" / "__init__.py"
    original = victim.read_bytes()
    os.chmod(victim, 0o600)
    victim.write_bytes(original + b"\nraise SystemExit('tampered code ran')\n")
    result = _doctor(bare_venv, pyz, cache, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tampered code ran" not in result.stdout + result.stderr
    assert victim.read_bytes() == original


def test_cache_writable_by_others_is_refused(pyz, bare_venv, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    result = _doctor(bare_venv, pyz, cache, tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert "writable by group or others" in report["error"]


def test_cache_of_another_user_is_refused(pyz, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to create a directory owned by someone else")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    result = subprocess.run(
        [sys.executable, "-I", str(pyz), "doctor"],
        env=_clean_env(cache),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "belongs to uid 65534" in result.stdout


def test_root_cache_defaults_to_var_cache(pyz, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the root cache location applies to root only")
    default = Path("/var/cache/ctrl-exec")
    existed = default.exists()
    try:
        result = subprocess.run(
            [sys.executable, "-I", str(pyz), "doctor", "--json"],
            env=_clean_env(None),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["cache"] == str(default)
        assert _mode(default) == 0o700 and os.lstat(default).st_uid == 0
    finally:
        if not existed:
            shutil.rmtree(default, ignore_errors=True)


def test_no_fitting_native_set_is_one_clear_line(tmp_path, native_cache):
    foreign = tmp_path / "foreign.pyz"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "build_zipapp.py"),
            "--target",
            "musllinux_aarch64",
            "--output",
            str(foreign),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if os.uname().machine == "aarch64":
        pytest.skip("this machine is the foreign target")
    result = subprocess.run(
        [sys.executable, "-I", str(foreign), "doctor"],
        env=_clean_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "has no native libraries for CPython" in result.stdout
    assert "it carries: musl aarch64" in result.stdout
