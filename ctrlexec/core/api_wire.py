"""The dispatcher API's side of the wire (port 7445), with no I/O.

Routing, request-body validation and every response body the API writes, in
0.12's shapes (protocol.md §7). The server feeds this module a method, a
path and a body and gets values back; it never builds a body itself.

Shapes worth knowing:

- every error is `{"ok":false,"error":<short>,"detail":<text>}`; an auth
  refusal is `{"ok":false,"error":<reason>,"code":<n>}`, or only
  `{"ok":false,"error":"forbidden"}` with `auth_deny_generic`;
- the method is upper-cased, the path compared verbatim (no query
  strings), `/status/<reqid>` takes lowercase hex only;
- `/ping` and `/run` need a JSON object body; `/discovery` treats a body
  it cannot parse as `{}`.

Stricter than 0.12, with the same 400 shape: host names, `username`,
`token` and arguments must be strings (0.12 would stringify whatever it was
given).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ApiError, FramingError
from . import names
from .ids import STATUS_REQID
from .results import HostResult
from .routing import Reply, Route
from .text import is_utf8, json_flag

# Route names.
INDEX = "index"
HEALTH = "health"
METRICS = "metrics"
PING = "ping"
RUN = "run"
DISCOVERY = "discovery"
STATUS = "status"
OPENAPI = "openapi"
OPENAPI_LIVE = "openapi-live"
NO_ROUTE = "no-route"

_ROUTES = {
    ("GET", "/"): INDEX,
    ("GET", "/health"): HEALTH,
    ("GET", "/metrics"): METRICS,
    ("POST", "/ping"): PING,
    ("POST", "/run"): RUN,
    ("GET", "/discovery"): DISCOVERY,
    ("POST", "/discovery"): DISCOVERY,
    ("GET", "/openapi.json"): OPENAPI,
    ("GET", "/openapi-live.json"): OPENAPI_LIVE,
}
_STATUS_PREFIX = "/status/"

# What GET / lists, in 0.12's order.
ENDPOINTS = (
    ("GET", "/health"),
    ("POST", "/ping"),
    ("POST", "/run"),
    ("GET", "/discovery"),
    ("POST", "/discovery"),
    ("GET", "/status/{reqid}"),
    ("GET", "/openapi.json"),
    ("GET", "/openapi-live.json"),
)
# Ours, not in 0.12's endpoint list (GET / keeps listing 0.12's only).
OUR_ENDPOINTS = (("GET", "/metrics"),)

# Request bodies whose `hosts` become enums in /openapi-live.json.
HOSTS_SCHEMAS = ("PingRequest", "RunRequest", "DiscoveryRequest")


def route(method: str, path: str) -> Route:
    """Exact match on the upper-cased method and the verbatim path."""
    method = method.upper()
    found = _ROUTES.get((method, path))
    if found:
        return Route(found)
    if method == "GET" and path.startswith(_STATUS_PREFIX):
        reqid = path[len(_STATUS_PREFIX) :]
        if STATUS_REQID.matches(reqid):
            return Route(STATUS, reqid)
    return Route(NO_ROUTE)


# --- response bodies ---------------------------------------------------------


def error_body(error: str, detail: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False, "error": error}
    if detail:
        body["detail"] = detail
    return body


def error_reply(exc: ApiError) -> Reply:
    """The answer to a refused request."""
    return Reply(exc.status, error_body(exc.error, exc.detail))


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "bad request", detail)


def no_route(method: str, path: str) -> Reply:
    return Reply(404, error_body("not found", f"no route for {method.upper()} {path}"))


def unknown_agents(references: list[str]) -> Reply:
    return Reply(
        404, error_body("unknown agent", "not a registered agent: " + ", ".join(references))
    )


def locked(conflicts: list[str]) -> Reply:
    return Reply(409, {"ok": False, "error": "locked", "code": 4, "conflicts": list(conflicts)})


def denied(reason: str, code: int, generic: bool) -> Reply:
    """An auth hook's no (or the no-hook default)."""
    if generic:
        return Reply(403, {"ok": False, "error": "forbidden"})
    return Reply(403, {"ok": False, "error": reason, "code": code})


def status_unknown(reqid: str) -> Reply:
    """Unknown, expired and not-yours all look the same."""
    return Reply(404, error_body("not found", f"no result for reqid {reqid}"))


