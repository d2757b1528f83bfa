"""Table-driven checks in one test: every case is checked, and a failure
names each case that failed, with its inputs and what went wrong.

A table of many one-line cases costs pytest more to collect and report as
separate tests than the checks themselves cost; one test per table keeps
the unit layer fast (docs/testing.md) and still reports every failing case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest


def each_case(
    cases: Iterable[Any],
    check: Callable[..., None],
    ids: Sequence[str] | None = None,
    unpack: bool = True,
) -> None:
    """`check(*case)` (or `check(case)` when not `unpack`) for every case."""
    names = list(ids) if ids is not None else None
    failed = []
    for index, case in enumerate(cases):
        try:
            check(*case) if unpack else check(case)
        except (AssertionError, pytest.fail.Exception) as problem:
            name = names[index] if names is not None else f"#{index}"
            failed.append(f"case {name} {case!r:.300}:\n  {problem}")
    assert not failed, f"{len(failed)} case(s) failed:\n" + "\n".join(failed)
