"""Installing ctrl-exec.pyz on a host as services, and removing it again.

`plan_install` and `plan_uninstall` look at the host and return the steps
that would bring it to the wanted state, each with a one-line description
and a function that performs it; nothing is changed until `apply`. A step
is planned only when something differs, so a second run plans nothing
(idempotent) and `--dry-run` prints exactly what a real run would do.

What a host gets (docs/install.md): the archive in `<prefix>/lib/ctrl-exec`,
the program names as symlinks in `<prefix>/bin`, the service users, the
directories with the modes of docs/paths.md, example configuration files
where none exist (a 0.12 `.conf` counts: it is read in place), and the
systemd units of examples/systemd with `<prefix>/bin` substituted.
Configuration files are never overwritten; units are ours and are updated.
`plan_uninstall` removes units, links and the archive and keeps keys,
configuration and state unless `purge`.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from . import store
from .errors import InstallError

ROLES = ("agent", "dispatcher", "executor")
PROGRAM_NAMES = (
    "ced",
    "ctrl-exec-dispatcher",
    "ctrl-exec-api",
    "ctrl-exec-agent",
    "cea",
    "ctrl-exec-executor",
)
DEFAULT_PREFIX = Path("/usr/local")
UNIT_DIR = Path("/etc/systemd/system")
NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")

# User (and its own group) of each role's service; `ctrl-exec` is also the
# group of operators allowed to read the dispatcher's state (operations §1).
USERS = {"dispatcher": "ctrl-exec", "agent": "ctrl-exec-agent", "executor": "ctrl-exec-agent"}
UNITS = {
    "dispatcher": "ctrl-exec-api.service",
    "agent": "ctrl-exec-agent.service",
    "executor": "ctrl-exec-executor.service",
}


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int
    owner: str
    group: str


# docs/paths.md and operations §3.8, per role.
DIRECTORIES = {
    "dispatcher": (
        Dir("/etc/ctrl-exec", 0o750, "root", "ctrl-exec"),
        Dir("/var/lib/ctrl-exec", 0o770, "root", "ctrl-exec"),
        Dir("/var/lib/ctrl-exec/pairing", 0o770, "root", "ctrl-exec"),
        Dir("/var/lib/ctrl-exec/agents", 0o2770, "root", "ctrl-exec"),
        Dir("/var/lib/ctrl-exec/locks", 0o2770, "root", "ctrl-exec"),
        Dir("/var/lib/ctrl-exec/runs", 0o2770, "root", "ctrl-exec"),
        Dir("/var/cache/ctrl-exec", 0o700, "root", "root"),
    ),
    "agent": (
        Dir("/etc/ctrl-exec-agent", 0o750, "root", "ctrl-exec-agent"),
        Dir("/var/lib/ctrl-exec-agent", 0o750, "ctrl-exec-agent", "ctrl-exec-agent"),
        Dir("/opt/ctrl-exec-scripts", 0o750, "root", "ctrl-exec-agent"),
        Dir("/var/cache/ctrl-exec", 0o700, "root", "root"),
    ),
    "executor": (Dir("/var/cache/ctrl-exec", 0o700, "root", "root"),),
}

# (example in the archive, installed path, 0.12 file that stands in for it, group)
DISPATCHER_ETC = "/etc/ctrl-exec"
AGENT_ETC = "/etc/ctrl-exec-agent"
CONFIGS = {
    "dispatcher": (
        (
            "ctrl-exec.toml",
            f"{DISPATCHER_ETC}/ctrl-exec.toml",
            f"{DISPATCHER_ETC}/ctrl-exec.conf",
            "ctrl-exec",
        ),
    ),
    "agent": (
        ("agent.toml", f"{AGENT_ETC}/agent.toml", f"{AGENT_ETC}/agent.conf", "ctrl-exec-agent"),
        (
            "scripts.toml",
            f"{AGENT_ETC}/scripts.toml",
            f"{AGENT_ETC}/scripts.conf",
            "ctrl-exec-agent",
        ),
    ),
    "executor": (),
}

PURGE_PATHS = {
    "dispatcher": ("/etc/ctrl-exec", "/var/lib/ctrl-exec", "/var/cache/ctrl-exec-api"),
    "agent": ("/etc/ctrl-exec-agent", "/var/lib/ctrl-exec-agent", "/var/cache/ctrl-exec-agent"),
    "executor": (),
}


@dataclass(frozen=True)
class Step:
    what: str
    run: Callable[[], None] = field(compare=False, repr=False)


# ---------------------------------------------------------------- sources


class Archive:
    """The running ctrl-exec.pyz: its bytes and the examples inside it."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise InstallError(f"cannot read the archive {path}: {exc}") from None

    def example(self, relative: str) -> bytes:
        try:
            return self._zip.read(f"examples/{relative}")
        except KeyError:
            raise InstallError(f"the archive has no examples/{relative}") from None


