"""State files: atomic writes with explicit modes, and fcntl locks.

Every state file is written as temp file in the same directory, fsync,
rename, fsync of the directory. A reader sees the old or the new content,
never a part; a crash at any instant leaves one of the two.

State files are opened, never followed (`open_state`): O_NOFOLLOW, then
fstat: a regular file owned by root, by us, or by the owner of its
directory (in a group-writable directory, by any writer the group allows).
A link or device planted in a state directory (a symlink from
`pairing/<reqid>.approved` to `ca.key`, say) is refused with StateError
instead of being read, sent or locked through. This is the one place that
rule lives: every reader and lock of a state file goes through it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import tempfile
import time
from pathlib import Path

from . import log
from .errors import OperationTimeout, StateError


def ensure_dir(path: str | os.PathLike, mode: int = 0o750) -> Path:
    """Create a directory (and parents) if missing. The mode applies to the
    directories this call creates; an existing one keeps its mode."""
    target = Path(path)
    missing = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
            os.chmod(directory, mode)  # umask must not weaken or widen it
        except FileExistsError:
            pass
    if not target.is_dir():
        raise StateError(f"{target} exists and is not a directory")
    return target


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike, data: bytes, mode: int = 0o640, owner: tuple[int, int] | None = None
) -> None:
    target = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str, mode: int = 0o640) -> None:
    atomic_write(path, text.encode("utf-8"), mode)


def write_json(path: str | os.PathLike, value: object, mode: int = 0o640) -> None:
    atomic_write(
        path,
        (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"),
        mode,
    )


def open_state(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o640) -> int:
    """A descriptor for the state file `path`, which must be a regular file
    (never a symlink, FIFO or device) with an expected owner (see
    _expected_owner). Missing -> FileNotFoundError (unless O_CREAT);
    anything else refused -> StateError naming the path."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(
                f"{path} is a symbolic link: refused (state files are never followed)"
            ) from None
        if exc.errno == errno.ENXIO:
            raise StateError(f"{path} is not a regular file: refused") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{path} is not a regular file: refused")
        if not _expected_owner(path, info.st_uid):
            raise StateError(f"{path} is owned by uid {info.st_uid}: refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _expected_owner(path: str | os.PathLike, uid: int) -> bool:
    """Root, this process's user, or the directory's owner; in a directory
    the group may write (locks/, agents/, pairing/: shared by the service
    user and operators, docs/paths.md), any member of it."""
    if uid in (0, os.geteuid()):
        return True
    try:
        directory = os.stat(Path(path).parent)
    except OSError:
        return False
    return uid == directory.st_uid or bool(directory.st_mode & stat.S_IWGRP)


def read_state(path: str | os.PathLike, max_bytes: int = 16 * 1_048_576) -> bytes:
    """The bytes of a state file (see open_state). Missing ->
    FileNotFoundError; refused or larger than `max_bytes` -> StateError."""
    fd = open_state(path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise StateError(f"{path}: larger than {max_bytes} bytes")
    return data


def read_json(path: str | os.PathLike, max_bytes: int = 16 * 1_048_576) -> object:
    """Parse a JSON state file. Missing -> FileNotFoundError; bad -> StateError."""
    target = Path(path)
    data = read_state(target, max_bytes)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"{target}: not valid JSON ({exc})") from exc


def read_json_object(path: str | os.PathLike, max_bytes: int = 16 * 1_048_576) -> dict | None:
    """A state file holding one JSON object: None when it does not exist,
    StateError when it is not an object (or not JSON, or too large)."""
    try:
        value = read_json(path, max_bytes)
    except FileNotFoundError:
        return None
    if not isinstance(value, dict):
        raise StateError(f"{path} is not a JSON object")
    return value


def write_pidfile(path: Path) -> None:
    """`<pid>\n`, written atomically (a daemon writes it once it serves)."""
    ensure_dir(path.parent, 0o750)
    atomic_write_text(path, f"{os.getpid()}\n", 0o644)


def remove_own_pidfile(path: Path) -> None:
    """Remove the pidfile if it still names this process."""
    try:
        if read_state(path, 64).decode("ascii", "replace").strip() == str(os.getpid()):
            path.unlink()
    except (OSError, StateError):
        pass


def remove(path: str | os.PathLike) -> bool:
    """Delete a file if it exists; True when something was removed."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# A temp file of atomic_write this old belongs to a writer that died; a
# younger one may be in the middle of a write by another process.
TEMP_GRACE = 3_600


def purge_expired(
    directory: str | os.PathLike[str],
    ttl: float,
    now: float,
    is_record,
    max_scanned: int = 1_000_000,
) -> list[str]:
    """Remove the files of `directory` for which `is_record(name)` holds and
    whose mtime is more than `ttl` seconds before `now`, and temp files left
    by atomic_write older than TEMP_GRACE. The names of the records removed."""
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    with entries:
        for count, entry in enumerate(entries):
            if count >= max_scanned:
                break
            record = is_record(entry.name)
            if not record and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > (
                    ttl if record else TEMP_GRACE
                ):
                    os.unlink(entry.path)
                    if record:
                        removed.append(entry.name)
            except FileNotFoundError:
                continue
    return removed


# At a service's start, a temp file this old is a crashed writer's leftover
# (atomic writes take milliseconds); a younger one may be another process's
# write in progress.
START_SWEEP_GRACE = 60


def sweep_temporary(
    directory: str | os.PathLike, now: float, grace: float = START_SWEEP_GRACE
) -> int:
    """Remove the temp files atomic_write left in `directory` (not below it)
    when a writer died, older than `grace` seconds. How many were removed."""
    try:
        entries = os.scandir(Path(directory))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return 0
    removed = 0
    with entries:
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode) or now - info.st_mtime <= grace:
                    continue
                os.unlink(entry.path)  # a link is removed, never followed
                removed += 1
            except (FileNotFoundError, PermissionError):
                continue
    return removed


def sweep_leftovers(directories, now: float | None = None) -> int:
    """sweep_temporary over `directories` at a service's start; logged
    `temp-sweep` when something was removed."""
    moment = time.time() if now is None else now
    removed = sum(sweep_temporary(directory, moment) for directory in directories)
    if removed:
        log.event("temp-sweep", log.INFO, COUNT=removed)
    return removed


class FileLock:
    """An exclusive flock on a lock file, as a context manager.

    `blocking=False` raises BlockingIOError at once when another process
    holds it; `timeout` (seconds) polls until then and raises
    OperationTimeout. The lock file itself is left in place (removing it
    would race with another process that has it open).
    """

    def __init__(self, path: str | os.PathLike, mode: int = 0o660):
        self.path = Path(path)
        self.mode = mode
        self._fd: int | None = None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> FileLock:
        try:
            fd = open_state(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, self.mode)
            os.fchmod(fd, self.mode)  # the umask must not narrow a shared lock's mode
        except FileExistsError:  # also a planted link (O_EXCL never follows): refused next
            fd = open_state(self.path, os.O_RDWR)
        try:
            if timeout is not None:
                self._acquire_with_timeout(fd, timeout)
            else:
                flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
                fcntl.flock(fd, flags)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _acquire_with_timeout(self, fd: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OperationTimeout(f"timed out waiting for lock {self.path}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def is_locked(path: str | os.PathLike) -> bool:
    """True when some process holds an flock on `path` (probe, then let go)."""
    try:
        fd = open_state(path)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
