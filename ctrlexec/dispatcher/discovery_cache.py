"""What the agents last said about themselves (`/capabilities`), kept so
that `/openapi-live.json` does not open a connection to every agent on
every request.

Each registered agent's last answer is kept with the time it came;
`/discovery` refreshes the agents it asked, and the live document asks again
only for the agents whose answer is older than `ttl` seconds, at most one
refresh at a time (concurrent readers wait for it and share its answers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from ..core.results import HostResult

# How long an agent's capabilities are served before they are asked again.
DEFAULT_TTL = 300.0


class DiscoveryCache:
    def __init__(self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._results: dict[str, tuple[float, HostResult]] = {}
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()

    def store(self, results: Sequence[HostResult]) -> None:
        now = self.clock()
        with self._lock:
            for result in results:
                host = result.wire.get("host")
                if isinstance(host, str):
                    self._results[host] = (now, result)

    def results(
        self, names: Sequence[str], refresh: Callable[[list[str]], Sequence[HostResult]]
    ) -> list[HostResult]:
        """The cached answers of `names`, asking `refresh` (one fan-out) for
        the ones missing or stale."""
        with self._refreshing:
            stale = self._stale(names)
            if stale:
                self.store(refresh(stale))
        with self._lock:
            self._forget_others(names)
            return [self._results[name][1] for name in names if name in self._results]

    def _stale(self, names: Sequence[str]) -> list[str]:
        now = self.clock()
        with self._lock:
            return [
                name
                for name in names
                if name not in self._results or now - self._results[name][0] > self.ttl
            ]

    def _forget_others(self, names: Sequence[str]) -> None:
        """Agents no longer registered (unpaired) leave the cache."""
        for host in set(self._results) - set(names):
            del self._results[host]
