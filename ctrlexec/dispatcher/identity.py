"""Who this dispatcher is to its agents: its stable id and its serial key."""

from __future__ import annotations

import socket

from ..core.names import derive_dispatcher_id
from ..core.x509 import facts_from_pem
from ..errors import StateError


def dispatcher_id(configured: str | None) -> str:
    """`dispatcher_id` from the config, else this host's name, sanitised as
    0.12 does (protocol.md §1.6). Stable across certificate rotation."""
    return derive_dispatcher_id(configured, socket.gethostname())


def dispatcher_serial(cert_path: str) -> str:
    """The trust key agents store for the cert this dispatcher presents: the
    0.12 canonical form, applied once to the certificate's serial."""
    try:
        with open(cert_path, encoding="ascii", errors="replace") as handle:
            text = handle.read(1_048_576)
    except FileNotFoundError:
        raise StateError(
            f"the dispatcher certificate {cert_path} does not exist: "
            "run 'ced setup-ctrl-exec' first"
        ) from None
    try:
        return facts_from_pem(text).serial.trust_key()
    except ValueError as exc:
        raise StateError(f"cannot read the serial of {cert_path}: {exc}") from None
