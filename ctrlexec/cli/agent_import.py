"""`agent import-config`."""

from __future__ import annotations

from .import_config import register_for


def register(subparsers) -> None:
    register_for(subparsers, "agent")
