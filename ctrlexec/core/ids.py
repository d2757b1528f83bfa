"""Request ids and nonces: how we make them, and the one rule for each kind
of request id we accept (protocol.md §9). Randomness is injected so tests
can fix it.

We make every reqid as 0.12 does (8 random bytes, 16 lowercase hex), but
accept more, because ids made by other versions arrive too (older 0.12
spellings: 8 hex from `rand`, 12 hex `ttttppppssss`). Each kind has its own
rule, by where the id ends up:

- a run reqid is echoed by agents and names a file in a run store (the
  agent's async records, the dispatcher's run records): 0.12's async rule
  `[A-Za-z0-9_-]+`, at most 128 characters. The agent's `/result/<reqid>`
  route and `/cancel` body check the shape only, as 0.12 does; a longer id
  is then simply not found;
- a status reqid is what the API's `/status/<reqid>` route takes: 0.12's
  `[a-f0-9]+`, with the run-store bound;
- a pairing reqid names the dispatcher's pairing-queue files and comes back
  in the dispatcher's acknowledgement: hex, 4 to 64 characters.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

TokenBytes = Callable[[int], bytes]


@dataclass(frozen=True)
class ReqidRule:
    kind: str  # for messages: "run reqid"
    pattern: re.Pattern[str]
    max_length: int

    def shaped(self, value: object) -> TypeGuard[str]:
        """The characters are right (length not checked)."""
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None

    def matches(self, value: object) -> TypeGuard[str]:
        """The characters and the length are right."""
        return isinstance(value, str) and len(value) <= self.max_length and self.shaped(value)


RUN_REQID = ReqidRule("run reqid", re.compile(r"[A-Za-z0-9_-]+"), 128)
STATUS_REQID = ReqidRule("status reqid", re.compile(r"[a-f0-9]+"), 128)
PAIRING_REQID = ReqidRule("pairing reqid", re.compile(r"[a-f0-9]{4,64}"), 64)


def new_reqid(token_bytes: TokenBytes = secrets.token_bytes) -> str:
    """Operation and pairing request id: 8 random bytes as 16 lowercase hex."""
    return token_bytes(8).hex()


def new_nonce(token_bytes: TokenBytes = secrets.token_bytes) -> str:
    """Pairing nonce: 16 random bytes as 32 lowercase hex."""
    return token_bytes(16).hex()


def new_short_id(token_bytes: TokenBytes = secrets.token_bytes) -> str:
    """self-ping id: 4 random bytes as 8 lowercase hex."""
    return token_bytes(4).hex()
