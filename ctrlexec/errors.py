"""Every exception ctrl-exec raises, in one flat hierarchy.

Code below a boundary raises one of these with the data the boundary needs
and never formats an answer itself. Each boundary maps them once:

- the command line (cli/common.run_handler): one line on stderr and
  `exit_code`; `ced run`/`ced ping` print PolicyDenied, Locked and
  UnknownAgents in 0.12's words first (cli/ced_run);
- the HTTP API (dispatcher/api.Api.handle): ApiError carries its answer
  (api_wire.error_reply builds it); BadRequest 400, PolicyDenied 403,
  UnknownAgents 404, Locked 409; any other CtrlExecError 500 `internal error`
  to the client and the reason in the log; FramingError (api_server) its
  `status`;
- the agent (agent/server, agent/handlers): FramingError its `status`;
  RunRejected, RotateRejected and CancelRejected their 0.12 `body`;
  NotAllowlisted `script not permitted`;
- the pairing listener (dispatcher/pairing_server): PairRequestError and
  CsrRejected become a PairingRefused, which ends the connection with the
  0.12 reason and a `pair-reject` log line;
- the executor (executor/server): ExecutorRefused and ProfileError become
  its refusal frame; FrameError a malformed-request frame.

docs/architecture.md has the table. `str(error)` is always a complete
one-line message for a person. A few classes keep a standard base as well,
for callers that know only the standard one: NotOwned, SelectionError and
FrameError are ValueErrors, NativeBundleError an ImportError.
"""

from __future__ import annotations

from typing import Any

# Exit codes of the command-line roles.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PAIRING_FAILED = 3  # request-pairing: denied or failed (0.12's --background child)
EXIT_CONFIG = 78  # EX_CONFIG, as 0.12: systemd's RestartPreventExitStatus=78


class CtrlExecError(Exception):
    """Base class: `str(error)` is a complete one-line message for a person."""

    exit_code = EXIT_FAILURE


# --- configuration and usage -------------------------------------------------------


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


class DsnError(ConfigError):
    """The state_backend URL cannot be used."""


class BadRequest(CtrlExecError):
    """The request itself is malformed: a command line (exit 2) or an API
    body (400)."""

    exit_code = EXIT_USAGE


class EmptySelection(BadRequest):
    """No agent matches the patterns and tag filters (the API answers 400)."""

    exit_code = EXIT_FAILURE


class SelectionError(CtrlExecError, ValueError):
    """A host selection (names, patterns, tags) is malformed or empty; the
    message says why."""


class InstallError(CtrlExecError):
    """`install` cannot put a file or unit in place; the message says which."""


# --- what policy refuses ------------------------------------------------------------


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


class Locked(CtrlExecError):
    """host:script locks are held by another run."""

    def __init__(self, conflicts: list[str]):
        self.conflicts = list(conflicts)
        super().__init__("already running: " + ",".join(self.conflicts))


class UnknownAgents(CtrlExecError):
    """Hosts that are not registered agents (all of them, by name)."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        super().__init__("unknown agent(s): " + ", ".join(self.names))


class NotOwned(CtrlExecError, ValueError):
    """A trusted-dispatcher map entry belongs to another dispatcher id."""


class ExecutorRefused(CtrlExecError):
    """The executor will not run this script; `reason` is one of the texts of
    executor/decision.py, `detail` what the operator reads in the log."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ProfileError(CtrlExecError):
    """A step of an executor profile (user, groups, capabilities, mounts)
    could not be applied."""


# --- pairing, certificates and the CA ------------------------------------------------


class PairingRejected(CtrlExecError):
    """The pairing exchange ended without a certificate. `reason` is the
    0.12 reason text (`rejected by operator`, `approval timeout`, ...)."""

    exit_code = EXIT_PAIRING_FAILED

    def __init__(self, reason: str, timed_out: bool = False):
        self.reason = reason
        self.timed_out = timed_out
        super().__init__(f"pairing failed: {reason}")


class PairingRefused(CtrlExecError):
    """The pairing listener ends a connection: `reason` (a 0.12 text, or
    None to send nothing) goes to the agent, `log_reason` is the REASON of
    the `pair-reject` line."""

    def __init__(self, reason: str | None, log_reason: str, detail: str = ""):
        super().__init__(log_reason)
        self.reason = reason
        self.log_reason = log_reason
        self.detail = detail


class DispatcherUnreachable(CtrlExecError):
    """The dispatcher's pairing port cannot be used; the message says why and
    what to check."""


class CsrRejected(CtrlExecError):
    """The CA refuses to sign this CSR; `str()` says why."""


class CAExists(CtrlExecError):
    """`setup-ca` would overwrite an existing CA."""


class RenewalRejected(CtrlExecError):
    """A renewed certificate fails a check; `str()` is the agent's error text."""


# --- the wire ------------------------------------------------------------------------


class ProtocolError(CtrlExecError):
    """A peer sent something that is not the ctrl-exec wire format."""


class FramingError(ProtocolError):
    """A request or response that cannot be framed. `status` is the HTTP code a
    server answers with; `reason` the short text 0.12 puts in its body."""

    def __init__(self, status: int, reason: str, detail: str = ""):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail or reason


class IncompleteMessage(ProtocolError):
    """The peer closed before a whole message arrived."""


class FrameError(ProtocolError, ValueError):
    """An executor frame that breaks the rules; `str()` says which rule."""


class RunRejected(ProtocolError):
    """A /run body the agent refuses before the allowlist; `body` is its
    0.12 answer (HTTP 200, `exit: -1`)."""

    def __init__(self, body: dict[str, Any]):
        super().__init__(str(body.get("error", "")))
        self.body = body


class RotateRejected(ProtocolError):
    """A /rotate-serial or /revoke-serial body the agent refuses; `body` is
    its 200 answer."""

    def __init__(self, message: str):
        super().__init__(message)
        self.body: dict[str, Any] = {"status": "error", "error": message}


class CancelRejected(ProtocolError):
    """A /cancel body the agent refuses (400); `body` is its answer."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.body: dict[str, Any] = {"status": "error", "error": reason}


class PairRequestError(ProtocolError):
    """A pairing request to refuse. `reason` goes to the agent (a 0.12 text);
    `log_reason` is the REASON of the `pair-reject` log line."""

    def __init__(self, reason: str, log_reason: str, detail: str = ""):
        self.reason = reason
        self.log_reason = log_reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ApiError(CtrlExecError):
    """An API request refused with an error body; `status`, `error` and
    `detail` are what the client gets (api_wire.error_reply builds it)."""

    def __init__(self, status: int, error: str, detail: str = ""):
        super().__init__(detail or error)
        self.status = status
        self.error = error
        self.detail = detail


# --- time, state, the machine ---------------------------------------------------------


class OperationTimeout(CtrlExecError):
    """Something took longer than its bound."""


class StateError(CtrlExecError):
    """A state file is missing, unreadable or inconsistent."""


class NativeBundleError(CtrlExecError, ImportError):
    """This pyz cannot provide cryptography here (wrong platform, unsafe cache)."""


class DemoFailed(CtrlExecError):
    """A step of the demo did not do what it should; the message says which."""