def running_archive() -> Path:
    from . import _bootstrap

    archive = _bootstrap._archive_path()
    if not archive:
        raise InstallError("install works from ctrl-exec.pyz (build it with build_zipapp.py)")
    return Path(archive)


def unit_text(archive: Archive, unit: str, bindir: Path) -> bytes:
    text = archive.example(f"systemd/{unit}").decode("utf-8")
    return text.replace("/usr/local/bin/", f"{bindir}/").encode("utf-8")


def commented_out(example: bytes) -> bytes:
    """An allowlist example with every entry commented: a fresh host allows
    nothing until the operator says so."""
    lines = []
    for line in example.decode("utf-8").splitlines():
        lines.append(line if not line.strip() or line.startswith("#") else f"# {line}")
    return ("\n".join(lines) + "\n").encode("utf-8")


# ---------------------------------------------------------------- probes


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _ids(owner: str, group: str) -> tuple[int, int]:
    uid = 0 if owner == "root" else pwd.getpwnam(owner).pw_uid
    gid = 0 if group == "root" else grp.getgrnam(group).gr_gid
    return uid, gid


def _systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def _nologin() -> str:
    return next((shell for shell in NOLOGIN_SHELLS if os.path.exists(shell)), "/bin/false")


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.returncode}")


# ---------------------------------------------------------------- install


@dataclass
class Options:
    roles: tuple[str, ...]
    prefix: Path = DEFAULT_PREFIX
    unit_dir: Path = UNIT_DIR

    @property
    def libdir(self) -> Path:
        return self.prefix / "lib" / "ctrl-exec"

    @property
    def pyz(self) -> Path:
        return self.libdir / "ctrl-exec.pyz"

    @property
    def bindir(self) -> Path:
        return self.prefix / "bin"


def plan_install(options: Options, archive: Archive) -> list[Step]:
    steps: list[Step] = []
    steps += _plan_users(options.roles)
    steps += _plan_program(options, archive)
    seen = set()
    for role in options.roles:
        for directory in DIRECTORIES[role]:
            if directory.path not in seen:
                seen.add(directory.path)
                steps += _plan_dir(directory)
    for role in options.roles:
        for example, target, legacy, group in CONFIGS[role]:
            steps += _plan_config(archive, example, Path(target), Path(legacy), group)
    steps += _plan_units(options, archive)
    return steps


def _plan_users(roles: tuple[str, ...]) -> list[Step]:
    steps = []
    for name in dict.fromkeys(USERS[role] for role in roles):
        if not _group_exists(name):
            steps.append(Step(f"create group {name}", partial(_run, "groupadd", "--system", name)))
        if not _user_exists(name):
            steps.append(
                Step(
                    f"create system user {name} (no login, no home)",
                    partial(_run, *_useradd(name)),
                )
            )
    return steps


