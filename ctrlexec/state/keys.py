"""Advisory-lock keys: one 64-bit number per name, the same on every node.

PostgreSQL's advisory locks take a bigint. Every key is the first 8 bytes
of SHA-256 over `ctrl-exec:` and the name, as a signed integer: 100,000
host:script pairs collide with a probability near 3e-10, and a collision
would only make two runs wait for each other, never run together.
"""

from __future__ import annotations

import hashlib


def advisory_key(*parts: str) -> int:
    digest = hashlib.sha256("\0".join(("ctrl-exec", *parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def split_key(key: int) -> tuple[int, int]:
    """(classid, objid) as pg_locks shows a bigint advisory lock."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF
