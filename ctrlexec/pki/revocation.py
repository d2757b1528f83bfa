"""Revocation lists: one serial per line, in any form 0.12 accepts
(`deadbeef`, `DE:AD:BE:EF`, `0xdeadbeef`, `serial=DEADBEEF`, decimal), `#`
starting a comment. The same format on the agent (`revoked_serials`) and
on the dispatcher (`<ca_dir>/revoked-serials`), so a list can be copied or
pushed from one to the other. Standard library only.

`RevokedSerials` re-reads its file when it changes on disk (one stat per
check), so a revocation takes effect at the next connection of a running
service, with no restart.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..core.serial import serial_to_hex
from ..store import FileLock, atomic_write_text

MAX_LIST_BYTES = 4 * 1_048_576
HEADER = "# ctrl-exec revoked certificate serials, one per line.\n"


def parse(text: str) -> frozenset[str]:
    keys = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            keys.add(serial_to_hex(line.split()[0]))
    keys.discard("")
    return frozenset(keys)


def read(path: str | os.PathLike) -> frozenset[str]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_LIST_BYTES + 1)
    except FileNotFoundError:
        return frozenset()
    if len(data) > MAX_LIST_BYTES:
        raise ValueError(f"{path} is larger than {MAX_LIST_BYTES} bytes")
    return parse(data.decode("utf-8", "replace"))


def add(path: str | os.PathLike, line: str, note: str = "", mode: int = 0o644) -> bool:
    """Append a serial line (atomic rewrite, under a lock); False when
    it was already listed. Existing lines and comments are kept."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f".{target.name}.lock"), 0o600):
        try:
            text = target.read_text("utf-8", "replace")
        except FileNotFoundError:
            text = HEADER
        if serial_to_hex(line) in parse(text):
            return False
        if text and not text.endswith("\n"):
            text += "\n"
        comment = f"  # {note}" if note else ""
        atomic_write_text(target, f"{text}{line}{comment}\n", mode)
        return True


def read_keys(path: str | os.PathLike) -> frozenset[str]:
    """`revoked-keys`: SHA-256 (hex) of public keys that must never be
    certified again, one per line, `#` comments."""
    try:
        text = Path(path).read_text("ascii", "replace")
    except FileNotFoundError:
        return frozenset()
    return frozenset(
        line.split("#", 1)[0].strip().lower()
        for line in text.splitlines()
        if line.split("#", 1)[0].strip()
    )


def add_key(path: str | os.PathLike, digest: str, note: str = "") -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f".{target.name}.lock"), 0o600):
        keys = read_keys(target)
        if digest.lower() in keys:
            return
        try:
            text = target.read_text("ascii", "replace")
        except FileNotFoundError:
            text = "# ctrl-exec: keys of revoked certificates (SHA-256 of the public key).\n"
        if text and not text.endswith("\n"):
            text += "\n"
        comment = f"  # {note}" if note else ""
        atomic_write_text(target, f"{text}{digest.lower()}{comment}\n", 0o644)


class RevokedSerials:
    """A revocation list file, re-read when it changes."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._lock = threading.Lock()
        self._signature: tuple | None = ()
        self._keys: frozenset[str] = frozenset()

    def current(self) -> frozenset[str]:
        try:
            info = os.stat(self.path)
            signature: tuple | None = (info.st_ino, info.st_mtime_ns, info.st_size)
        except OSError:
            signature = None
        if signature == self._signature:
            return self._keys
        with self._lock:
            if signature != self._signature:
                try:
                    self._keys = read(self.path) if signature is not None else frozenset()
                except (OSError, ValueError):
                    pass  # keep the previous list; the next change is read again
                self._signature = signature
            return self._keys
