"""Random inputs for the hostile tests: JSON-ish values built around the
keys a boundary cares about, and bodies that are mostly such JSON and
sometimes raw bytes."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence


def random_json(rng: random.Random, keys: Sequence[str], depth: int = 0):
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return "".join(rng.choice("ab \n\x00\u00e9\U0001f600-_") for _ in range(rng.randrange(6)))
    if kind == "int":
        return rng.randrange(-(10**20), 10**20)
    if kind == "float":
        return rng.random()
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, keys, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(keys): random_json(rng, keys, depth + 1) for _ in range(rng.randrange(6))}


def random_body(rng: random.Random, keys: Sequence[str]) -> tuple[object, bytes]:
    """(the value, its bytes): JSON nine times in ten, else raw bytes."""
    value = random_json(rng, keys)
    if rng.random() < 0.9:
        return value, json.dumps(value).encode()
    return None, bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
