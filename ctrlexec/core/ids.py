"""Request ids and nonces. Randomness is injected so tests can fix it."""

from __future__ import annotations

import secrets
from collections.abc import Callable

TokenBytes = Callable[[int], bytes]


def new_reqid(token_bytes: TokenBytes = secrets.token_bytes) -> str:
    """Operation and pairing request id: 8 random bytes as 16 lowercase hex."""
    return token_bytes(8).hex()


def new_nonce(token_bytes: TokenBytes = secrets.token_bytes) -> str:
    """Pairing nonce: 16 random bytes as 32 lowercase hex."""
    return token_bytes(16).hex()


def new_short_id(token_bytes: TokenBytes = secrets.token_bytes) -> str:
    """self-ping id: 4 random bytes as 8 lowercase hex."""
    return token_bytes(4).hex()