def _useradd(name: str) -> list[str]:
    return [
        "useradd",
        "--system",
        "--gid",
        name,
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        _nologin(),
        name,
    ]


def _plan_program(options: Options, archive: Archive) -> list[Step]:
    steps = []
    source = archive.path.resolve()
    target = options.pyz
    same = target.exists() and source != target.resolve() and _same_bytes(source, target)
    if source != target.resolve() and not same:
        steps.append(
            Step(f"install {target} (0755, from {source})", lambda: _copy_program(source, target))
        )
    for name in PROGRAM_NAMES:
        link = options.bindir / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        if link.exists() and not link.is_symlink():
            what = f"link {link} -> {target} (the existing file is kept as {link}.pre-ctrl-exec)"
        else:
            what = f"link {link} -> {target}"
        steps.append(Step(what, partial(_link, link, target)))
    return steps


def _same_bytes(one: Path, two: Path) -> bool:
    if one.stat().st_size != two.stat().st_size:
        return False
    with open(one, "rb") as a, open(two, "rb") as b:
        while True:
            chunk = a.read(1 << 20)
            if chunk != b.read(1 << 20):
                return False
            if not chunk:
                return True


def _copy_program(source: Path, target: Path) -> None:
    store.ensure_dir(target.parent, 0o755)
    store.atomic_write(target, source.read_bytes(), 0o755, (0, 0))


def _link(link: Path, target: Path) -> None:
    store.ensure_dir(link.parent, 0o755)
    if link.exists() and not link.is_symlink():
        os.replace(link, link.with_name(link.name + ".pre-ctrl-exec"))
    temp = link.with_name(f".{link.name}.ctrl-exec-tmp")
    temp.unlink(missing_ok=True)
    os.symlink(target, temp)
    os.replace(temp, link)


def _plan_dir(directory: Dir) -> list[Step]:
    path = Path(directory.path)
    label = f"{directory.mode:04o} {directory.owner}:{directory.group}"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return [Step(f"create directory {path} ({label})", lambda: _make_dir(directory))]
    if not stat.S_ISDIR(info.st_mode):
        raise InstallError(f"{path} exists and is not a directory")
    if not _ids_known(directory):  # its user is created by this run
        return [Step(f"set {path} to {label}", lambda: _fix_dir(directory))]
    wanted_ids = _ids(directory.owner, directory.group)
    if stat.S_IMODE(info.st_mode) != directory.mode or (info.st_uid, info.st_gid) != wanted_ids:
        return [Step(f"set {path} to {label}", lambda: _fix_dir(directory))]
    return []


def _ids_known(directory: Dir) -> bool:
    return (directory.owner == "root" or _user_exists(directory.owner)) and (
        directory.group == "root" or _group_exists(directory.group)
    )


def _make_dir(directory: Dir) -> None:
    store.ensure_dir(Path(directory.path).parent, 0o755)
    os.mkdir(directory.path, directory.mode)
    _fix_dir(directory)


def _fix_dir(directory: Dir) -> None:
    os.chown(directory.path, *_ids(directory.owner, directory.group), follow_symlinks=False)
    os.chmod(directory.path, directory.mode)


def _plan_config(archive: Archive, example: str, target: Path, legacy: Path, group: str):
    if target.exists():
        return []
    if legacy.exists():
        return []  # a 0.12 host: its .conf file is read in place (docs/upgrade.md)
    data = archive.example(example)
    if example == "scripts.toml":
        data = commented_out(data)

    def write() -> None:
        store.atomic_write(target, data, 0o640, _ids("root", group))

    return [Step(f"write example {target} (0640 root:{group})", write)]


