"""The agent's trust files: the trusted-dispatcher map and the revocation list.

Map format (0.12, shared with Perl agents): one `<serial> <dispatcher-id>`
per line, `#` starts a comment anywhere on a line. Written atomically, mode
0644, with 0.12's two header lines, entries sorted by serial text.

Keys: a line written by us or by 0.12 holds a serial that is already
canonical, so on read we only tidy its spelling (core.serial
.normalise_received) and never re-apply the decimal step that 0.12 applies
again on every read and rewrite (its non-idempotence bug). The revocation
list is written by people from certificate text, so its lines get the full
canonicalisation once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.names import is_dispatcher_id
from ..core.serial import normalise_received, serial_to_hex
from ..errors import NotOwned, StateError
from ..store import FileLock, atomic_write_text, ensure_dir, read_state

HEADER = (
    "# ctrl-exec trusted dispatchers: <serial> <id>, one per line.\n"
    "# Managed by pairing - do not edit by hand.\n"
)
# Trust files are small; a larger one is a mistake or an attack.
MAX_TRUST_FILE = 4 * 1_048_576


def _content_lines(path: Path) -> list[str]:
    try:
        data = read_state(path, MAX_TRUST_FILE)
    except FileNotFoundError:
        return []
    except StateError as exc:
        raise ValueError(str(exc)) from None
    lines = []
    for raw in data.decode("utf-8", "replace").splitlines():
        text = raw.split("#", 1)[0].strip()
        if text:
            lines.append(text)
    return lines


def load_map(path: str | os.PathLike) -> dict[str, str]:
    """serial key -> dispatcher id. Missing file: empty map (nothing trusted)."""
    entries: dict[str, str] = {}
    for line in _content_lines(Path(path)):
        parts = line.split(None, 1)
        if len(parts) != 2:
            continue
        serial = normalise_received(parts[0])
        ident = parts[1].strip()
        if serial and is_dispatcher_id(ident):
            entries[serial] = ident
    return entries


def render_map(entries: dict[str, str]) -> str:
    return HEADER + "".join(f"{serial} {entries[serial]}\n" for serial in sorted(entries))


def _update_map(path: Path, change) -> dict[str, str]:
    ensure_dir(path.parent, 0o750)
    with FileLock(path.parent / f".{path.name}.lock", 0o600):
        entries = load_map(path)
        change(entries)
        atomic_write_text(path, render_map(entries), 0o644)
        return entries


def add_dispatcher(path: str | os.PathLike, serial: str, dispatcher_id: str) -> dict[str, str]:
    """Add or overwrite `serial -> id`. `serial` must already be canonical
    (a received `dispatcher_serial` or rotate `serial`)."""
    key = normalise_received(serial)
    if not key:
        raise ValueError(f"not a serial: {serial!r}")
    if not is_dispatcher_id(dispatcher_id):
        raise ValueError(f"not a dispatcher id: {dispatcher_id!r}")
    return _update_map(Path(path), lambda entries: entries.__setitem__(key, dispatcher_id))


def remove_dispatcher(path: str | os.PathLike, serial: str, caller_id: str) -> bool:
    """Remove `serial` if it maps to `caller_id`; absent is a no-op (False);
    mapped to another id raises NotOwned."""
    key = normalise_received(serial)
    removed = []

    def change(entries: dict[str, str]) -> None:
        owner = entries.get(key)
        if owner is None:
            return
        if owner != caller_id:
            raise NotOwned(f"serial not owned by '{caller_id}'")
        del entries[key]
        removed.append(key)

    _update_map(Path(path), change)
    return bool(removed)


@dataclass(frozen=True)
class RevocationList:
    serials: frozenset[str]
    present: bool

    def revoked(self, serial_key: str) -> bool:
        return bool(serial_key) and serial_key in self.serials


def load_revocations(path: str | os.PathLike) -> RevocationList:
    target = Path(path)
    if not target.exists():
        return RevocationList(frozenset(), False)
    keys = {serial_to_hex(line.split()[0]) for line in _content_lines(target)}
    keys.discard("")
    return RevocationList(frozenset(keys), True)
