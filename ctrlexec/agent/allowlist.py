"""Which scripts the agent may run, and the file each name executes.

A name must match the script-name rule and be in `scripts.toml`. With
`script_dirs` set, the script's canonical path (every symlink resolved) must
lie inside one of the canonical directories, checked on every run, so a
symlink planted inside a script directory cannot point outside it. The file
executed is that canonical path (what was checked), with the configured path
as argv[0], as 0.12 passes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..config.load import ScriptEntry
from ..core import names
from ..errors import NotAllowlisted

OUTSIDE_SCRIPT_DIRS = "outside script_dirs"


@dataclass(frozen=True)
class Resolved:
    entry: ScriptEntry
    executable: str  # the file to execve

    @property
    def argv0(self) -> str:
        return self.entry.path


def inside(path: str, directory: str) -> bool:
    directory = directory.rstrip("/") or "/"
    return path == directory or path.startswith(directory if directory == "/" else directory + "/")


@dataclass(frozen=True)
class Allowlist:
    entries: dict[str, ScriptEntry]
    script_dirs: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def resolve(self, name: str) -> Resolved:
        """The entry for `name`, or NotAllowlisted."""
        if not names.is_script_name(name) or name not in self.entries:
            raise NotAllowlisted(name)
        entry = self.entries[name]
        if not self.script_dirs:
            return Resolved(entry, entry.path)
        canonical = os.path.realpath(entry.path)
        if not any(inside(canonical, os.path.realpath(d)) for d in self.script_dirs):
            raise NotAllowlisted(name, OUTSIDE_SCRIPT_DIRS)
        return Resolved(entry, canonical)
