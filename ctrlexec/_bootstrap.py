"""Native libraries of ctrl-exec.pyz: choose, unpack once, verify, import.

Theory of operation. The archive carries `cryptography` (abi3, one set per
platform) and `cffi` (one set per platform and CPython minor) under
`_natives/`, described by `_natives/manifest.json` with a SHA-256 for every
file. Python cannot import extension modules from a zip, so the first import
of `cryptography`, `cffi` or `_cffi_backend` in a process triggers:

1. choose the sets for this interpreter, architecture and libc (glibc
   version from confstr, musl when that is absent); none fits -> one clear
   line naming what this machine is and what the archive carries;
2. find the cache: CTRL_EXEC_CACHE_DIR, else /var/cache/ctrl-exec as root,
   else the user's cache dir. The cache directory must belong to us and not
   be writable by group or others (refuse otherwise: importing code from a
   directory someone else can write is running their code);
3. for each set, `<cache>/<set>-<digest>`: under an flock, if missing or if
   any file's hash differs from the manifest, extract into a private temp
   dir, verify, and rename into place (atomic; a racing process either sees
   no directory or a complete one);
4. verify the hashes of what will be imported (a tampered file is
   re-extracted), then import from there.

Nothing is unpacked for commands that never need `cryptography` (`ced run`,
`ced ping`, the agent's request path), so they start fast and keep working
even when the native bundle cannot be used.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import platform
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import NativeBundleError

CACHE_ENV = "CTRL_EXEC_CACHE_DIR"
ROOT_CACHE = "/var/cache/ctrl-exec"
NATIVE_TOP_LEVEL = {"cryptography", "cffi", "_cffi_backend"}


def _archive_path() -> str | None:
    loader = globals().get("__loader__")
    archive = getattr(loader, "archive", None)
    return archive if archive and zipfile.is_zipfile(archive) else None


def _libc() -> tuple[str, tuple[int, ...]]:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        text = ""
    if text.startswith("glibc "):
        return "glibc", _version(text.split()[1])
    return "musl", _musl_version()


def _musl_version() -> tuple[int, ...]:
    arch = platform.machine()
    loader = Path(f"/lib/ld-musl-{arch}.so.1")
    if not loader.exists():
        return (0,)
    try:
        import subprocess

        out = subprocess.run([str(loader)], capture_output=True, text=True, timeout=5).stderr
    except (OSError, ValueError):
        return (1, 2)
    for line in out.splitlines():
        if line.startswith("Version "):
            return _version(line.split()[1])
    return (1, 2)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def choose_sets(
    manifest: dict, python: str, arch: str, libc: str, libc_version: tuple[int, ...]
) -> list[dict]:
    """The cryptography set and the cffi set for this machine, or raise."""
    fitting = [
        s
        for s in manifest["sets"]
        if s["arch"] == arch and s["libc"] == libc and libc_version >= _version(s["min_libc"])
    ]
    crypto = [s for s in fitting if s["kind"] == "cryptography"]
    cffi = [s for s in fitting if s["kind"] == "cffi" and s["python"] == python]
    if crypto and cffi:
        return [crypto[0], cffi[0]]
    carried = sorted(
        {
            f"{s['libc']} {s['arch']} (CPython "
            + ", ".join(
                sorted(
                    c["python"]
                    for c in manifest["sets"]
                    if c["kind"] == "cffi" and c["arch"] == s["arch"] and c["libc"] == s["libc"]
                )
            )
            + ")"
            for s in manifest["sets"]
            if s["kind"] == "cryptography"
        }
    )
    here = f"CPython {python} on {arch} with {libc} {'.'.join(map(str, libc_version))}"
    raise NativeBundleError(
        f"this ctrl-exec.pyz has no native libraries for {here}; it carries: "
        f"{'; '.join(carried) or 'none'} (build one with build_zipapp.py, or use a "
        f"matching Python)"
    )


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path(ROOT_CACHE)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ctrl-exec"


def _check_private(directory: Path) -> None:
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise NativeBundleError(f"native cache {directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise NativeBundleError(
            f"native cache {directory} belongs to uid {info.st_uid}, not to us "
            f"(uid {os.geteuid()}); refusing to import code from it"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise NativeBundleError(
            f"native cache {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); refusing to import code from it"
        )


def _ensure_cache(root: Path) -> Path:
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise NativeBundleError(f"cannot create native cache {root}: {exc.strerror}") from None
    _check_private(root)
    return root


def _hash_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _intact(directory: Path, files: dict[str, str]) -> bool:
    try:
        _check_private(directory)
        return all(_hash_file(directory / name) == digest for name, digest in files.items())
    except (OSError, NativeBundleError):
        return False


def _extract(archive: zipfile.ZipFile, set_info: dict, root: Path, target: Path) -> None:
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        prefix = f"_natives/{set_info['name']}/"
        for name, digest in set_info["files"].items():
            data = archive.read(prefix + name)
            if hashlib.sha256(data).hexdigest() != digest:
                raise NativeBundleError(
                    f"ctrl-exec.pyz is damaged: {prefix + name} does not match its manifest"
                )
            destination = temp / name
            destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(destination, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(destination, 0o500 if name.endswith(".so") else 0o400)
        os.rename(temp, target)
    except BaseException:
        _remove_tree(temp)
        raise


def _remove_tree(path: Path) -> None:
    import shutil

    def make_writable(func, failed, _exc):
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
            func(failed)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:  # 3.11 has only `onerror`, deprecated since 3.12; the handler fits both
        shutil.rmtree(path, onerror=make_writable)


def materialise(archive_path: str, sets: list[dict], root: Path) -> list[Path]:
    """Make every set present and intact in the cache; return their dirs."""
    import fcntl

    directories = []
    with zipfile.ZipFile(archive_path) as archive:
        for set_info in sets:
            target = root / f"{set_info['name']}-{set_info['digest'][:16]}"
            if _intact(target, set_info["files"]):
                directories.append(target)
                continue
            lock_path = root / f".{target.name}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not _intact(target, set_info["files"]):
                    if target.exists() or target.is_symlink():
                        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.bad.", dir=root))
                        os.rename(target, aside / "old")
                        _remove_tree(aside)
                    _extract(archive, set_info, root, target)
                    if not _intact(target, set_info["files"]):
                        raise NativeBundleError(
                            f"native cache {target} fails verification right after extraction"
                        )
            finally:
                os.close(fd)
            directories.append(target)
    return directories


class _NativeFinder:
    """Meta path finder that unpacks the native sets on the first import of
    one of their top-level modules, then finds modules there."""

    def __init__(self, archive_path: str):
        self.archive_path = archive_path
        self.directories: list[str] | None = None

    def _prepare(self) -> list[str]:
        if self.directories is None:
            with zipfile.ZipFile(self.archive_path) as archive:
                manifest = json.loads(archive.read("_natives/manifest.json"))
            libc, libc_version = _libc()
            python = f"{sys.version_info[0]}.{sys.version_info[1]}"
            sets = choose_sets(manifest, python, platform.machine(), libc, libc_version)
            root = _ensure_cache(cache_root())
            self.directories = [str(d) for d in materialise(self.archive_path, sets, root)]
        return self.directories

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in NATIVE_TOP_LEVEL or path is not None:
            return None
        directories = self._prepare()
        for directory in directories:
            if directory not in sys.path:
                sys.path.append(directory)
        return importlib.machinery.PathFinder.find_spec(fullname, directories)


def install() -> None:
    """Called by the pyz entry point; a no-op when running from source."""
    archive = _archive_path()
    if archive is None:
        return
    if not any(isinstance(f, _NativeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _NativeFinder(archive))
