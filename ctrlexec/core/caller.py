"""Who asks the dispatcher for an operation, as one value.

The engine passes it to the auth hook (every field) and to the agents (the
username and the token, which reach the agent's hook and the script). The
token is a credential: it is left out of `repr()` so that no log line,
traceback or debug print can show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The front ends, as the auth hook's `caller` (hooks.CALLER_CLI, CALLER_API).
CLI = "cli"
API = "api"
# What 0.12's CLI reports to the auth hook as the caller's address.
CLI_SOURCE_IP = "127.0.0.1"


@dataclass(frozen=True)
class Caller:
    username: str = ""
    token: str = field(default="", repr=False)
    source_ip: str = CLI_SOURCE_IP
    front: str = CLI

    def __post_init__(self) -> None:
        if self.front not in (CLI, API):
            raise ValueError(f"unknown front end {self.front!r}")
        for name in ("username", "token", "source_ip"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string")

    @classmethod
    def api(cls, source_ip: str, username: str = "", token: str = "") -> Caller:
        """A client of the HTTP API at `source_ip`."""
        return cls(username, token, source_ip, API)
