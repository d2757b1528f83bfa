#!/usr/bin/env python3
"""Build dist/ctrl-exec.pyz: one file that runs every ctrl-exec role.

    python3 build_zipapp.py                  # every supported target
    python3 build_zipapp.py --target host    # slim: only this machine's platform
    python3 build_zipapp.py --list-targets

What goes in:
- the `ctrlexec` package, with bytecode for the building interpreter;
- the pure-Python dependencies (tomlkit, platformdirs, pycparser; pg8000 with
  scramp, asn1crypto, python-dateutil and six for the PostgreSQL state
  backend), importable straight from the archive;
- native sets under `_natives/`: `cryptography` (abi3, one per platform) and
  `cffi` (one per platform and CPython minor), which the bootstrap unpacks on
  first use into a content-addressed cache (see ctrlexec/_bootstrap.py).

Wheels are downloaded with pip into a cache directory (network at build time
only) and checked against `wheels.lock` (file name and SHA-256), so two
builds from the same inputs give the same bytes: entries are sorted, dated
by SOURCE_DATE_EPOCH (default 2000-01-01) and stored with fixed modes.
`ctrlexec/_build.json` in the archive records the commit, the targets and
every wheel's hash (`ctrl-exec.pyz --version --verbose`); `SHA256SUMS` is
written beside the archive.
`--update-lock` records the hashes of newly downloaded wheels.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import py_compile
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "ctrlexec"
EXAMPLES = HERE / "examples"
LOCK_FILE = HERE / "wheels.lock"

CRYPTOGRAPHY = "50.0.2"
CFFI = "2.1.1"
PURE = {
    "tomlkit": "0.15.2",
    "platformdirs": "4.14.7",
    "pycparser": "2.23",
    # The PostgreSQL state backend's driver and what it imports (all pure
    # Python; loaded only when state_backend is a postgresql:// URL).
    "pg8000": "1.31.6",
    "scramp": "1.5.0",
    "asn1crypto": "1.5.1",
    "python-dateutil": "2.9.0.post0",
    "six": "1.17.0",
}
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
SHEBANG = b"#!/usr/bin/env python3\n"
DEFAULT_EPOCH = 946684800  # 2000-01-01T00:00:00Z
BUILD_INFO = "ctrlexec/_build.json"


@dataclass(frozen=True)
class Target:
    name: str
    libc: str  # glibc | musl
    arch: str  # x86_64 | aarch64
    platforms: tuple[str, ...]  # pip --platform tags, best first


TARGETS = {
    t.name: t
    for t in (
        Target(
            "manylinux_x86_64", "glibc", "x86_64", ("manylinux_2_17_x86_64", "manylinux2014_x86_64")
        ),
        Target(
            "manylinux_aarch64",
            "glibc",
            "aarch64",
            ("manylinux_2_17_aarch64", "manylinux2014_aarch64"),
        ),
        Target("musllinux_x86_64", "musl", "x86_64", ("musllinux_1_2_x86_64",)),
        Target("musllinux_aarch64", "musl", "aarch64", ("musllinux_1_2_aarch64",)),
    )
}


def host_target() -> str:
    arch = platform.machine()
    libc = "glibc" if os.confstr_names.get("CS_GNU_LIBC_VERSION") and _glibc() else "musl"
    for target in TARGETS.values():
        if target.arch == arch and target.libc == libc:
            return target.name
    raise SystemExit(f"build_zipapp: no target for this machine ({arch}, {libc})")


def _glibc() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return ""


# ---------------------------------------------------------------- wheels


def load_lock() -> dict[str, str]:
    if not LOCK_FILE.exists():
        return {}
    entries = {}
    for line in LOCK_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, digest = line.split()
            entries[name] = digest
    return entries


def save_lock(entries: dict[str, str]) -> None:
    lines = [
        "# Wheels carried by ctrl-exec.pyz: file name and SHA-256.",
        "# Rewritten by `python3 build_zipapp.py --update-lock`.",
    ]
    lines += [f"{name} {entries[name]}" for name in sorted(entries)]
    LOCK_FILE.write_text("\n".join(lines) + "\n")


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _find(cache: Path, pattern: str) -> Path | None:
    regex = re.compile(pattern)
    matches = sorted(p for p in cache.glob("*.whl") if regex.fullmatch(p.name))
    return matches[0] if matches else None


def _pip_download(cache: Path, requirement: str, extra: list[str]) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(cache),
        *extra,
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"build_zipapp: pip could not download {requirement} "
            f"({' '.join(extra)}):\n{result.stderr.strip()}"
        )


def fetch(cache: Path, requirement: str, pattern: str, extra: list[str]) -> Path:
    """A wheel from the cache, downloading it first if it is not there."""
    found = _find(cache, pattern)
    if found is None:
        _pip_download(cache, requirement, extra)
        found = _find(cache, pattern)
        if found is None:
            raise SystemExit(
                f"build_zipapp: pip gave no wheel matching {pattern} for {requirement}"
            )
    return found


def platform_args(target: Target) -> list[str]:
    args = []
    for tag in target.platforms:
        args += ["--platform", tag]
    return args


def wheel_plan(cache: Path, targets: list[Target]) -> dict[str, list[Path]]:
    """Download what the targets need; return {set name: [wheel, ...]}."""
    plan: dict[str, list[Path]] = {"pure": []}
    for name, version in PURE.items():
        plan["pure"].append(
            fetch(
                cache,
                f"{name}=={version}",
                rf"{re.escape(name.replace('-', '_'))}-{re.escape(version)}"
                r"-(py2\.)?py3-none-any\.whl",
                [],
            )
        )
    for target in targets:
        plat = platform_args(target)
        arch = re.escape(target.arch)
        family = "manylinux" if target.libc == "glibc" else "musllinux"
        plan[f"cryptography-{target.name}"] = [
            fetch(
                cache,
                f"cryptography=={CRYPTOGRAPHY}",
                rf"cryptography-{re.escape(CRYPTOGRAPHY)}-cp311-abi3-.*{family}[^-]*_{arch}\.whl",
                [*plat, "--python-version", "3.11", "--implementation", "cp", "--abi", "abi3"],
            )
        ]
        for python in PYTHONS:
            tag = "cp" + python.replace(".", "")
            plan[f"cffi-{tag}-{target.name}"] = [
                fetch(
                    cache,
                    f"cffi=={CFFI}",
                    rf"cffi-{re.escape(CFFI)}-{tag}-{tag}-.*{family}[^-]*_{arch}\.whl",
                    [*plat, "--python-version", python, "--implementation", "cp", "--abi", tag],
                )
            ]
    return plan


def verify_against_lock(plan: dict[str, list[Path]], update: bool) -> None:
    lock = load_lock()
    changed = False
    for wheels in plan.values():
        for wheel in wheels:
            digest = _sha256(wheel)
            recorded = lock.get(wheel.name)
            if recorded is None:
                if not update:
                    raise SystemExit(
                        f"build_zipapp: {wheel.name} is not in wheels.lock "
                        "(run with --update-lock to record it)"
                    )
                lock[wheel.name] = digest
                changed = True
            elif recorded != digest:
                raise SystemExit(
                    f"build_zipapp: {wheel.name} does not match its hash in "
                    f"wheels.lock (expected {recorded}, got {digest})"
                )
    if changed:
        save_lock(lock)


def min_libc(wheel: Path) -> str:
    """The oldest libc a wheel's platform tags promise to run on."""
    versions = [
        (int(a), int(b)) for a, b in re.findall(r"(?:many|musl)linux_(\d+)_(\d+)_", wheel.name)
    ]
    if "manylinux2014" in wheel.name:
        versions.append((2, 17))
    if not versions:
        raise SystemExit(f"build_zipapp: cannot tell the libc of {wheel.name}")
    low = min(versions)
    return f"{low[0]}.{low[1]}"


