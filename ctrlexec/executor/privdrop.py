"""Applying a script's profile in the child, between fork and exec.

Theory of operation. The executor runs as root so that it can give each
script less than root: a user, a set of capabilities, a view of the file
system. Everything is decided in the parent (`Plan`: numbers and paths,
no names left to look up), because the child of a fork must not take locks
another thread may have held (the user database, the import system). The
child then calls `apply(plan)` and, only if every step succeeded, execs the
script. Any step that fails ends the child with exit 126 and one line on the
script's stderr naming the step: a control the kernel cannot apply is never
skipped.

The order matters, and each step needs what the previous ones left:

1. A private mount namespace (`unshare(CLONE_NEWNS)`, `/` made private so
   nothing propagates back to the host). Needs CAP_SYS_ADMIN: done first.
2. With `writable`: the whole tree read-only (`mount_setattr` with
   AT_RECURSIVE, Linux 5.12), a private tmpfs on /tmp, then each writable
   path bind-mounted onto itself and made writable again (only that
   mount: read-only mounts below it stay read-only).
3. The agent's configuration and state directories bind-mounted onto
   themselves, read-only, nosuid and nodev, recursively: last, so no
   writable path can reopen them, and with or without `writable`, so even a
   root script cannot change the agent's keys, trust map or allowlist.
4. The capability bounding set reduced to exactly the profile's `caps`
   (PR_CAPBSET_DROP needs CAP_SETPCAP: still held here).
5. The user: PR_SET_KEEPCAPS so the permitted set survives the uid change,
   then the supplementary groups (setgroups), the primary group and the
   user (setresgid, setresuid: real, effective and saved alike, so there is
   no way back).
6. The capability sets: permitted, effective and inheritable set to exactly
   `caps` (capset), then each raised in the ambient set, which is what lets
   a non-root user keep them across exec. For a root user the kernel gives
   the bounding set at exec, which step 4 made equal to `caps`.
7. PR_SET_NO_NEW_PRIVS when the profile asks (the default): setuid files and
   file capabilities then grant nothing.
8. The script must be executable by the user it now runs as (`access`),
   so a permission problem is reported as such rather than as a failed exec.

Mount steps use raw syscalls through ctypes; nothing here needs a library
beyond the C library. Linux only, x86_64 and aarch64 (the pyz's targets).
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

from ..errors import ProfileError

# The child's exit status when its profile could not be applied (0.12's
# "cannot execute" status, as for its access check).
EXIT_PROFILE_FAILED = 126
MESSAGE_PREFIX = "ctrl-exec-executor: "

# Capability names and numbers (linux/capability.h).
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Syscall numbers that differ per architecture (mount_setattr is 442 on both).
_SYSCALLS = {
    "x86_64": {"capset": 126, "mount_setattr": 442},
    "aarch64": {"capset": 91, "mount_setattr": 442},
}
TMP_OPTIONS = b"mode=1777"


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capability_number(name: str) -> int | None:
    """The number of a capability this kernel knows, else None."""
    try:
        number = CAPABILITIES.index(name)
    except ValueError:
        return None
    return number if number <= last_capability() else None


def last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return len(CAPABILITIES) - 1


@dataclass(frozen=True)
class Plan:
    """Everything the child needs, resolved in the parent."""

    executable: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    caps: tuple[int, ...]  # capability numbers
    last_cap: int
    writable: tuple[str, ...]
    protected: tuple[str, ...]
    no_new_privileges: bool


PRIVATE_TMP = "/tmp"


def private_tmp_conflict(executable: str, writable: tuple[str, ...]) -> str | None:
    """Why a profile with `writable` cannot be applied as written, or None.
    Such a profile mounts a fresh tmpfs on /tmp (step 2), so a script kept
    under /tmp would not be there to run, and a writable path under /tmp
    would be an empty, private directory: both are refused, never run silently."""
    if not writable:
        return None
    inside = PRIVATE_TMP + "/"
    if executable.startswith(inside):
        return (
            f"script {executable} is under /tmp, which a profile with `writable` replaces "
            "with a private tmpfs: install the script outside /tmp"
        )
    for path in writable:
        if path.startswith(inside):
            return (
                f"writable path {path} is under /tmp, which a profile with `writable` "
                "replaces with a private tmpfs: choose a path outside /tmp"
            )
    return None


def plan_for(decision) -> Plan:
    """The Plan of an executor Decision (see decision.py)."""
    writable = tuple(os.path.realpath(path) for path in decision.writable)
    conflict = private_tmp_conflict(decision.path, writable)
    if conflict:
        raise ProfileError(conflict)
    numbers = []
    for name in decision.caps:
        number = capability_number(name)
        if number is None:
            raise ProfileError(f"capability {name} is not known to this kernel")
        numbers.append(number)
    return Plan(
        executable=decision.path,
        uid=decision.identity.uid,
        gid=decision.identity.gid,
        groups=decision.identity.groups,
        caps=tuple(sorted(set(numbers))),
        last_cap=last_capability(),
        writable=writable,
        protected=decision.protected,
        no_new_privileges=decision.no_new_privileges,
    )


class _Kernel:
    """The C library calls, loaded once in the parent."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.numbers = _SYSCALLS.get(platform.machine(), {})
        self.libc.syscall.restype = ctypes.c_long
        self.libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        self.libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        self.libc.unshare.argtypes = [ctypes.c_int]

    @staticmethod
    def _check(result: int, step: str) -> None:
        if result == -1:
            errno = ctypes.get_errno()
            raise ProfileError(f"{step}: {os.strerror(errno)}")

    def unshare(self, flags: int) -> None:
        self._check(self.libc.unshare(flags), "unshare(CLONE_NEWNS)")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data=None):
        self._check(
            self.libc.mount(
                source.encode() if source else None,
                target.encode(),
                fstype.encode() if fstype else None,
                flags,
                data,
            ),
            f"mount {target}",
        )

    def mount_setattr(self, path: str, recursive: bool, set_: int = 0, clear: int = 0) -> None:
        number = self.numbers.get("mount_setattr")
        if number is None:
            raise ProfileError(f"mount_setattr: unsupported architecture {platform.machine()}")
        attr = _MountAttr(set_, clear, 0, 0)
        result = self.libc.syscall(
            ctypes.c_long(number),
            ctypes.c_int(AT_FDCWD),
            ctypes.c_char_p(path.encode()),
            ctypes.c_uint(AT_RECURSIVE if recursive else 0),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
        self._check(result, f"mount_setattr {path} (needs Linux 5.12 or newer)")

    def prctl(self, option: int, arg: int, step: str, arg3: int = 0) -> None:
        self._check(self.libc.prctl(option, arg, arg3, 0, 0), step)

    def capset(self, mask: int) -> None:
        number = self.numbers.get("capset")
        if number is None:
            raise ProfileError(f"capset: unsupported architecture {platform.machine()}")
        header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
        words = [mask & 0xFFFFFFFF, (mask >> 32) & 0xFFFFFFFF]
        data = (_CapData * 2)(*[_CapData(word, word, word) for word in words])
        result = self.libc.syscall(ctypes.c_long(number), ctypes.byref(header), data)
        self._check(result, "capset")


_kernel: _Kernel | None = None


def prepare() -> None:
    """Load the C library in the parent (never first in a forked child)."""
    global _kernel
    if _kernel is None:
        _kernel = _Kernel()


def apply(plan: Plan) -> None:
    """Apply `plan` to this process (the forked child). Raises ProfileError."""
    assert _kernel is not None, "privdrop.prepare() must run in the parent"
    k = _kernel
    # 1. a mount namespace of our own
    k.unshare(CLONE_NEWNS)
    k.mount(None, "/", None, MS_REC | MS_PRIVATE)
    # 2. with writable paths: everything else read-only, a private /tmp
    if plan.writable:
        k.mount_setattr("/", True, set_=MOUNT_ATTR_RDONLY)
        k.mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, TMP_OPTIONS)
        for path in plan.writable:
            if not os.path.isdir(path) and not os.path.isfile(path):
                continue  # nothing to open up; the path stays absent
            k.mount(path, path, None, MS_BIND | MS_REC)
            k.mount_setattr(path, False, clear=MOUNT_ATTR_RDONLY)
    # 3. the agent's own directories: read-only to every script, root included
    for path in plan.protected:
        if not os.path.isdir(path):
            continue  # under the private /tmp: the real one is out of reach already
        k.mount(path, path, None, MS_BIND | MS_REC)
        k.mount_setattr(path, True, set_=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
    # 4. the bounding set: exactly the profile's capabilities
    keep = set(plan.caps)
    for number in range(plan.last_cap + 1):
        if number not in keep:
            k.prctl(PR_CAPBSET_DROP, number, f"drop {CAPABILITIES[number]} from the bounding set")
    # 5. the user and its groups, with no way back
    k.prctl(PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
    try:
        os.setgroups(list(plan.groups))
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
    except OSError as exc:
        raise ProfileError(f"switch to uid {plan.uid} gid {plan.gid}: {exc.strerror}") from None
    k.prctl(PR_SET_KEEPCAPS, 0, "PR_SET_KEEPCAPS")
    # 6. permitted, effective, inheritable and ambient: exactly the profile's
    mask = 0
    for number in keep:
        mask |= 1 << number
    k.capset(mask)
    k.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clear the ambient set")
    for number in sorted(keep):
        k.prctl(
            PR_CAP_AMBIENT,
            PR_CAP_AMBIENT_RAISE,
            f"raise {CAPABILITIES[number]} in the ambient set",
            number,
        )
    # 7. no new privileges through exec
    if plan.no_new_privileges:
        k.prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    # 8. executable by the user it now runs as
    if not os.access(plan.executable, os.X_OK):
        raise ProfileError(f"uid {plan.uid} cannot execute {plan.executable}")


def child_setup(plan: Plan):
    """A preexec function for subprocess: apply `plan`, or write why not to
    the script's stderr and end the child before it can exec."""

    def setup() -> None:
        try:
            apply(plan)
        except BaseException as exc:
            message = f"{MESSAGE_PREFIX}profile not applied, script not run: {exc}\n"
            try:
                os.write(2, message.encode("utf-8", "replace"))
            finally:
                os._exit(EXIT_PROFILE_FAILED)

    return setup
