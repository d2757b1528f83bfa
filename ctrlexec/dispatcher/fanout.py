"""Bounded parallel map over hosts: the dispatcher's fan-out.

Theory of operation. One operation (ping, run, discovery, capabilities,
status fetch, cancel) talks to up to `max_hosts` agents, at most `parallel`
at once. Each in-flight request is one blocking mTLS exchange on one
thread: the handshake's public-key work, socket waits and reads all run in
OpenSSL or the kernel with the GIL released, so a few dozen threads keep
both cores of a small dispatcher busy without forking, and every existing
per-host behaviour (identity checks right after the handshake, inactivity
timeouts, `--follow` streaming, the still-running probe of a long run) runs
unchanged on its thread. The cost of a host is its handshake, not its
thread: memory and CPU grow with `parallel`, never with the host count
(one small result per host).

Threads are bounded twice:

- per operation: the calling thread works through the list itself and is
  joined by at most `parallel - 1` helpers;
- per process: helpers come from a shared budget (`limit_threads`, set by
  `dispatcher serve` to `max_parallel`), so concurrent API operations share
  it rather than multiply it. A helper is taken only when one is free,
  without waiting, and the caller keeps adding helpers as others finish:
  no operation ever waits for another one's threads (no deadlock, every
  operation progresses on its own thread), and the process never runs more
  than the budget's helpers plus its callers.

Helpers are daemon threads: an interrupted `ced` (Ctrl-C reaches the caller,
which is working or waiting) exits at once instead of waiting for every
in-flight agent to answer. Results come back in the order of the input,
whatever order the hosts answer in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ThreadBudget:
    """How many helper threads all fan-outs of this process may run at once
    (None: no process-wide bound, only each operation's own)."""

    def __init__(self, limit: int | None = None):
        self._lock = threading.Lock()
        self._limit = limit
        self._in_use = 0

    def set_limit(self, limit: int | None) -> None:
        with self._lock:
            self._limit = None if limit is None else max(0, int(limit))

    def take(self) -> bool:
        with self._lock:
            if self._limit is not None and self._in_use >= self._limit:
                return False
            self._in_use += 1
            return True

    def give(self) -> None:
        with self._lock:
            self._in_use -= 1

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use


_BUDGET = ThreadBudget()


def limit_threads(limit: int | None) -> None:
    """Bound the helper threads of every fan-out in this process (a
    long-running service calls this once with its `max_parallel`)."""
    _BUDGET.set_limit(limit)


def fan_out(
    items: Sequence[T],
    work: Callable[[T], R],
    parallel: int,
    on_done: Callable[[R], None] | None = None,
    budget: ThreadBudget | None = None,
) -> list[R]:
    """`[work(item) for item in items]` with at most `parallel` calls at
    once. `work` must not raise (it turns every failure into a result);
    `on_done` is called with each result as it arrives, one call at a time."""
    return _FanOut(items, work, parallel, on_done, budget or _BUDGET).run()


class _FanOut:
    def __init__(self, items, work, parallel, on_done, budget: ThreadBudget):
        self.items = items
        self.work = work
        self.on_done = on_done
        self.budget = budget
        self.count = len(items)
        self.out: list = [None] * self.count
        self.wanted_helpers = max(0, min(max(1, parallel), self.count) - 1)
        self.helpers = 0
        self.threads: list[threading.Thread] = []
        self.next_index = 0
        self.finished = 0
        self.lock = threading.Lock()  # the cursor, the counters and on_done
        self.all_done = threading.Event()

    def run(self) -> list:
        if self.count == 0:
            return self.out
        while True:
            self._grow()
            index = self._take()
            if index is None:
                break
            self._do(index)
        self.all_done.wait()
        self._join_helpers()
        return self.out

    def _join_helpers(self) -> None:
        """Every item is done; the helpers are leaving (they find no more
        work). Wait for them, so that an operation that returned holds no
        thread and no budget."""
        joined = 0
        while True:
            with self.lock:
                threads = self.threads[joined:]
            if not threads:
                return
            for thread in threads:
                thread.join()
            joined += len(threads)

    def _grow(self) -> None:
        """Start helpers while this operation wants more and the budget has
        some; never waits for one."""
        while True:
            with self.lock:
                if self.helpers >= self.wanted_helpers or self.count - self.next_index <= 1:
                    return
                if not self.budget.take():
                    return
                self.helpers += 1
                # Started under the lock, so _join_helpers never sees a
                # thread that is not started yet.
                thread = threading.Thread(target=self._helper, name="fan-out", daemon=True)
                self.threads.append(thread)
                thread.start()

    def _take(self) -> int | None:
        with self.lock:
            if self.next_index >= self.count:
                return None
            index = self.next_index
            self.next_index += 1
            return index

    def _do(self, index: int) -> None:
        try:
            result = self.work(self.items[index])
            self.out[index] = result
            with self.lock:
                if self.on_done is not None:
                    self.on_done(result)
        finally:
            # Counted even when `work` or `on_done` broke their promise and
            # raised, so the caller is never left waiting for this host.
            with self.lock:
                self.finished += 1
                if self.finished == self.count:
                    self.all_done.set()

    def _helper(self) -> None:
        try:
            while True:
                self._grow()  # replace helpers the budget could not give before
                index = self._take()
                if index is None:
                    return
                self._do(index)
        finally:
            with self.lock:
                self.helpers -= 1
            self.budget.give()
