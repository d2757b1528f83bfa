"""Types, defaults and validation of every configuration key.

Three TOML files, keys named as in ctrl-exec 0.12's `.conf` files:

- `ctrl-exec.toml`: the dispatcher and its API (flat keys);
- `agent.toml`: the agent (flat keys, a `[tags]` table of strings,
  `[profile.<name>]` tables);
- `scripts.toml`: the allowlist, one key per script name whose value is an
  absolute path or a table `{ path, profile, timeout }`.

A default may depend on the path layout (`--root`), so path defaults are
functions of a Layout. Keys marked `ours` do not exist in 0.12.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..core import names
from ..core.ipallow import parse_entry
from ..core.ratelimit import Rule
from .paths import Layout

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # int | str | bool | path | strings | paths
    default: Any  # a value, or a callable taking the Layout
    doc: str
    check: Check | None = None
    optional: bool = False  # None is a valid value (unset)
    ours: bool = False

    def default_for(self, layout: Layout) -> Any:
        return self.default(layout) if callable(self.default) else self.default


def between(low: int, high: int) -> Check:
    def check(value: int) -> str | None:
        if not low <= value <= high:
            return f"must be between {low} and {high}, not {value}"
        return None

    return check


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}"
        return None

    return check


def rate_rule(value: str) -> str | None:
    try:
        Rule.parse(value)
    except ValueError as exc:
        return str(exc)
    return None


def absolute_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"must be an absolute path, not {value!r}"
    return None


def absolute_paths(values: list[str]) -> str | None:
    for value in values:
        problem = absolute_path(value)
        if problem:
            return problem
    return None


def address_entries(values: list[str]) -> str | None:
    for value in values:
        try:
            parse_entry(value)
        except ValueError as exc:
            return str(exc)
    return None


def dispatcher_id(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    return None


def state_backend(value: str) -> str | None:
    if value == "files":
        return None
    from ..errors import DsnError
    from ..state.dsn import parse_dsn

    try:
        parse_dsn(value)
    except DsnError as exc:
        return str(exc)
    return None


def username(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*|[0-9]+", value):
        return f"is not a valid user name: {value!r}"
    if value.isdigit() and int(value) > 0xFFFFFFFF:
        return f"uid out of range: {value}"
    return None


def capabilities(values: list[str]) -> str | None:
    if len(values) > 32:
        return "at most 32 capabilities"
    for value in values:
        if not re.fullmatch(r"CAP_[A-Z0-9_]+", value):
            return f"{value!r} is not a capability name (CAP_...)"
    return None


def bounded_paths(values: list[str]) -> str | None:
    if len(values) > 32:
        return "at most 32 paths"
    return absolute_paths(values)


PORT = between(1, 65535)
LOG_TARGET_DOC = (
    "where log lines go: auto (syslog if /dev/log exists, else stderr for daemons and a file"
    " in the state directory for commands; docs/logging.md), syslog, stderr, discard,"
    " or a file path"
)

DISPATCHER_KEYS: tuple[Key, ...] = (
    Key(
        "cert",
        "path",
        lambda layout: str(layout.dispatcher_cert),
        "dispatcher certificate (client cert towards agents)",
    ),
    Key("key", "path", lambda layout: str(layout.dispatcher_key), "dispatcher private key"),
    Key("ca", "path", lambda layout: str(layout.ca_cert), "CA certificate that signed every agent"),
    Key("auth_hook", "path", None, "executable that authorises run/ping/api/status", optional=True),
    Key("auth_hook_timeout", "int", 10, "seconds before a hook is killed (deny)", between(1, 3600)),
    Key(
        "api_auth_default",
        "str",
        "deny",
        "API decision when no auth_hook is set",
        one_of("allow", "deny"),
    ),
    Key("auth_deny_generic", "bool", False, "API 403 bodies say only 'forbidden'"),
    Key("api_port", "int", 7445, "API listen port", PORT),
    Key("api_bind", "str", "127.0.0.1", "API listen address"),
    Key(
        "api_cert",
        "path",
        None,
        "API TLS certificate (TLS when api_cert and api_key are set)",
        optional=True,
    ),
    Key("api_key", "path", None, "API TLS private key", optional=True),
    Key("api_max_children", "int", 64, "concurrent API requests before 503", between(1, 4096)),
    Key(
        "api_max_pending",
        "int",
        256,
        "connections still sending their request; when full, a new one replaces the oldest "
        "of the busiest address",
        between(1, 10000),
        ours=True,
    ),
    Key(
        "api_max_pending_per_address",
        "int",
        64,
        "connections one address may have still sending their request; a new one replaces "
        "its oldest",
        between(1, 10000),
        ours=True,
    ),
    Key(
        "health_open",
        "bool",
        False,
        "GET /health answers without the api auth gate (0.12 gates it)",
        ours=True,
    ),
    Key(
        "metrics_open",
        "bool",
        False,
        "serve GET /metrics without the api auth gate (Prometheus scrapers)",
        ours=True,
    ),
    Key(
        "api_request_timeout",
        "int",
        30,
        "seconds an API client has to complete the TLS handshake and send its request",
        between(1, 3600),
        ours=True,
    ),
    Key(
        "read_timeout",
        "int",
        60,
        "seconds of silence from an agent before giving up",
        between(1, 86400),
    ),
    Key(
        "timeout", "int", None, "deprecated alias of read_timeout", between(1, 86400), optional=True
    ),
    Key(
        "max_parallel",
        "int",
        64,
        "agents contacted at once (each takes a thread); dispatcher serve shares this "
        "many among all its operations",
        between(1, 500),
    ),
    Key(
        "max_hosts",
        "int",
        500,
        "agents one ping, run, discovery or cancel may name (0.12 allows 500)",
        between(1, 20000),
        ours=True,
    ),
    Key(
        "cert_days",
        "int",
        None,
        "days a renewed agent cert (default 365) or a rotated dispatcher cert (default 825) "
        "is valid; agents are renewed when less than half of it remains",
        between(1, 36500),
        optional=True,
    ),
    Key(
        "cert_renewal_days",
        "int",
        90,
        "rotate the dispatcher cert (ced maintain, dispatcher serve) when at most this "
        "many days remain",
        between(1, 36500),
    ),
    Key(
        "cert_overlap_days",
        "int",
        30,
        "days the previous dispatcher serial stays trusted after rotation; agents not "
        "confirmed by then become stale",
        between(0, 3650),
    ),
    Key(
        "cert_check_interval",
        "int",
        14400,
        "seconds between maintenance passes of dispatcher serve (renewal, rotation, "
        "broadcast, stale expiry, run-record purge)",
        between(60, 604800),
    ),
    Key(
        "dispatcher_id",
        "str",
        None,
        "stable identity agents record for this dispatcher (default: host name)",
        dispatcher_id,
        optional=True,
    ),
    Key(
        "state_backend",
        "str",
        "files",
        "where the dispatcher's shared state lives: 'files' (the state directories) or "
        "'postgresql://[user@]host[:port][,host2[:port]...]/database' for several dispatchers "
        "sharing one fleet (a host list is tried in order for the server that accepts writes; "
        "sslmode=disable|require|verify-full, sslrootcert=/path/ca.pem; no password in the "
        "URL: use state_password_file or PGPASSWORD/PGPASSFILE)",
        state_backend,
        ours=True,
    ),
    Key(
        "fleet_sync_interval",
        "int",
        60,
        "seconds between the rounds in which a dispatcher sharing a PostgreSQL state "
        "database adds the other dispatchers' serials to the agents that trust it; also "
        "how often it looks at every server of the state_backend host list again",
        between(1, 86400),
        ours=True,
    ),
    Key(
        "state_password_file",
        "path",
        None,
        "file holding the PostgreSQL password (one line; mode 0600 or 0640)",
        absolute_path,
        optional=True,
        ours=True,
    ),
    Key(
        "pairing_max_queue",
        "int",
        10,
        "pending pairing requests before 'pairing queue full'",
        between(1, 1000),
    ),
    Key("pairing_timeout", "int", 600, "seconds pairing mode stays open", between(1, 600)),
    Key(
        "pairing_rate_limit_volume",
        "str",
        "10/60/300",
        "pairing connections per address: limit/window/block",
        rate_rule,
    ),
    Key("pairing_rate_limit_disable", "bool", False, "turn the pairing rate limit off"),
    Key(
        "pairing_request_timeout",
        "int",
        10,
        "seconds a pairing client has to complete the handshake and send its request",
        between(1, 600),
        ours=True,
    ),
    Key(
        "service_user",
        "str",
        "ctrl-exec",
        "owner of the dispatcher key when running as root",
        username,
    ),
    Key(
        "ca_dir",
        "path",
        lambda layout: str(layout.dispatcher_etc),
        "directory of ca.key, ca.crt, ca.serial",
    ),
    Key(
        "rotation_file",
        "path",
        lambda layout: str(layout.rotation_file),
        "dispatcher cert rotation state (current and previous serial, overlap end)",
    ),
    Key(
        "registry_dir",
        "path",
        lambda layout: str(layout.registry_dir),
        "one JSON record per paired agent",
    ),
    Key("port", "int", 7443, "agent port for hosts with none recorded", PORT),
    Key(
        "key_type",
        "str",
        "ec",
        "algorithm of new dispatcher and CA keys: ec (P-256) or rsa",
        one_of("ec", "rsa"),
        ours=True,
    ),
    Key("log_target", "str", "auto", LOG_TARGET_DOC, ours=True),
    Key(
        "log_format", "str", "kv", "kv (ACTION=... lines) or json", one_of("kv", "json"), ours=True
    ),
)

AGENT_KEYS: tuple[Key, ...] = (
    Key("port", "int", 7443, "mTLS listen port", PORT),
    Key(
        "metrics_port",
        "int",
        0,
        "port of the loopback-only (127.0.0.1) Prometheus listener; 0 turns it off",
        between(0, 65535),
        ours=True,
    ),
    Key("bind", "str", "", "listen address; empty means all interfaces (IPv4 and IPv6)", ours=True),
    Key("cert", "path", lambda layout: str(layout.agent_cert), "agent certificate"),
    Key("key", "path", lambda layout: str(layout.agent_key), "agent private key"),
    Key("ca", "path", lambda layout: str(layout.agent_ca), "CA certificate of the dispatchers"),
    Key(
        "trusted_dispatchers_path",
        "path",
        lambda layout: str(layout.trusted_dispatchers),
        "trusted-dispatcher map (serial -> dispatcher id)",
    ),
    Key(
        "revoked_serials",
        "path",
        lambda layout: str(layout.revoked_serials),
        "revoked certificate serials, one per line",
    ),
    Key(
        "script_dirs",
        "paths",
        [],
        "scripts must resolve under one of these directories (empty: anywhere)",
        absolute_paths,
    ),
    Key(
        "auth_hook", "path", None, "executable that authorises run/discovery/rotate", optional=True
    ),
    Key("auth_hook_timeout", "int", 10, "seconds before a hook is killed (deny)", between(1, 3600)),
    Key(
        "allowed_ips",
        "strings",
        [],
        "peer addresses or networks allowed to connect (empty: all)",
        address_entries,
    ),
    Key(
        "rate_limit_volume",
        "str",
        "10/60/300",
        "connections per address: limit/window/block",
        rate_rule,
    ),
    Key(
        "rate_limit_probe",
        "str",
        "3/600/3600",
        "failed handshakes per address: limit/window/block",
        rate_rule,
    ),
    Key(
        "rate_limit_trusted",
        "str",
        "6000/60/60",
        "connections per trusted dispatcher (by certificate): limit/window/block; "
        "over it the agent answers 429",
        rate_rule,
        ours=True,
    ),
    Key("rate_limit_disable", "bool", False, "turn rate limiting off"),
    Key(
        "max_children",
        "int",
        256,
        "concurrent requests from trusted dispatchers; more are closed unanswered",
        between(1, 10000),
    ),
    Key(
        "max_pending",
        "int",
        256,
        "connections not yet proven to come from a trusted dispatcher; when full, a new one "
        "replaces the oldest of the busiest address",
        between(1, 10000),
        ours=True,
    ),
    Key(
        "max_pending_per_address",
        "int",
        64,
        "unproven connections one address may hold; a new one replaces its oldest",
        between(1, 10000),
        ours=True,
    ),
    Key(
        "handshake_timeout",
        "int",
        10,
        "seconds an unproven connection has for the TLS handshake (and, from a peer not in "
        "the trusted map, its request)",
        between(1, 3600),
        ours=True,
    ),
    Key(
        "stdin_timeout",
        "int",
        10,
        "seconds to write the JSON context to a script's stdin",
        between(1, 3600),
    ),
    Key(
        "executor_socket",
        "path",
        None,
        "privileged executor socket (profiles are applied there)",
        optional=True,
    ),
    Key(
        "async_runs_dir",
        "path",
        lambda layout: str(layout.async_runs_dir),
        "store of async run results",
    ),
    Key(
        "cert_staging_path",
        "path",
        lambda layout: str(layout.cert_staging),
        "where a renewed cert is staged: presented at once, installed at cert by "
        "promote-cert or the next start",
    ),
    Key("pairing_port", "int", 7444, "default dispatcher pairing port for request-pairing", PORT),
    Key(
        "script_timeout",
        "int",
        3600,
        "seconds a script may run before its process group is killed"
        " (per-script 'timeout' overrides)",
        between(1, 604800),
        ours=True,
    ),
    Key(
        "max_output_bytes",
        "int",
        4 * 1_048_576,
        "bytes kept of each of stdout and stderr; the rest is discarded and noted",
        between(1024, 32 * 1_048_576),
        ours=True,
    ),
    Key(
        "output_memory",
        "int",
        16 * 1_048_576,
        "bytes of finished script output held in memory at once across all runs; "
        "more waits its turn (output beyond 64 KiB per stream waits in a temporary file)",
        between(1_048_576, 1024 * 1_048_576),
        ours=True,
    ),
    Key(
        "request_timeout",
        "int",
        30,
        "seconds a trusted dispatcher has to send its request after the handshake",
        between(1, 3600),
        ours=True,
    ),
    Key("log_target", "str", "auto", LOG_TARGET_DOC, ours=True),
    Key(
        "log_format", "str", "kv", "kv (ACTION=... lines) or json", one_of("kv", "json"), ours=True
    ),
)

PROFILE_KEYS: tuple[Key, ...] = (
    Key("run_as", "str", None, "user the script runs as (executor only)", username, optional=True),
    Key("caps", "strings", [], "capabilities the script keeps (executor only)", capabilities),
    Key(
        "writable",
        "paths",
        [],
        "when set, everything else is read-only (executor only)",
        bounded_paths,
    ),
    Key("no_new_privileges", "bool", True, "set PR_SET_NO_NEW_PRIVS before exec"),
)

SCRIPT_KEYS: tuple[Key, ...] = (
    Key("path", "path", None, "absolute path of the executable", absolute_path),
    Key("profile", "str", "default", "execution profile ([profile.<name>] in agent.toml)"),
    Key(
        "timeout",
        "int",
        None,
        "seconds before the script's process group is killed",
        between(1, 604800),
        optional=True,
    ),
)

PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def keys_by_name(keys: tuple[Key, ...]) -> dict[str, Key]:
    return {key.name: key for key in keys}


def normalise_path(value: str) -> str:
    return str(PurePosixPath(value))


def is_script_name(name: str) -> bool:
    return names.is_script_name(name)
