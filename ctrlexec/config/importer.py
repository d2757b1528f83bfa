"""`import-config`: turn ctrl-exec 0.12's `.conf` files into TOML.

Each file is converted line for line (config/legacy.py keeps comments and
says which lines were not converted), then the TOML text is loaded by the
same loader the services use before anything is written, so a converted
file that would not load is never left behind. The TOML file gets the
mode and owner of the file it came from; an existing TOML file is kept
unless `force`. The `.conf` files are left in place: once the TOML file
exists it is the one read.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import store
from ..errors import ConfigError
from . import legacy, load
from .paths import Layout


@dataclass(frozen=True)
class Conversion:
    source: Path
    target: Path
    toml: str
    written: bool
    skipped_reason: str = ""


def _plan(layout: Layout, role: str) -> list[tuple[Path, Path, Callable[[Path], legacy.Parsed]]]:
    if role == "dispatcher":
        return [
            (layout.legacy_dispatcher_config, layout.dispatcher_config, legacy.parse_dispatcher)
        ]
    return [
        (layout.legacy_agent_config, layout.agent_config, legacy.parse_agent),
        (layout.legacy_allowlist, layout.allowlist, legacy.parse_allowlist),
    ]


def _check_loads(layout: Layout, role: str, target: Path, text: str, agent_toml: str | None):
    """Load the converted text the way the service will."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / target.name
        path.write_text(text)
        if role == "dispatcher":
            load.load_dispatcher(layout, path)
        elif target.name == layout.agent_config.name:
            load.load_agent(layout, path)
        else:
            profiles = None
            if agent_toml is not None:
                agent_path = Path(scratch) / "agent.toml"
                agent_path.write_text(agent_toml)
                profiles = load.load_agent(layout, agent_path).profiles
            load.load_allowlist(layout, path, profiles)


def import_config(
    layout: Layout, role: str, write: bool = True, force: bool = False
) -> list[Conversion]:
    """Convert the role's 0.12 files found in the layout's config directory."""
    results = []
    agent_toml = None
    converted = []
    # Every file is converted and checked before any is written: agent.toml
    # alone, beside a scripts.conf that would not convert, is half an upgrade.
    for source, target, parse in _plan(layout, role):
        if not source.exists():
            continue
        parsed = parse(source)
        text = legacy.to_toml(parsed)
        try:
            _check_loads(layout, role, target, text, agent_toml)
        except ConfigError as exc:
            raise ConfigError(
                f"the converted file would not load ({exc}); nothing written", str(source)
            ) from None
        if target.name == layout.agent_config.name:
            agent_toml = text
        converted.append((source, target, text))
    found = bool(converted)
    for source, target, text in converted:
        if not write:
            results.append(Conversion(source, target, text, False, "dry run"))
            continue
        if target.exists() and not force:
            results.append(Conversion(source, target, text, False, "exists (use --force)"))
            continue
        info = os.stat(source)
        owner = (info.st_uid, info.st_gid) if os.geteuid() == 0 else None
        store.atomic_write(target, text.encode("utf-8"), info.st_mode & 0o7777 & ~0o111, owner)
        results.append(Conversion(source, target, text, True))
    if not found:
        names = ", ".join(str(source) for source, _, _ in _plan(layout, role))
        raise ConfigError(f"no ctrl-exec 0.12 configuration found (looked for {names})")
    return results