# ---------------------------------------------------------------- archive


class Archive:
    """A deterministic zip: sorted entries, fixed dates and modes."""

    def __init__(self, epoch: int):
        self.files: dict[str, tuple[bytes, int]] = {}
        self.date = time.gmtime(max(epoch, 315532800))[:6]

    def add(self, name: str, data: bytes, mode: int = 0o644) -> None:
        if name in self.files and self.files[name][0] != data:
            raise SystemExit(f"build_zipapp: two different files for {name}")
        self.files[name] = (data, mode)

    def write(self, path: Path) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name in sorted(self.files):
                data, mode = self.files[name]
                info = zipfile.ZipInfo(name, self.date)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = (0o100000 | mode) << 16
                archive.writestr(info, data, compresslevel=9)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        with open(temp, "wb") as handle:
            handle.write(SHEBANG)
            handle.write(buffer.getvalue())
        os.chmod(temp, 0o755)
        os.replace(temp, path)


def add_package(archive: Archive) -> None:
    """Our sources, plus legacy-location bytecode that zipimport loads on the
    building interpreter's version (other versions compile the source)."""
    with tempfile.TemporaryDirectory() as scratch:
        for path in sorted(PACKAGE.rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            relative = path.relative_to(HERE).as_posix()
            archive.add(relative, path.read_bytes())
            if path.suffix == ".py":
                compiled = Path(scratch) / (relative + "c")
                compiled.parent.mkdir(parents=True, exist_ok=True)
                py_compile.compile(
                    str(path),
                    cfile=str(compiled),
                    dfile=relative,
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                )
                archive.add(relative + "c", compiled.read_bytes())
    archive.add("__main__.py", (PACKAGE / "_pyz_main.py").read_bytes())


def add_examples(archive: Archive) -> None:
    """examples/ travels inside the archive: the demo installs its scripts and
    allowlist from there, and operators can list them without the source tree."""
    for path in sorted(EXAMPLES.rglob("*")):
        if path.is_file():
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            archive.add(path.relative_to(HERE).as_posix(), path.read_bytes(), mode)


def add_wheel(archive: Archive, wheel: Path, prefix: str = "") -> dict[str, str]:
    hashes = {}
    with zipfile.ZipFile(wheel) as source:
        for info in sorted(source.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            data = source.read(info)
            mode = 0o755 if info.filename.endswith(".so") else 0o644
            archive.add(prefix + info.filename, data, mode)
            hashes[info.filename] = hashlib.sha256(data).hexdigest()
    return hashes


def build(targets: list[Target], cache: Path, output: Path, update_lock: bool, epoch: int) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    plan = wheel_plan(cache, targets)
    verify_against_lock(plan, update_lock)
    archive = Archive(epoch)
    add_package(archive)
    add_examples(archive)
    for wheel in plan["pure"]:
        add_wheel(archive, wheel)
    sets = []
    for set_name, wheels in sorted(plan.items()):
        if set_name == "pure":
            continue
        kind, _, rest = set_name.partition("-")
        target_name = rest.split("-", 1)[-1] if kind == "cffi" else rest
        target = TARGETS[target_name]
        files: dict[str, str] = {}
        for wheel in wheels:
            files.update(add_wheel(archive, wheel, f"_natives/{set_name}/"))
        python = None if kind == "cryptography" else rest.split("-", 1)[0]
        sets.append(
            {
                "name": set_name,
                "kind": kind,
                "libc": target.libc,
                "arch": target.arch,
                "min_libc": max(min_libc(w) for w in wheels),
                "python": f"{python[2]}.{python[3:]}" if python else None,
                "files": files,
                "digest": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
            }
        )
    manifest = {"format": 1, "sets": sets}
    archive.add(
        "_natives/manifest.json", json.dumps(manifest, sort_keys=True, indent=1).encode() + b"\n"
    )
    archive.add(BUILD_INFO, build_info(plan, targets, epoch))
    archive.write(output)
    write_checksums(output)
    return manifest


def source_commit() -> str:
    """The commit the sources come from: CTRL_EXEC_BUILD_COMMIT, else git
    (with `-dirty` when the tree has uncommitted changes), else `unknown`."""
    given = os.environ.get("CTRL_EXEC_BUILD_COMMIT")
    if given:
        return given
    try:
        head = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    dirty = "-dirty" if status.returncode != 0 or status.stdout.strip() else ""
    return head.stdout.strip() + dirty


def build_info(plan: dict[str, list[Path]], targets: list[Target], epoch: int) -> bytes:
    """What `ctrl-exec.pyz --version --verbose` shows: only inputs of the
    build, never the time or the machine, so the bytes stay reproducible."""
    info = {
        "commit": source_commit(),
        "source_date_epoch": epoch,
        "built_with": platform.python_version(),
        "pythons": list(PYTHONS),
        "targets": [t.name for t in targets],
        "wheels": {w.name: _sha256(w) for wheels in plan.values() for w in wheels},
    }
    return json.dumps(info, sort_keys=True, indent=1).encode() + b"\n"


def write_checksums(output: Path) -> Path:
    """SHA256SUMS beside the archive, in `sha256sum -c` format; lines for
    other files in that directory are kept."""
    sums = output.parent / "SHA256SUMS"
    lines = {}
    if sums.exists():
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name and name != output.name and (output.parent / name).exists():
                lines[name] = digest
    lines[output.name] = _sha256(output)
    temp = sums.with_suffix(".tmp")
    temp.write_text("".join(f"{lines[name]}  {name}\n" for name in sorted(lines)))
    os.replace(temp, sums)
    return sums


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--target",
        action="append",
        metavar="NAME",
        help="build only for this platform (repeatable); 'host' means this machine",
    )
    parser.add_argument("--output", type=Path, default=HERE / "dist" / "ctrl-exec.pyz")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("CTRL_EXEC_WHEEL_CACHE", HERE / ".wheel-cache")),
        help="wheel download cache (default .wheel-cache, or CTRL_EXEC_WHEEL_CACHE)",
    )
    parser.add_argument(
        "--update-lock",
        action="store_true",
        help="record hashes of wheels that wheels.lock does not list yet",
    )
    parser.add_argument("--list-targets", action="store_true")
    args = parser.parse_args(argv)
    if args.list_targets:
        for name, target in TARGETS.items():
            print(f"{name:<20} {target.libc} {target.arch}, CPython {', '.join(PYTHONS)}")
        return 0
    names = args.target or list(TARGETS)
    names = [host_target() if name == "host" else name for name in names]
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)} (see --list-targets)")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    manifest = build(
        [TARGETS[n] for n in dict.fromkeys(names)], args.cache, args.output, args.update_lock, epoch
    )
    size = args.output.stat().st_size
    print(f"{args.output} {size / 1_048_576:.1f} MiB, sha256 {_sha256(args.output)}")
    print(f"checksum written to {args.output.parent / 'SHA256SUMS'}")
    print(f"cryptography {CRYPTOGRAPHY}, cffi {CFFI}; native targets:")
    for name in dict.fromkeys(names):
        target = TARGETS[name]
        pythons = sorted(
            s["python"]
            for s in manifest["sets"]
            if s["kind"] == "cffi" and s["name"].endswith(name)
        )
        minimum = max(s["min_libc"] for s in manifest["sets"] if s["name"].endswith(name))
        print(f"  {name:<20} {target.libc} >= {minimum}, CPython {', '.join(pythons)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
