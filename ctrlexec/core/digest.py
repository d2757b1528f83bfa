"""The protocol's only digests: the pairing code and the schema version fallback."""

from __future__ import annotations

import hashlib
import json


def pairing_code(csr_pem: str) -> str:
    """Six digits both sides show the operator: the first four bytes of
    SHA-256 over the exact CSR PEM text, big-endian, modulo one million."""
    digest = hashlib.sha256(csr_pem.encode("utf-8")).digest()
    return f"{int.from_bytes(digest[:4], 'big') % 1_000_000:06d}"


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace: the form the schema version hash covers."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_version_fallback(schema: object) -> str:
    digest = hashlib.sha256(canonical_json(schema).encode("utf-8")).hexdigest()
    return "sha256:" + digest[:12]
