"""The name this host gives itself: in a pairing request and in the agent's
replies (`host`). 0.12's choice: the FQDN when it has a dot, else the short
host name."""

from __future__ import annotations

import socket


def local_hostname() -> str:
    fqdn = socket.getfqdn()
    return fqdn if "." in fqdn else socket.gethostname()
