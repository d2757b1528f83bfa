"""docs/logging.md lists every ACTION the code can log, and nothing else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def actions_in_code() -> set[str]:
    found = set()
    for path in (REPO / "ctrlexec").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in ("event", "defer") and isinstance(first, ast.Constant):
                found.add(first.value)
    return found


def actions_in_docs() -> set[str]:
    text = (REPO / "docs" / "logging.md").read_text()
    text = text[text.index("## Actions") : text.index("## Alert patterns")]
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([a-z][a-z-]*)`", first_cell))
    return names


def test_every_logged_action_is_documented():
    missing = actions_in_code() - actions_in_docs()
    assert not missing, f"actions logged but not in docs/logging.md: {sorted(missing)}"


def test_no_documented_action_is_invented():
    extra = actions_in_docs() - actions_in_code()
    assert not extra, f"docs/logging.md lists actions the code never logs: {sorted(extra)}"
