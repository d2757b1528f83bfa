"""Bounded parallel map over hosts, on daemon threads.

A dispatch talks to up to 500 agents, at most `max_parallel` at once (each
in-flight request holds a socket and a TLS session). TLS handshakes and
socket waits release the GIL, so threads give real parallelism here without
forking. The threads are daemons: an interrupted `ced` exits at once
instead of waiting for every in-flight agent to answer.

Results come back in the order of the input, whatever order the hosts
answer in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def fan_out(
    items: Sequence[T],
    work: Callable[[T], R],
    parallel: int,
    on_done: Callable[[R], None] | None = None,
) -> list[R]:
    """`[work(item) for item in items]` with at most `parallel` calls at
    once. `work` must not raise (it turns every failure into a result);
    `on_done` is called with each result as it arrives, one call at a time."""
    count = len(items)
    out: list = [None] * count
    if count == 0:
        return out
    lock = threading.Lock()
    cursor = iter(range(count))

    def loop() -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            result = work(items[index])
            out[index] = result
            if on_done is not None:
                with lock:
                    on_done(result)

    workers = [
        threading.Thread(target=loop, name=f"fan-out-{n}", daemon=True)
        for n in range(min(max(1, parallel), count))
    ]
    if len(workers) == 1:
        loop()  # one host: no thread to start
        return out
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return out
