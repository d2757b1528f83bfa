"""The agent's side of the wire (port 7443), with no I/O.

Routing, request validation and every response body the agent writes, in
0.12's exact shapes (protocol.md §3). Services feed this module parsed HTTP
requests and get dicts back; the socket code never builds a body itself.

Shapes worth knowing (all observed on a 0.12.3 deployment):

- run errors are HTTP 200 with `exit: -1` and `error`; each error carries
  exactly the keys 0.12 puts in it (`invalid JSON` has no script and no
  reqid, `args must be an array` has a reqid and no script);
- a run result has exactly `script`, `exit`, `stdout`, `stderr`, `reqid`;
- the gate refusals are `403 {"error":"serial mismatch","status":"forbidden"}`,
  and `403 {"error":"forbidden"}` on `/capabilities`.

Stricter than 0.12 (a 0.12 dispatcher never sends these): a body that is
JSON but not an object is `invalid JSON` (0.12's handler dies and sends
nothing); `script`, `reqid`, `username` and `token` must be strings and
`args` strings without NUL (0.12 would stringify or truncate them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import RunRejected
from . import names
from .digest import schema_version_fallback
from .ids import RUN_REQID
from .routing import Route
from .text import is_utf8, json_flag

# Routes of 0.12's agent. `gated` routes need a trusted dispatcher serial.
RUN = "run"
PING = "ping"
CAPABILITIES = "capabilities"
RESULT = "result"
ROTATE_SERIAL = "rotate-serial"
RENEW = "renew"
RENEW_COMPLETE = "renew-complete"
REVOKE_SERIAL = "revoke-serial"  # ours: a pushed revocation (0.12 answers 404)
# Additions of this agent (core/run_control.py); a 0.12 dispatcher never calls them.
RUNNING = "running"
CANCEL = "cancel"
RUN_STREAM = "run-stream"
UNKNOWN = "unknown"

_EXACT_ROUTES = {
    ("POST", "/run"): (RUN, True),
    ("POST", "/ping"): (PING, True),
    ("GET", "/capabilities"): (CAPABILITIES, True),
    ("POST", "/rotate-serial"): (ROTATE_SERIAL, True),
    ("POST", "/revoke-serial"): (REVOKE_SERIAL, True),
    ("POST", "/renew"): (RENEW, False),
    ("POST", "/renew-complete"): (RENEW_COMPLETE, False),
    ("GET", "/running"): (RUNNING, True),
    ("POST", "/cancel"): (CANCEL, True),
    ("POST", "/run-stream"): (RUN_STREAM, True),
}
_RESULT_PREFIX = "/result/"

# Bodies of the fixed answers.
REVOKED = {"error": "certificate revoked"}
SERIAL_MISMATCH = {"error": "serial mismatch", "status": "forbidden"}
CAPABILITIES_FORBIDDEN = {"error": "forbidden"}
CAPABILITIES_NOT_AUTHORISED = {"error": "not authorised"}
NOT_FOUND = {"error": "not found"}
# A trusted dispatcher over its `rate_limit_trusted` ceiling (ours; 0.12 has none).
TOO_MANY_REQUESTS = {"status": "error", "error": "too many requests from this dispatcher"}

# Largest schema sidecar read (0.12: 64 KiB).
MAX_SIDECAR_BYTES = 65_536
SIDECAR_SUFFIX = ".schema.json"


def ungated(found: Route) -> bool:
    """/renew and /renew-complete: no serial gate, CA-signed cert only."""
    return found.name in (RENEW, RENEW_COMPLETE)


def route(method: str, path: str) -> Route:
    """Exact string match on method and path, as 0.12 (no query strings)."""
    found = _EXACT_ROUTES.get((method, path))
    if found:
        name, gated = found
        return Route(name, gated=gated)
    if method == "GET" and path.startswith(_RESULT_PREFIX):
        ident = path[len(_RESULT_PREFIX) :]
        if RUN_REQID.shaped(ident):
            return Route(RESULT, ident, gated=True)
    return Route(UNKNOWN)


def gate_refusal(found: Route) -> tuple[int, dict[str, Any]]:
    """What an untrusted peer gets for a gated route."""
    if found.name == CAPABILITIES:
        return 403, dict(CAPABILITIES_FORBIDDEN)
    return 403, dict(SERIAL_MISMATCH)


def error_body(reason: str) -> dict[str, Any]:
    """Body of a framing error (400 `empty request`, 413, 431)."""
    return {"error": reason}


# --- /run -------------------------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    script: str
    args: tuple[str, ...]
    reqid: str
    username: str
    token: str = field(repr=False)  # a credential: never in a log line
    run_async: bool


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _string_field(data: dict[str, Any], key: str) -> str | None:
    """The field's value ('' when absent or null), or None when it is not a string."""
    value = data.get(key)
    if value is None:
        return ""
    return value if isinstance(value, str) else None


ASYNC_NOT_A_FLAG = "async must be true or false (or 1 or 0)"


def _not_utf8(key: str) -> str:
    return f"{key} must be valid UTF-8 (no lone surrogates)"


