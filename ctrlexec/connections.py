"""The connections a long-running server (agent on 7443, dispatcher API on
7445) is handling, with their admission slots (core/admission.py).

Each accepted connection gets a thread and a key. Until it is promoted it
sits in the small unauthenticated pool, and a duplicate of its socket is
kept here so that the accept loop can interrupt it when a newcomer takes its
slot. `active` counts the connection threads alive: a graceful stop waits
for it to reach zero.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Hashable

from . import log
from .core import admission
from .netio import abort, interrupt


class Connections:
    def __init__(self, limits: admission.Limits):
        self.slots = admission.Slots(limits)
        self.active = 0  # connection threads alive
        self._handles: dict[Hashable, socket.socket] = {}
        self._changed = threading.Condition()

    def arrive(self, key: Hashable, ip: str, handle: socket.socket) -> None:
        """Count a new connection from `ip`, keeping `handle` (a duplicate
        of its socket, closed here when it leaves or is promoted); the
        connection whose slot it takes, if any, is interrupted."""
        victim: socket.socket | None = None
        with self._changed:
            arrival = self.slots.arrive(key, ip)
            self._handles[key] = handle
            self.active += 1
            if arrival.evict is not None:
                victim = self._handles.pop(arrival.evict, None)
        if victim is not None:
            log.event("conn-evict", log.INFO, PEER=arrival.evicted_address)
            interrupt(victim)

    def start(
        self,
        key: int,
        conn: socket.socket,
        ip: str,
        serve: Callable[[socket.socket, str, int], None],
        overload: Callable[[str], None],
        thread_name: str,
    ) -> None:
        """Count a just-accepted connection and serve it on a thread of its
        own (`serve(conn, ip, key)`, which must call `leave(key)` at its
        end). Without a descriptor for the duplicate or a thread, the
        connection is closed unanswered and `overload("descriptors")` or
        `overload("threads")` logs why."""
        try:
            handle = conn.dup()
        except OSError:
            overload("descriptors")
            abort(conn)
            return
        self.arrive(key, ip, handle)
        try:
            thread = threading.Thread(
                target=serve, args=(conn, ip, key), daemon=True, name=thread_name
            )
            thread.start()
        except RuntimeError:
            self.leave(key)
            overload("threads")
            abort(conn)

    def leave(self, key: Hashable) -> None:
        """The connection's thread ends (or never started)."""
        with self._changed:
            self.slots.leave(key)
            handle = self._handles.pop(key, None)
            self.active -= 1
            self._changed.notify_all()
        if handle is not None:
            handle.close()

    def evicted(self, key: Hashable) -> bool:
        with self._changed:
            return key not in self._handles

    def promote(self, key: Hashable) -> str:
        """The peer is proven: admission.PROMOTED, EVICTED or OVERLOAD."""
        with self._changed:
            outcome = self.slots.promote(key)
            handle = self._handles.pop(key, None)
        if handle is not None:
            handle.close()
        return outcome

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every connection to end; whether
        they all did."""
        end = time.monotonic() + timeout
        with self._changed:
            while self.active:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True
