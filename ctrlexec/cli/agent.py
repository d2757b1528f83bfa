"""`agent` (`ctrl-exec-agent`, `cea`): the agent daemon and its helpers."""

from __future__ import annotations

from .. import log
from . import roles

TOPICS: tuple[str, ...] = (
    "ctrlexec.cli.agent_serve",
    "ctrlexec.cli.agent_pairing",
    "ctrlexec.cli.agent_import",
    "ctrlexec.cli.agent_cert",
)

# The 8 modes of ctrl-exec 0.12's ctrl-exec-agent.
COMPAT_MODES = (
    "serve",
    "request-pairing",
    "pairing-status",
    "self-check",
    "self-ping",
    "promote-cert",
    "cert-staged",
    "paired",
)

DESCRIPTION = """The ctrl-exec agent: serves allowlisted scripts to paired dispatchers over
mutual TLS (port 7443), and pairs with a dispatcher."""


def main(argv: list[str], prog: str = "ctrl-exec-agent") -> int:
    parser = roles.build_parser(prog, "ctrl-exec-agent", DESCRIPTION, TOPICS, COMPAT_MODES)
    return roles.run(parser, argv, prog, log.IDENT_AGENT)