def _plan_units(options: Options, archive: Archive) -> list[Step]:
    if not options.unit_dir.parent.is_dir():
        return []  # no systemd on this host
    steps = []
    for role in options.roles:
        unit = UNITS[role]
        path = options.unit_dir / unit
        text = unit_text(archive, unit, options.bindir)
        if path.exists() and path.read_bytes() == text:
            continue

        def write(p=path, t=text) -> None:
            store.ensure_dir(p.parent, 0o755)
            store.atomic_write(p, t, 0o644, (0, 0))

        steps.append(Step(f"{'update' if path.exists() else 'install'} unit {path}", write))
    if steps and _systemd_running():
        steps.append(Step("systemctl daemon-reload", lambda: _run("systemctl", "daemon-reload")))
    return steps


# ---------------------------------------------------------------- uninstall


def plan_uninstall(options: Options, purge: bool = False) -> list[Step]:
    steps: list[Step] = []
    for role in options.roles:
        path = options.unit_dir / UNITS[role]
        if path.exists():
            if _systemd_running():
                steps.append(
                    Step(
                        f"systemctl disable --now {UNITS[role]}",
                        partial(_run, "systemctl", "disable", "--now", UNITS[role]),
                    )
                )
            steps.append(Step(f"remove unit {path}", partial(Path.unlink, path)))
    if steps and _systemd_running():
        steps.append(Step("systemctl daemon-reload", lambda: _run("systemctl", "daemon-reload")))
    remaining = [
        UNITS[role]
        for role in ROLES
        if role not in options.roles and (options.unit_dir / UNITS[role]).exists()
    ]
    if not remaining:
        for name in PROGRAM_NAMES:
            link = options.bindir / name
            if link.is_symlink() and os.readlink(link) == str(options.pyz):
                steps.append(Step(f"remove link {link}", partial(Path.unlink, link)))
        if options.pyz.exists():
            steps.append(Step(f"remove {options.pyz}", lambda: _remove_program(options)))
    if purge:
        steps += _plan_purge(options.roles)
    return steps


def _remove_program(options: Options) -> None:
    options.pyz.unlink()
    try:
        options.libdir.rmdir()
    except OSError:
        pass  # not empty: something else lives there


def _plan_purge(roles: tuple[str, ...]) -> list[Step]:
    steps = []
    paths = [p for role in roles for p in PURGE_PATHS[role]]
    if set(roles) >= {"agent", "dispatcher"} or set(roles) == set(ROLES):
        paths.append("/var/cache/ctrl-exec")
    for path in dict.fromkeys(paths):
        if os.path.lexists(path):
            steps.append(
                Step(f"delete {path} (keys, configuration, state)", partial(shutil.rmtree, path))
            )
    for name in dict.fromkeys(USERS[role] for role in roles):
        if _user_exists(name):
            steps.append(Step(f"delete user {name}", partial(_run, "userdel", name)))
        if _group_exists(name):
            steps.append(Step(f"delete group {name}", partial(_delete_group, name)))
    return steps


def _delete_group(name: str) -> None:
    if _group_exists(name):  # userdel may have removed the user's own group
        _run("groupdel", name)


def apply(steps: list[Step], report: Callable[[str], None]) -> None:
    for step in steps:
        report(step.what)
        step.run()


def install(
    roles: tuple[str, ...],
    report: Callable[[str], None],
    uninstall: bool = False,
    purge: bool = False,
    dry_run: bool = False,
    prefix: Path = DEFAULT_PREFIX,
) -> list[str]:
    """Plan, then (unless `dry_run`) apply; return what was (or would be) done."""
    if not roles:
        raise InstallError("name at least one --role (agent, dispatcher, executor)")
    if purge and not uninstall:
        raise InstallError("--purge goes with --uninstall")
    if os.geteuid() != 0 and not dry_run:
        raise InstallError("install changes system files and users: run it as root")
    options = Options(tuple(dict.fromkeys(roles)), prefix)
    if uninstall:
        steps = plan_uninstall(options, purge)
    else:
        steps = plan_install(options, Archive(running_archive()))
    if dry_run:
        for step in steps:
            report(step.what)
    else:
        apply(steps, report)
    return [step.what for step in steps]
