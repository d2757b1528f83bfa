"""docs/logging.md lists every ACTION the code can log, and nothing else."""

from __future__ import annotations

import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# A logged action is always written as a literal first argument:
# `log.event("name", ...)` or `log.defer("name", ...)`, possibly on the next
# line. A regular expression finds exactly what parsing every module with
# `ast` finds, in a tenth of the time.
_LOGGED = re.compile(r'\b(?:event|defer)\(\s*"([^"\\]*)"')


@functools.cache
def actions_in_code() -> frozenset[str]:
    found: set[str] = set()
    for path in (REPO / "ctrlexec").rglob("*.py"):
        found.update(_LOGGED.findall(path.read_text()))
    return frozenset(found)


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
