"""How much finished script output the agent holds in memory at once.

While a script runs, its output beyond SPILL_AFTER bytes per stream goes to
an unlinked temporary file (runner.py), so running scripts cost little
memory however much they print. The memory goes when a result is turned into
text, a JSON reply and the bytes sent: each byte of output then exists a few
times over until the reply is written. An OutputBudget counts those bytes
across the whole agent; a result that would take the total over the limit
waits until earlier ones are sent. One result is always let through when
nothing else is held, so a single output larger than the limit still goes
out (and `max_output_bytes` bounds it).
"""

from __future__ import annotations

import threading

# Bytes of one stream kept in memory before the rest goes to a file.
SPILL_AFTER = 65_536


class OutputBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self._held = 0
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        with self._changed:
            return self._held

    def acquire(self, size: int) -> int:
        """Wait until `size` bytes fit; the grant to give back to release()."""
        with self._changed:
            while self._held and self._held + size > self.limit:
                self._changed.wait()
            self._held += size
        return size

    def release(self, grant: int) -> None:
        if not grant:
            return
        with self._changed:
            self._held -= grant
            self._changed.notify_all()
