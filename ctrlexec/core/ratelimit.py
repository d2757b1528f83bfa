"""Per-address rate limiting, as 0.12 counts it, with time passed in.

Two rules share one table. Volume: a connection is refused when `limit`
connections were already admitted in the last `window` seconds, and the
address is then blocked for `block` seconds (defaults 10/60/300: the 11th
connection within a minute blocks for five). Probe: failed TLS handshakes are
recorded first, so the `limit`-th failure in `window` blocks (3/600/3600).
A limit of 0 disables its rule. The table tracks at most `max_tracked`
addresses; when full, expired blocks go first, else the entry whose block
ends soonest (never-blocked entries count as 0).

`admit` counts every connection (0.12's rule; the pairing listener keeps
it). The agent counts only what did not authenticate: it asks `is_blocked`
at accept and calls `record_unauthenticated` when a connection ends without
a trusted identity, so a paired dispatcher's normal use never counts
(docs/agent.md, "Admission").
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

RULE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*/\s*(\d+)\s*")
# Bound the per-address history: no rule needs more timestamps than its limit.
_MAX_HISTORY = 10_000


@dataclass(frozen=True)
class Rule:
    limit: int
    window: int
    block: int

    @classmethod
    def parse(cls, text: str) -> Rule:
        match = RULE.fullmatch(text or "")
        if not match:
            raise ValueError("expected limit/window/block, e.g. 10/60/300")
        limit, window, block = (int(part) for part in match.groups())
        return cls(limit, window, block)

    def __str__(self) -> str:
        return f"{self.limit}/{self.window}/{self.block}"


@dataclass
class _Entry:
    connections: deque[float] = field(default_factory=deque)
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    blocked_now: str | None = None  # "volume" | "probe" when this call set a block
    evicted: bool = False


class RateLimiter:
    def __init__(
        self,
        volume: Rule | None = Rule(10, 60, 300),
        probe: Rule | None = Rule(3, 600, 3600),
        max_tracked: int = 1000,
    ):
        self.volume = volume
        self.probe = probe
        self.max_tracked = max_tracked
        self._table: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._table)

    def admit(self, address: str, now: float) -> Verdict:
        """A new connection from `address`: refuse it, or count it and allow."""
        entry = self._table.get(address)
        if entry is not None and entry.blocked_until:
            if entry.blocked_until > now:
                return Verdict(False)
            del self._table[address]
        entry, evicted = self._entry(address, now)
        rule = self.volume
        if rule and rule.limit > 0:
            _expire(entry.connections, now - rule.window)
            if len(entry.connections) >= rule.limit:
                entry.blocked_until = now + rule.block
                return Verdict(False, "volume", evicted)
            _push(entry.connections, now)
        return Verdict(True, None, evicted)

    def record_failure(self, address: str, now: float) -> Verdict:
        """A failed handshake from `address`; may block it (probe rule)."""
        entry, evicted = self._entry(address, now)
        return self._count(entry.failures, self.probe, "probe", entry, now, evicted)

    def record_unauthenticated(self, address: str, now: float) -> Verdict:
        """A connection from `address` ended without a trusted identity: the
        volume rule counts it, and the `limit`-th within `window` blocks."""
        entry, evicted = self._entry(address, now)
        return self._count(entry.connections, self.volume, "volume", entry, now, evicted)

    def _entry(self, address: str, now: float) -> tuple[_Entry, bool]:
        """The address's entry, made (room first) when new; whether another was evicted."""
        entry = self._table.get(address)
        if entry is not None:
            return entry, False
        evicted = self._make_room(now)
        return self._table.setdefault(address, _Entry()), evicted

    @staticmethod
    def _count(
        times: deque[float],
        rule: Rule | None,
        reason: str,
        entry: _Entry,
        now: float,
        evicted: bool,
    ) -> Verdict:
        """Count one event at `now` in `times` against `rule`; the `limit`-th
        within `window` blocks the address for `block` seconds."""
        if entry.blocked_until > now:
            return Verdict(False, None, evicted)
        if rule and rule.limit > 0:
            _expire(times, now - rule.window)
            _push(times, now)
            if len(times) >= rule.limit:
                entry.blocked_until = now + rule.block
                return Verdict(False, reason, evicted)
        return Verdict(True, None, evicted)

    def is_blocked(self, address: str, now: float) -> bool:
        entry = self._table.get(address)
        return bool(entry and entry.blocked_until > now)

    def _make_room(self, now: float) -> bool:
        if len(self._table) < self.max_tracked:
            return False
        expired = [a for a, e in self._table.items() if e.blocked_until and e.blocked_until <= now]
        if expired:
            for address in expired:
                del self._table[address]
            return True
        victim = min(self._table, key=lambda a: self._table[a].blocked_until)
        del self._table[victim]
        return True


def _expire(times: deque[float], cutoff: float) -> None:
    while times and times[0] <= cutoff:
        times.popleft()


def _push(times: deque[float], now: float) -> None:
    times.append(now)
    if len(times) > _MAX_HISTORY:
        times.popleft()
