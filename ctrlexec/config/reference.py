"""Render docs/configuration.md from the schema (one source of truth).

python3 -m ctrlexec.config.reference > docs/configuration.md
"""

from __future__ import annotations

import sys

from . import schema
from .paths import system_layout

INTRO = """# Configuration reference

Generated from `ctrlexec/config/schema.py` by
`python3 -m ctrlexec.config.reference`; a test keeps this file in step.

Files are TOML. Keys are named as in ctrl-exec 0.12's `.conf` files, with TOML
types: numbers are integers, switches are `true`/`false`, lists are arrays.
An unknown key, a wrong type or a bad value stops the program with the file,
the key and the line; daemons exit 78. Paths must be absolute. Defaults shown
are those of a root install; `--root DIR` re-bases them under `DIR`.
Keys marked *(ours)* do not exist in 0.12.
"""


def _default(key: schema.Key) -> str:
    value = key.default_for(system_layout())
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, list):
        return "`[]`" if not value else f"`{value}`"
    return f"`{value}`"


def _table(keys: tuple[schema.Key, ...]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    kinds = {
        "int": "integer",
        "str": "string",
        "bool": "boolean",
        "path": "path",
        "strings": "array of strings",
        "paths": "array of paths",
    }
    for key in keys:
        doc = key.doc + (" *(ours)*" if key.ours else "")
        lines.append(f"| `{key.name}` | {kinds[key.kind]} | {_default(key)} | {doc} |")
    return lines


def render() -> str:
    parts = [INTRO]
    parts += ["## ctrl-exec.toml (dispatcher, API)", "", "`/etc/ctrl-exec/ctrl-exec.toml`.", ""]
    parts += _table(schema.DISPATCHER_KEYS)
    parts += [
        "",
        "## agent.toml",
        "",
        "`/etc/ctrl-exec-agent/agent.toml`: flat keys, then "
        "an optional `[tags]` table of strings (returned by `/capabilities`) and "
        "`[profile.<name>]` tables. Every profile that `scripts.toml` uses, including "
        "`default`, must be defined.",
        "",
    ]
    parts += _table(schema.AGENT_KEYS)
    parts += ["", "### [profile.<name>]", ""]
    parts += _table(schema.PROFILE_KEYS)
    parts += [
        "",
        "## scripts.toml (allowlist)",
        "",
        "`/etc/ctrl-exec-agent/scripts.toml`: one key per script name "
        "(letters, digits, `_`, `-`). The value is the absolute path, or a table:",
        "",
        "```toml",
        'disk-report = "/opt/ctrl-exec-scripts/disk-report.sh"',
        'backup = { path = "/opt/ctrl-exec-scripts/backup.sh", profile = "ops", timeout = 7200 }',
        "```",
        "",
    ]
    parts += _table(schema.SCRIPT_KEYS)
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
