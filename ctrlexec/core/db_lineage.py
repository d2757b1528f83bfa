"""Which PostgreSQL server may hold the dispatcher's state: the fence
against an old primary that comes back writable.

PostgreSQL says where a server stands in its cluster's history: the system
identifier names the cluster (`initdb` draws it; a base backup, and so a
standby and the primary it is later promoted to, keeps it), and every
promotion starts a new, higher timeline. A server still writable on a lower
timeline than one already used is an old primary that missed the failover:
writing to it would split the state (locks, runs, pairing) in two.

Pure: the rules and nothing else. `state/db.py` reads the facts from the
servers and acts on the verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The WAL file name is 24 hex digits: timeline, log, segment (8 each).
_WALFILE_LENGTH = 24


@dataclass(frozen=True)
class Lineage:
    """Where one server stands: its cluster and its timeline."""

    system: str  # pg_control_system().system_identifier, decimal text
    timeline: int

    def describe(self) -> str:
        return f"system {self.system}, timeline {self.timeline}"


def timeline_of_walfile(name: str) -> int:
    """The timeline in a WAL file name (pg_walfile_name's first 8 hex digits)."""
    if len(name) != _WALFILE_LENGTH or not all(c in "0123456789ABCDEFabcdef" for c in name):
        raise ValueError(f"not a WAL file name: {name[:40]!r}")
    timeline = int(name[:8], 16)
    if timeline < 1:
        raise ValueError(f"not a WAL file name (timeline 0): {name!r}")
    return timeline


def lineage_from_row(system: object, walfile: object) -> Lineage:
    """A Lineage from the server's answers; ValueError when they are not
    what PostgreSQL sends."""
    text = str(system)
    if not text.isdigit() or len(text) > 20:
        raise ValueError(f"not a system identifier: {text[:40]!r}")
    return Lineage(text, timeline_of_walfile(str(walfile)))


def refusal(known: Lineage | None, seen: Lineage, known_as: str = "used before") -> str | None:
    """Why a writable server on `seen` must not hold the state once `known`
    was used (None: it may). `known_as` says where `known` comes from."""
    if known is None:
        return None
    if seen.system != known.system:
        return (
            f"another database cluster (system identifier {seen.system}, the one "
            f"{known_as} is {known.system}): refused; if the cluster was rebuilt on purpose, "
            "run 'ced db accept'"
        )
    if seen.timeline < known.timeline:
        return (
            f"writable on timeline {seen.timeline}, behind timeline {known.timeline} "
            f"{known_as} (an old primary that came back after a failover): refused"
        )
    return None


@dataclass(frozen=True)
class Choice:
    """The outcome of looking at every writable server of a host list."""

    chosen: int | None  # index into the candidates, None: none may be used
    refused: tuple[tuple[int, str], ...]  # (index, why) of each writable one passed over
    reason: str | None = None  # why none was chosen, when that is not in `refused`


def choose(known: Lineage | None, candidates: Sequence[Lineage]) -> Choice:
    """Among writable servers (in host-list order), the one to use: none
    behind or beside `known`, then the highest timeline; on a tie the first
    listed. Writable servers of different clusters with nothing known yet
    is a host list that names two clusters: none is chosen (fail closed)."""
    refused: list[tuple[int, str]] = []
    allowed: list[int] = []
    for index, seen in enumerate(candidates):
        why = refusal(known, seen)
        if why is None:
            allowed.append(index)
        else:
            refused.append((index, why))
    if not allowed:
        return Choice(None, tuple(refused))
    systems = {candidates[i].system for i in allowed}
    if len(systems) > 1:
        return Choice(
            None,
            tuple(refused),
            "writable servers of different database clusters (system identifiers "
            f"{', '.join(sorted(systems))}): the host list must name one cluster",
        )
    best = max(allowed, key=lambda i: (candidates[i].timeline, -i))
    for index in allowed:
        if candidates[index].timeline < candidates[best].timeline:
            why = refusal(candidates[best], candidates[index], "of another listed server")
            assert why is not None
            refused.append((index, why))
    return Choice(best, tuple(sorted(refused)))