def parse_run(body: bytes) -> RunRequest:
    """Validate a /run body in 0.12's order; raise RunRejected with the answer."""
    data = _json_object(body)
    if data is None:
        raise RunRejected({"exit": -1, "error": "invalid JSON"})
    reqid = _string_field(data, "reqid")
    if reqid is None:
        raise RunRejected({"exit": -1, "error": "reqid must be a string"})
    if not is_utf8(reqid):
        raise RunRejected({"exit": -1, "error": _not_utf8("reqid")})
    args = data.get("args")
    if args is None:
        args = []
    if not isinstance(args, list):
        raise RunRejected({"exit": -1, "error": "args must be an array", "reqid": reqid})
    for arg in args:
        if not isinstance(arg, str) or "\x00" in arg:
            raise RunRejected(
                {"exit": -1, "error": "args must be strings without NUL", "reqid": reqid}
            )
        if not is_utf8(arg):
            raise RunRejected({"exit": -1, "error": _not_utf8("args"), "reqid": reqid})
    fields = {}
    for key in ("script", "username", "token"):
        value = _string_field(data, key)
        if value is None:
            raise RunRejected({"exit": -1, "error": f"{key} must be a string", "reqid": reqid})
        if not is_utf8(value):
            raise RunRejected({"exit": -1, "error": _not_utf8(key), "reqid": reqid})
        fields[key] = value
    run_async = json_flag(data.get("async"))
    if run_async is None:
        raise RunRejected({"exit": -1, "error": ASYNC_NOT_A_FLAG, "reqid": reqid})
    return RunRequest(
        fields["script"],
        tuple(args),
        reqid,
        fields["username"],
        fields["token"],
        run_async,
    )


def run_refused(request: RunRequest, error: str) -> dict[str, Any]:
    """`script not permitted`, `not authorised: <reason>` and other refusals
    of a valid request."""
    return {"script": request.script, "exit": -1, "error": error, "reqid": request.reqid}


def run_result(request: RunRequest, exit_code: int, stdout: str, stderr: str) -> dict[str, Any]:
    return {
        "script": request.script,
        "exit": exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "reqid": request.reqid,
    }


# 0.12's refusals of an async run (HTTP 200, exit -1).
ASYNC_BAD_REQID = "async run requires a valid reqid"
ASYNC_NOT_STARTED = "could not start async job"


def async_accepted(request: RunRequest) -> dict[str, Any]:
    """202: the job is running detached; poll /result/<reqid>."""
    return {"script": request.script, "status": "accepted", "reqid": request.reqid}


def async_busy(request: RunRequest) -> dict[str, Any]:
    """409: the same script is already running for this dispatcher."""
    return {
        "script": request.script,
        "status": "busy",
        "reqid": request.reqid,
        "error": "script already running",
    }


def script_context(request: RunRequest, peer_ip: str, dispatcher: str, timestamp: str) -> bytes:
    """The JSON object a script reads on stdin: compact, UTF-8, no newline."""
    return json.dumps(
        {
            "script": request.script,
            "args": list(request.args),
            "reqid": request.reqid,
            "peer_ip": peer_ip,
            "username": request.username,
            "token": request.token,
            "dispatcher": dispatcher,
            "timestamp": timestamp,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")


# --- /ping, /result ----------------------------------------------------------


def ping_reqid(body: bytes) -> str:
    """The reqid a ping echoes; an unparsable body counts as `{}` (0.12)."""
    data = _json_object(body) or {}
    value = data.get("reqid")
    return value if isinstance(value, str) and is_utf8(value) else ""


def ping_body(host: str, version: str, expiry: str, staged: bool, reqid: str) -> dict[str, Any]:
    return {
        "status": "ok",
        "host": host,
        "version": version,
        "expiry": expiry,
        "staged": bool(staged),
        "reqid": reqid,
    }


def result_unknown(reqid: str) -> dict[str, Any]:
    return {"status": "unknown", "reqid": reqid}


# --- /capabilities ------------------------------------------------------------


@dataclass(frozen=True)
class Sidecar:
    schema: dict[str, Any]
    version: str
    version_rejected: bool  # an explicit `version` was unusable, so it was derived


def parse_sidecar(raw: bytes) -> Sidecar:
    """A schema sidecar's body and its schema_version; ValueError with the
    0.12 skip reason when it must be treated as absent."""
    if len(raw) > MAX_SIDECAR_BYTES:
        raise ValueError(f"oversize: {len(raw)} > {MAX_SIDECAR_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    explicit = body.get("version")
    if (
        isinstance(explicit, str)
        and names.SCHEMA_VERSION.fullmatch(explicit)
        and not explicit.startswith("sha256:")
    ):
        return Sidecar(body, explicit, False)
    rejected = explicit is not None and not isinstance(explicit, (dict, list))
    return Sidecar(body, schema_version_fallback(body), rejected)


def script_entry(
    name: str, path: str, executable: bool, profile: str, sidecar: Sidecar | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "path": path,
        "executable": bool(executable),
        "profile": profile,
    }
    if sidecar is not None:
        entry["schema"] = sidecar.schema
        entry["schema_version"] = sidecar.version
    return entry


def capabilities_body(
    host: str, version: str, tags: dict[str, str], scripts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "status": "ok",
        "host": host,
        "version": version,
        "tags": dict(tags),
        "scripts": sorted(scripts, key=lambda entry: entry["name"]),
    }
