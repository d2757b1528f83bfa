"""TLS session resumption towards agents: one remembered session per agent.

Theory of operation. A full mutual-TLS handshake costs both ends a
certificate signature and a chain verification; resuming a session from a
ticket the agent issued skips both. Agents (ours and 0.12's, both built on
OpenSSL) issue TLS 1.3 tickets after each handshake, so a process that talks
to the same agents again and again (`dispatcher serve`, and a `ced run`
that asks `/running` before `/run`) offers the last ticket of each agent.

What resumption must not weaken:

- Identity. A resumed session carries the peer certificate of the handshake
  that created it, and `check_peer` runs on it after every handshake,
  resumed or not: the registry's expected certificate and the revocation
  list are checked each time. A connection whose peer certificate cannot be
  read is refused (`check_peer` sees empty bytes and fails closed).
- Registry changes. Sessions are keyed by address, port and the expected
  peer identity, so a re-paired or renewed agent is never resumed with a
  session of its previous certificate.
- Key and CA changes. A session belongs to one client context; the cache is
  bound to it and emptied with it (a rotated dispatcher certificate, a
  replaced CA file). An agent that rebuilds its own context (new cert or CA)
  no longer accepts its old tickets, and OpenSSL falls back to a full
  handshake by itself.
- Memory. At most MAX_SESSIONS sessions are kept, and none past MAX_AGE
  seconds (the ticket's own lifetime, set by the agent, may be shorter;
  OpenSSL honours it). When the cache is full of live sessions a new one is
  not kept: a fan-out sweeping more agents than the cache holds then still
  resumes with the ones it has, where evicting the least recently used
  would make every sweep evict exactly the sessions it needs next.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

# A session with its peer certificate costs about 16 KiB of the dispatcher's
# memory as Python holds it (OpenSSL 3.0): 3,000 of them (47 MiB) keep
# `dispatcher serve` under 150 MB while a fan-out to 5,000 agents runs, and
# cover a large fleet's busy part.
MAX_SESSIONS = 3000
# No resumption from a handshake older than this, whatever the ticket says.
MAX_AGE = 3600.0
# How often a full cache looks for expired sessions to make room.
PURGE_EVERY = 60.0


class SessionCache:
    """Sessions of one client context, keyed by agent."""

    def __init__(
        self,
        context: ssl.SSLContext,
        limit: int = MAX_SESSIONS,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.context = context
        self._limit = limit
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[Hashable, tuple[float, ssl.SSLSession]] = OrderedDict()
        self._next_purge = 0.0

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def slot(self, key: Hashable) -> Resumption:
        return Resumption(self, key)

    def get(self, key: Hashable) -> tuple[float, ssl.SSLSession] | None:
        """(when its full handshake was made, the session), or None."""
        with self._lock:
            entry = self._sessions.get(key)
            if entry is None:
                return None
            made, session = entry
            if self._clock() - made > self._max_age:
                del self._sessions[key]
                return None
            self._sessions.move_to_end(key)
            return made, session

    def put(self, key: Hashable, session: ssl.SSLSession, made: float) -> None:
        with self._lock:
            if key not in self._sessions and len(self._sessions) >= self._limit:
                self._purge_expired()
                if len(self._sessions) >= self._limit:
                    return  # full of live sessions: this one is not kept
            self._sessions[key] = (made, session)
            self._sessions.move_to_end(key)

    def _purge_expired(self) -> None:
        now = self._clock()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY
        for key in [k for k, (made, _) in self._sessions.items() if now - made > self._max_age]:
            del self._sessions[key]

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._sessions.pop(key, None)

    def now(self) -> float:
        return self._clock()


class Resumption:
    """One agent's place in the cache, as one connection uses it: `offer()`
    before the handshake, `keep(sock)` after a complete exchange, `forget()`
    when the agent was refused."""

    def __init__(self, cache: SessionCache, key: Hashable):
        self.cache = cache
        self.key = key
        self._offered: tuple[float, ssl.SSLSession] | None = None
        self._started = cache.now()

    def offer(self, context: ssl.SSLContext) -> ssl.SSLSession | None:
        if context is not self.cache.context:
            return None  # another certificate (rotation): its own handshake
        self._offered = self.cache.get(self.key)
        return self._offered[1] if self._offered else None

    def keep(self, sock: ssl.SSLSocket) -> None:
        """Remember the session the agent's latest ticket describes (it
        arrives after the handshake, so ask once the reply was read). A
        ticket from a resumed connection keeps the age of the full
        handshake it descends from: MAX_AGE bounds how long a certificate
        chain goes unverified, however often the agent is contacted."""
        if sock.context is not self.cache.context:
            return
        session = sock.session
        if session is None or not session.has_ticket:
            return
        if sock.session_reused and self._offered is not None:
            self.cache.put(self.key, session, self._offered[0])
        else:
            self.cache.put(self.key, session, self._started)

    def forget(self) -> None:
        self.cache.forget(self.key)
