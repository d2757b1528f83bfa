"""The `Exit status:` paragraph of each mode's --help that does not write its
own, in one table (docs/running.md has the same facts with the JSON shapes).
Codes every command shares are said once, at the end of each paragraph."""

from __future__ import annotations

import re
import textwrap

USAGE = "2 a malformed command line"
CONFIG = "78 a configuration file that cannot be loaded"

# mode name -> what its own codes mean (the same name in two roles means the same)
EXIT_STATUS = {
    "list-locks": "0 listed (also when none is held); 1 the lock directory cannot be read.",
    "setup-ca": "0 created; 1 refused (a CA exists and no --force).",
    "setup-ctrl-exec": (
        "0 created; 1 refused (no CA yet; or agents are registered and neither --yes "
        "nor a 'y' answer was given)."
    ),
    "pairing-mode": (
        "0 pairing mode ran and stopped (timeout, quit, signal), or `start`/`stop` did "
        "their job; 1 refused (bad --timeout, already running, cannot listen) or a "
        "`stop` that did not stop it."
    ),
    "list-requests": "0 listed (also when nothing is pending).",
    "approve": (
        "0 approved and registered; 1 refused (no such pending request, or the name "
        "is registered: --replace after checking)."
    ),
    "deny": "0 denied; 1 no such pending request.",
    "list-agents": "0 listed; 1 the registry cannot be read (or --refresh failed).",
    "edit-agent": "0 changed; 1 refused (nothing to change, a bad value, an unknown agent).",
    "unpair": "0 removed; 1 unknown agent.",
    "import-config": (
        "0 done (existing TOML files are kept unless --force); 78 nothing to convert, "
        "or the result would not load."
    ),
    "serial-status": "0 shown.",
    "completion": "0 printed.",
    "db": (
        "0 done; 1 the database cannot be reached or refused; 78 a configuration "
        "that cannot be loaded, or the file backend (no database)."
    ),
    "serve": (
        "0 stopped by SIGTERM or SIGINT; 1 cannot listen; 78 a configuration, "
        "certificate or key that cannot be used, or a control that cannot be "
        "applied (systemd: RestartPreventExitStatus=78)."
    ),
}

# How a help text already states its exit status ("Exit status: ...",
# "Exit codes: ...", "Exit 0 when ...", "Exits 1 when ...").
_ALREADY = re.compile(r"\bExit(?:s| status| codes)?:? [0-9]|\bExit (?:status|codes)\b")


def has_exit_status(text: str | None) -> bool:
    return bool(text and _ALREADY.search(text))


def with_exit_status(mode: str, description: str | None, epilog: str | None) -> str | None:
    """`epilog` with the mode's exit-status paragraph appended when neither
    the description nor the epilog states one."""
    own = EXIT_STATUS.get(mode)
    if own is None or has_exit_status(description) or has_exit_status(epilog):
        return epilog
    common = USAGE if " 78 " in f" {own}" else f"{USAGE}; {CONFIG}"
    paragraph = textwrap.fill(f"Exit status: {own} Also {common}.", width=76)
    return f"{epilog}\n\n{paragraph}" if epilog else paragraph