def overloaded() -> Reply:
    return Reply(503, error_body("service unavailable", "too many concurrent requests"))


def server_error(detail: str) -> Reply:
    return Reply(500, error_body("server error", detail))


def framing_error(exc: FramingError) -> Reply:
    """The API's wording for a request that could not be read."""
    if exc.status == 431:
        return Reply(431, error_body("request header fields too large", exc.detail))
    if exc.status == 413:
        return Reply(413, error_body("payload too large", exc.detail))
    return Reply(exc.status, error_body("bad request", exc.detail))


def index_body(version: str) -> dict[str, Any]:
    return {
        "name": "ctrl-exec-api",
        "version": version,
        "spec": "/openapi.json",
        "live_spec": "/openapi-live.json",
        "endpoints": [{"method": method, "path": path} for method, path in ENDPOINTS],
    }


def health_body(version: str) -> dict[str, Any]:
    return {"ok": True, "version": version}


# --- request bodies ------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """Ours, beside `hosts`: `"select": {"hosts": [names, patterns, "@all"],
    "tags": {"KEY": "VALUE", ...}}` (core/selection.py)."""

    hosts: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PingRequest:
    hosts: list[str]
    username: str
    token: str = field(repr=False)  # a credential: never in a log line
    select: Selector | None = None


@dataclass(frozen=True)
class RunRequest:
    hosts: list[str]
    script: str
    args: list[str]
    username: str
    token: str = field(repr=False)  # a credential: never in a log line
    run_async: bool
    select: Selector | None = None


@dataclass(frozen=True)
class DiscoveryRequest:
    hosts: list[str]  # empty: every registered agent
    username: str
    token: str = field(repr=False)  # a credential: never in a log line


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("invalid JSON body") from None


def _object(body: bytes) -> dict[str, Any]:
    if not body:
        raise bad_request("request body required")
    value = _decode(body)
    if not isinstance(value, dict):
        raise bad_request("invalid JSON body")
    return value


# Bounds on a selector: as many patterns as hosts, and a handful of tags.
MAX_SELECT_HOSTS = 500
MAX_SELECT_TAGS = 64


def _selector(data: dict[str, Any]) -> Selector | None:
    value = data.get("select")
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"hosts", "tags"}:
        raise bad_request('select must be an object with "hosts" and/or "tags"')
    hosts = value.get("hosts") or []
    if (
        not isinstance(hosts, list)
        or len(hosts) > MAX_SELECT_HOSTS
        or not all(isinstance(host, str) and host for host in hosts)
    ):
        raise bad_request(f"select.hosts must be at most {MAX_SELECT_HOSTS} non-empty strings")
    tags = value.get("tags") or {}
    if (
        not isinstance(tags, dict)
        or len(tags) > MAX_SELECT_TAGS
        or not all(
            isinstance(val, str) and names.TAG_KEY.fullmatch(key) for key, val in tags.items()
        )
    ):
        raise bad_request("select.tags must map tag names to string values")
    if not hosts and not tags:
        raise bad_request("select needs hosts or tags")
    return Selector(tuple(hosts), tuple(sorted(tags.items())))


def _hosts(data: dict[str, Any], selector: Selector | None = None) -> list[str]:
    hosts = data.get("hosts")
    if selector is not None and hosts is None:
        return []
    if not isinstance(hosts, list) or (not hosts and selector is None):
        raise bad_request("hosts must be a non-empty array")
    if not all(isinstance(host, str) and host for host in hosts):
        raise bad_request("hosts must be non-empty strings")
    if not all(is_utf8(host) for host in hosts):
        raise bad_request(_not_utf8("hosts"))
    return hosts


def _not_utf8(key: str) -> str:
    return f"{key} must be valid UTF-8 (no lone surrogates)"


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a string")
    if not is_utf8(value):
        raise bad_request(_not_utf8(key))
    return value


def parse_ping(body: bytes) -> PingRequest:
    data = _object(body)
    selector = _selector(data)
    return PingRequest(
        _hosts(data, selector), _text(data, "username"), _text(data, "token"), selector
    )


def parse_run(body: bytes) -> RunRequest:
    """0.12's order: body, hosts, script, args; then ours: string fields."""
    data = _object(body)
    selector = _selector(data)
    hosts = _hosts(data, selector)
    script = data.get("script")
    if not names.is_script_name(script):
        raise bad_request("script name required (alphanumeric and hyphens only)")
    args = data.get("args")
    if args is None:
        args = []
    if not isinstance(args, list):
        raise bad_request("args must be an array")
    if not all(isinstance(arg, str) for arg in args):
        raise bad_request("args must be strings")
    if not all(is_utf8(arg) for arg in args):
        raise bad_request(_not_utf8("args"))
    username, token = _text(data, "username"), _text(data, "token")
    run_async = json_flag(data.get("async"))
    if run_async is None:
        raise bad_request("async must be true or false (or 1 or 0)")
    return RunRequest(hosts, script, args, username, token, run_async, selector)


def parse_discovery(body: bytes) -> DiscoveryRequest:
    """Optional body; one that does not parse counts as `{}` (0.12)."""
    try:
        data = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        hosts = []
    elif not all(isinstance(host, str) and host for host in hosts):
        raise bad_request("hosts must be non-empty strings")
    elif not all(is_utf8(host) for host in hosts):
        raise bad_request(_not_utf8("hosts"))
    return DiscoveryRequest(hosts, _text(data, "username"), _text(data, "token"))


def gate_token(body: bytes) -> str:
    """The token the `api` gate sees: the `token` of a body that starts with
    `{` and parses; otherwise empty (0.12)."""
    if not body.startswith(b"{"):
        return ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and is_utf8(token) else ""


def bearer_token(authorization: str) -> str:
    """`Authorization: Bearer <token>` (scheme case-insensitive), else empty."""
    scheme, _, rest = authorization.strip().partition(" ")
    token = rest.strip().split(" ", 1)[0] if rest.strip() else ""
    return token if scheme.lower() == "bearer" else ""


# --- /openapi-live.json ------------------------------------------------------------


def live_spec(
    spec: dict[str, Any], hosts: list[str], capabilities: Sequence[HostResult], epoch: int
) -> dict[str, Any]:
    """The static document with the live host and script enums (0.12's rules):
    request `hosts` items enumerate the registry, the run request's `script`
    the scripts OK agents offer, `x-ctrl-exec-scripts` groups each script's
    hosts by schema version, and `info.version` gets `+<epoch>`. With no
    agents there is no host enum (0.12 writes `null`, which no OpenAPI
    validator accepts). `spec` is not modified."""
    document: dict[str, Any] = json.loads(json.dumps(spec))
    schemas = document.get("components", {}).get("schemas", {})
    for schema_name in HOSTS_SCHEMAS:
        hosts_schema = schemas.get(schema_name, {}).get("properties", {}).get("hosts")
        if isinstance(hosts_schema, dict) and hosts:
            hosts_schema.setdefault("items", {})["enum"] = list(hosts)
    variants: dict[str, dict[str, dict[str, Any]]] = {}
    for result in capabilities:
        scripts = result.wire.get("scripts")
        if result.status != "ok" or not isinstance(scripts, list):
            continue
        host = result.wire.get("host")
        for entry in scripts:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not names.is_script_name(name):
                continue  # nothing could run it; an agent's text is no name
            version = entry.get("schema_version")
            key = version if isinstance(version, str) else ""
            slot = variants.setdefault(name, {}).setdefault(key, {"hosts": set()})
            slot["hosts"].add(host)
            if isinstance(version, str):
                slot["schema_version"] = version
            if "schema" in entry and "schema" not in slot:
                slot["schema"] = entry["schema"]
    if variants:
        run = schemas.get("RunRequest", {}).get("properties", {}).get("script")
        if isinstance(run, dict):
            run["enum"] = sorted(variants)
        document["x-ctrl-exec-scripts"] = {
            name: [
                {**slot, "hosts": sorted(slot["hosts"])}
                for _, slot in sorted(variants[name].items())
            ]
            for name in sorted(variants)
        }
    info = document.setdefault("info", {})
    base = str(info.get("version", ""))
    plus = base.rfind("+")
    if plus >= 0 and base[plus + 1 :].isdigit():
        base = base[:plus]
    info["version"] = f"{base}+{epoch}"
    return document
