"""Name rules shared by every side of the protocol: one place for each pattern.

Script names follow 0.12's `^[\\w-]+$`, restricted to ASCII (Perl's `\\w`
would also admit Unicode letters in decoded JSON; no allowlist written as a
0.12 `scripts.conf` can contain such a name, so nothing usable is lost).
"""

from __future__ import annotations

import re
from typing import TypeGuard

SCRIPT_NAME = re.compile(r"[A-Za-z0-9_-]+")
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DISPATCHER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SCHEMA_VERSION = re.compile(r"[A-Za-z0-9._-]{1,64}")
TAG_KEY = re.compile(r"[A-Za-z0-9_.-]+")

# Longest agent name we accept. 0.12 has no cap; names become file names in
# the registry, so keep them inside one path component of any filesystem.
AGENT_NAME_MAX = 253


def is_script_name(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and SCRIPT_NAME.fullmatch(name) is not None


def is_agent_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= AGENT_NAME_MAX
        and AGENT_NAME.fullmatch(name) is not None
    )


def is_dispatcher_id(value: object) -> bool:
    return isinstance(value, str) and DISPATCHER_ID.fullmatch(value) is not None


def derive_dispatcher_id(configured: str | None, hostname: str) -> str:
    """dispatcher_id as 0.12 derives it: the configured value, else the host
    name; characters outside [A-Za-z0-9._-] become '-', leading non
    alphanumerics are dropped, at most 64 characters, 'dispatcher' if empty."""
    raw = configured if configured else hostname
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", raw or "")
    cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned)
    cleaned = cleaned[:64]
    return cleaned or "dispatcher"
