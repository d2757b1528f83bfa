"""Connection slots for a server that must keep serving its real clients
while strangers hold connections open (no I/O: the servers own sockets).

Theory of operation. A connection lives in one of two pools:

- *unauthenticated*: accepted, not yet proven. On the agent that means
  before the TLS handshake has shown a certificate in the trusted-dispatcher
  map; on the API, before a complete request has arrived. This pool is
  small and cheap to lose: at most `per_address` connections from one
  address and `max_unauthenticated` in all. A newcomer is never turned
  away: over its address's cap it takes the slot of that address's oldest
  connection; when the pool is full, that of the oldest connection of the
  address holding the most. An idle stranger is closed (evicted), and a
  real client, which finishes its handshake in milliseconds, always gets
  in, even from an address a stranger shares.
- *authenticated*: promoted out of the first pool. Only these use the
  service's handler slots (`max_authenticated`: the agent's `max_children`,
  the API's `api_max_children`), so idle strangers can never take them.

The servers call `arrive` at accept (evicting what it names), `promote`
once the peer is proven, and `leave` when the connection ends. Keys are
opaque to this module; an evicted key is forgotten at once, so a late
`promote` for it answers EVICTED and its `leave` does nothing.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

# promote() outcomes
PROMOTED = "promoted"
EVICTED = "evicted"  # the connection lost its slot before it was proven
OVERLOAD = "overload"  # every authenticated slot is busy


@dataclass(frozen=True)
class Limits:
    max_unauthenticated: int
    per_address: int
    max_authenticated: int

    def __post_init__(self) -> None:
        if min(self.max_unauthenticated, self.per_address, self.max_authenticated) < 1:
            raise ValueError("every connection limit must be at least 1")


@dataclass(frozen=True)
class Arrival:
    evict: Hashable | None = None  # close this connection: its slot went to the newcomer
    evicted_address: str | None = None


class Slots:
    def __init__(self, limits: Limits):
        self.limits = limits
        self._order = itertools.count()
        # address -> {key: arrival number}, oldest first
        self._pending: dict[str, OrderedDict[Hashable, int]] = {}
        self._address_of: dict[Hashable, str] = {}
        self._authenticated: set[Hashable] = set()

    @property
    def unauthenticated(self) -> int:
        return len(self._address_of)

    @property
    def authenticated(self) -> int:
        return len(self._authenticated)

    def pending_from(self, address: str) -> int:
        return len(self._pending.get(address, ()))

    def arrive(self, key: Hashable, address: str) -> Arrival:
        """A new connection joins the unauthenticated pool, possibly in place
        of another one (which the caller must close)."""
        if self.pending_from(address) >= self.limits.per_address:
            victim_address: str | None = address
        elif self.unauthenticated >= self.limits.max_unauthenticated:
            victim_address = self._busiest()
        else:
            victim_address = None
        evict = None
        if victim_address is not None:
            evict = next(iter(self._pending[victim_address]))
            self._forget(evict)
        self._pending.setdefault(address, OrderedDict())[key] = next(self._order)
        self._address_of[key] = address
        return Arrival(evict, victim_address)

    def promote(self, key: Hashable) -> str:
        """The peer is proven: move it to an authenticated slot if one is free
        (an overloaded connection leaves the pools)."""
        if key not in self._address_of:
            return EVICTED
        self._forget(key)
        if len(self._authenticated) >= self.limits.max_authenticated:
            return OVERLOAD
        self._authenticated.add(key)
        return PROMOTED

    def leave(self, key: Hashable) -> None:
        self._authenticated.discard(key)
        if key in self._address_of:
            self._forget(key)

    def _busiest(self) -> str:
        """The address holding the most unauthenticated slots; among equals,
        the one with the oldest connection."""
        return max(
            self._pending,
            key=lambda a: (len(self._pending[a]), -next(iter(self._pending[a].values()))),
        )

    def _forget(self, key: Hashable) -> None:
        address = self._address_of.pop(key)
        keys = self._pending[address]
        del keys[key]
        if not keys:
            del self._pending[address]
