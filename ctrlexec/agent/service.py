"""Agent certificate workflows the CLI calls: promote a staged certificate,
and tell whether one is waiting."""

from __future__ import annotations

import os


def cert_staged(config) -> bool:
    return os.path.isfile(config.cert_staging_path)


def promote_at_start(config):
    """What 0.12's root `ExecStartPre` does, done by `serve` itself: install
    a renewed certificate before listening. Nothing to do costs one stat
    (and no `cryptography` import)."""
    if not cert_staged(config):
        return None
    from .renewal import promote

    return promote(config)


def promote_cert(config):
    """`agent promote-cert`: a Promotion (status none|installed|discarded|failed)."""
    from .renewal import Promotion, promote

    if not cert_staged(config):
        return Promotion("none", "no staged certificate")
    return promote(config)
