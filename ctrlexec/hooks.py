"""Auth hooks: external executables that decide whether a request may proceed.

Contract (ctrl-exec 0.12, both sides): the hook is executed with no
arguments, one JSON object on stdin then EOF, its stdout and stderr
discarded, the caller's environment plus the ENVEXEC_* variables. Exit 0
authorises; 1 `denied`, 2 `bad credentials`, 3 `insufficient privilege`,
any other N `hook exited N`. A hook that outlives `auth_hook_timeout` is
killed with everything it started, whatever session or process group those
moved to (contain.py: a cgroup per call, or a sweep), and the request is
denied.

Fail closed, unlike 0.12: a hook killed by a signal, one that cannot be
executed, or a configured path that is missing all deny (0.12 lets a hook
that died of a signal through); the denial names the real cause.

Large arguments: Linux refuses to start a program when one environment
string is longer than 128 KiB (MAX_ARG_STRLEN), so ENVEXEC_ARGS and
ENVEXEC_ARGS_JSON are set only while each stays within MAX_ENV_VALUE bytes;
beyond that both are empty and ENVEXEC_ARGS_TRUNCATED=1 says so. The JSON on
stdin always carries every argument in full: a hook that must see large
arguments reads its stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import contain, log
from .core.caller import API, CLI
from .core.timefmt import iso_utc

REASONS = {1: "denied", 2: "bad credentials", 3: "insufficient privilege"}
# Longest ENVEXEC_ARGS / ENVEXEC_ARGS_JSON value passed in the environment
# (bytes, UTF-8); well under the kernel's 128 KiB per string and 2 MiB total.
MAX_ENV_VALUE = 64 * 1024

CALLER_CLI = CLI
CALLER_API = API
CALLER_AGENT = "agent"


@dataclass
class AuthRequest:
    action: str
    script: str = ""
    hosts: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    username: str = ""
    token: str = field(default="", repr=False)  # a credential: never in a log line
    source_ip: str = ""
    dispatcher: str = ""
    dispatcher_serial: str = ""
    reqid: str = ""
    submitter: dict | None = None

    def stdin_json(self, timestamp: str) -> bytes:
        return json.dumps(
            {
                "action": self.action,
                "script": self.script,
                "hosts": list(self.hosts),
                "args": list(self.args),
                "username": self.username,
                "token": self.token,
                "source_ip": self.source_ip,
                "dispatcher": self.dispatcher,
                "dispatcher_serial": self.dispatcher_serial,
                "reqid": self.reqid,
                "submitter": self.submitter,
                "timestamp": timestamp,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")

    def environment(self, timestamp: str) -> dict[str, str]:
        submitter = self.submitter or {}
        args = " ".join(self.args)
        args_json = json.dumps(list(self.args), separators=(",", ":"), ensure_ascii=False)
        too_large = max(len(args.encode()), len(args_json.encode())) > MAX_ENV_VALUE
        extra = {"ENVEXEC_ARGS_TRUNCATED": "1"} if too_large else {}
        return {
            "ENVEXEC_ACTION": self.action,
            "ENVEXEC_SCRIPT": self.script,
            "ENVEXEC_HOSTS": ",".join(self.hosts),
            "ENVEXEC_ARGS": "" if too_large else args,
            "ENVEXEC_ARGS_JSON": "" if too_large else args_json,
            **extra,
            "ENVEXEC_USERNAME": self.username,
            "ENVEXEC_TOKEN": self.token,
            "ENVEXEC_SOURCE_IP": self.source_ip,
            "ENVEXEC_DISPATCHER": self.dispatcher,
            "ENVEXEC_DISPATCHER_SERIAL": self.dispatcher_serial,
            "ENVEXEC_REQID": self.reqid,
            "ENVEXEC_SUBMITTER": str(submitter.get("username", "") or ""),
            "ENVEXEC_SUBMITTER_IP": str(submitter.get("source_ip", "") or ""),
            "ENVEXEC_TIMESTAMP": timestamp,
        }


@dataclass(frozen=True)
class AuthDecision:
    allowed: bool
    reason: str = ""
    code: int = 0

    @classmethod
    def allow(cls) -> AuthDecision:
        return cls(True)

    @classmethod
    def deny(cls, reason: str, code: int = 1) -> AuthDecision:
        return cls(False, reason, code)


def not_executable_reason(path: str) -> str:
    return f"auth hook not found or not executable: {path}"


def _sanitised(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def run_hook(
    path: str, request: AuthRequest, timeout: float, now: Callable[[], float] = time.time
) -> tuple[AuthDecision, str]:
    """Execute the hook; return the decision and a detail for the log."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return AuthDecision.deny(not_executable_reason(path)), "hook-not-executable"
    stamp = iso_utc(now())
    env = dict(os.environ)
    env.update(request.environment(stamp))
    call = contain.open_call()
    env.update(call.env())
    try:
        proc = subprocess.Popen(
            [path],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,
            cwd="/",
            preexec_fn=call.preexec(),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        call.started(None)
        call.finish(kill=True)
        # the file is there and executable: say what really stopped it
        text = getattr(exc, "strerror", None) or str(exc)
        return AuthDecision.deny(f"auth hook could not be started: {text}"), f"exec failed: {text}"
    call.started(proc.pid)
    timed_out = False
    try:
        proc.communicate(request.stdin_json(stamp), timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.returncode is None:  # the timeout, or an unexpected error
            call.kill()
            proc.wait()
        call.finish()
    if timed_out:
        log.event("auth-hook-timeout", log.WARNING, TIMEOUT=timeout, AUTHACTION=request.action)
        return AuthDecision.deny(REASONS[1]), "timeout"
    status = proc.returncode
    if status < 0:
        return AuthDecision.deny(REASONS[1]), f"hook killed by signal {-status}"
    if status == 0:
        return AuthDecision.allow(), ""
    return AuthDecision.deny(REASONS.get(status, f"hook exited {status}"), status), ""


def authorise(
    request: AuthRequest, hook: str | None, timeout: float, caller: str, api_default: str = "deny"
) -> AuthDecision:
    """Decide one request and log the `auth` line. With no hook: the CLI
    passes, the API follows `api_auth_default`, the agent passes."""
    fields = {
        "AUTHACTION": request.action,
        "USER": request.username or "(none)",
        "IP": request.source_ip,
    }
    if request.dispatcher:
        fields["DISPATCHER"] = request.dispatcher
    if not hook:
        if caller == CALLER_API and api_default.lower() != "allow":
            log.event("auth", log.WARNING, RESULT="deny", REASON="no-hook-deny", **fields)
            return AuthDecision.deny("no auth hook configured", 1)
        reason = {CALLER_CLI: "no-hook-cli", CALLER_API: "no-hook-allow"}.get(caller, "no-hook")
        log.event("auth", log.INFO, RESULT="pass", REASON=reason, **fields)
        return AuthDecision.allow()
    decision, detail = run_hook(hook, request, timeout)
    if decision.allowed:
        log.event("auth", log.INFO, RESULT="pass", **fields)
    elif detail == "hook-not-executable":
        log.event(
            "auth",
            log.ERR,
            RESULT="error",
            REASON="hook-not-executable",
            HOOK=_sanitised(hook),
            **fields,
        )
    else:
        extra = {"DETAIL": detail} if detail else {}
        log.event("auth", log.WARNING, RESULT="deny", REASON=decision.reason, **fields, **extra)
    return decision
