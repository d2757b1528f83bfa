"""No I/O: which registered agents a run or ping addresses.

Operands are agent names (`web-01`, `web-01:7443`), shell-style patterns
(`web-*`, `db-0[12]`, `?pp`) and `@all`; `--tag KEY=VALUE` (repeatable)
keeps only agents whose tags (as their last discovery reported them) have
every one of those exact values, and with no operand starts from every
agent. A name is kept as written (its port, and 0.12's "unknown agent" for
a name that is not registered); patterns expand in registry order, and an
agent already selected is not added twice. An empty selection is an
error, never a silent no-op.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from ..errors import SelectionError
from .names import TAG_KEY

ALL = "@all"
_PATTERN_CHARS = frozenset("*?[")


def is_pattern(operand: str) -> bool:
    return operand == ALL or any(char in _PATTERN_CHARS for char in operand)


def needs_registry(operands: Sequence[str], tags: Sequence[tuple[str, str]]) -> bool:
    return bool(tags) or any(is_pattern(operand) for operand in operands)


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not TAG_KEY.fullmatch(key):
        raise SelectionError(f"invalid tag filter {text!r}: expected KEY=VALUE")
    return key, value


def select(
    operands: Sequence[str],
    tags: Sequence[tuple[str, str]],
    agents: Mapping[str, Mapping[str, str]],
) -> list[str]:
    """The hosts to address. `agents` maps every registered name to its
    cached tags."""
    wanted = dict(tags)

    def tagged(name: str) -> bool:
        have = agents.get(name) or {}
        return all(str(have.get(key)) == value and key in have for key, value in wanted.items())

    chosen: list[str] = []
    seen: set[str] = set()
    for operand in operands if operands else [ALL]:
        if not is_pattern(operand):
            name = operand.rpartition(":")[0] if _has_port(operand) else operand
            if not wanted or tagged(name):
                chosen.append(operand)
                seen.add(name)
            continue
        for name in sorted(agents):
            if name in seen:
                continue
            if (operand == ALL or fnmatch.fnmatchcase(name, operand)) and tagged(name):
                chosen.append(name)
                seen.add(name)
    if not chosen:
        raise SelectionError("no agent matches " + describe(operands, tags))
    return chosen


def describe(operands: Sequence[str], tags: Sequence[tuple[str, str]]) -> str:
    parts = list(operands) or [ALL]
    parts += [f"--tag {key}={value}" for key, value in tags]
    return " ".join(parts)


def _has_port(operand: str) -> bool:
    name, sep, port = operand.rpartition(":")
    return bool(sep and name and port.isdigit())
