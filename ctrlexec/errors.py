"""The semantic exceptions of ctrl-exec.

A handful of kinds, each carrying the data a boundary needs. Each boundary
(agent HTTP handler, API handler, CLI command) maps them once to its wire
response, exit code and log line; code below the boundary raises, never
formats.
"""

from __future__ import annotations

# Exit codes of the command-line roles.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG, as 0.12: systemd's RestartPreventExitStatus=78


class CtrlExecError(Exception):
    """Base class: `str(error)` is a complete one-line message for a person."""

    exit_code = EXIT_FAILURE


class ConfigError(CtrlExecError):
    """A configuration file or value is wrong. Daemons refuse to start (78)."""

    exit_code = EXIT_CONFIG

    def __init__(
        self, message: str, path: str | None = None, key: str | None = None, line: int | None = None
    ):
        self.message = message
        self.path = path
        self.key = key
        self.line = line
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path:
            where.append(str(self.path) + (f":{self.line}" if self.line else ""))
        if self.key:
            where.append(f"key '{self.key}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class NotAllowlisted(CtrlExecError):
    """The script name is not in the allowlist, or resolves outside script_dirs."""

    def __init__(self, script: str, why: str = "script not permitted"):
        self.script = script
        self.why = why
        super().__init__(f"{why}: {script}")


class PolicyDenied(CtrlExecError):
    """An auth hook (or the no-hook default) said no. `code` is the hook's
    exit code as 0.12 reports it; `reason` the 0.12 reason text."""

    def __init__(self, reason: str, code: int = 1):
        self.reason = reason
        self.code = code
        super().__init__(f"denied: {reason}")


class PeerUntrusted(CtrlExecError):
    """The peer's certificate is revoked or its serial is not trusted."""

    def __init__(self, why: str, serial: str = ""):
        self.why = why
        self.serial = serial
        super().__init__(f"peer not trusted: {why}" + (f" (serial {serial})" if serial else ""))


class PairingRejected(CtrlExecError):
    """The pairing exchange ended without a certificate. `reason` is the
    0.12 reason text (`rejected by operator`, `approval timeout`, ...)."""

    # request-pairing's exit code for "denied or failed" (0.12's --background child).
    exit_code = 3

    def __init__(self, reason: str, timed_out: bool = False):
        self.reason = reason
        self.timed_out = timed_out
        super().__init__(f"pairing failed: {reason}")


class OperationTimeout(CtrlExecError):
    """Something took longer than its bound."""


class ProtocolError(CtrlExecError):
    """A peer sent something that is not the ctrl-exec wire format."""


class StateError(CtrlExecError):
    """A state file is missing, unreadable or inconsistent."""


class Locked(CtrlExecError):
    """host:script locks are held by another run."""

    exit_code = EXIT_FAILURE

    def __init__(self, conflicts: list[str]):
        self.conflicts = list(conflicts)
        super().__init__("already running: " + ",".join(self.conflicts))
