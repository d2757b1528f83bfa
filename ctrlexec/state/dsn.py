"""The `state_backend` URL of the PostgreSQL backend, parsed and checked.

    postgresql://[user@]host[:port]/database[?sslmode=...&connect_timeout=N]
    postgresql://[user@]host1[:port],host2[:port]/database   (libpq's host list)
    postgresql://[user@]/database?host=/run/postgresql      (Unix socket)

A host list is tried in order and the first server that accepts writes is
used (libpq's `target_session_attrs=read-write`, which is always in force
here: the dispatcher writes its state, a standby cannot serve it). That is
how a dispatcher follows a failover without a restart: name the primary
and its standby, and after a promotion the next connection finds the new
primary.

TLS: `sslmode=require` encrypts without checking the server;
`sslmode=verify-full` checks its certificate and name against the system CA
store, or against the CA file named by `sslrootcert=/absolute/path`.

A password never goes in the URL: the configuration file is readable by the
service group and its values end up in error messages and `ced config`
output. It comes from `state_password_file`, `PGPASSWORD` or a pgpass file
(`PGPASSFILE`, else `~/.pgpass`). Missing parts come from the standard
variables `PGHOST`, `PGPORT`, `PGUSER` and `PGDATABASE`.

Pure: no socket, no file. Errors name the part that is wrong, never the
whole URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import DsnError

SCHEMES = ("postgresql", "postgres")
SSLMODES = ("disable", "require", "verify-full")
PARAMETERS = ("host", "sslmode", "sslrootcert", "connect_timeout", "target_session_attrs")
MAX_HOSTS = 8
_IDENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.$-]{0,62}")
DEFAULT_PORT = 5432
DEFAULT_SOCKET_DIR = "/run/postgresql"
MAX_CONNECT_TIMEOUT = 300


@dataclass(frozen=True)
class Dsn:
    host: str  # a host name or address, or an absolute socket directory
    port: int
    database: str
    user: str | None  # None: PGUSER, else the process user
    sslmode: str = "disable"
    connect_timeout: int = 10
    sslrootcert: str | None = None  # verify-full against this CA file, not the system store
    more_hosts: tuple[tuple[str, int], ...] = ()  # the rest of a host list, tried in order

    @property
    def servers(self) -> tuple[tuple[str, int], ...]:
        """Every (host, port) to try, in order."""
        return ((self.host, self.port), *self.more_hosts)

    @property
    def unix_socket(self) -> str | None:
        """The socket path when `host` is a directory (libpq's rule)."""
        if self.host.startswith("/"):
            return where(self.host, self.port)
        return None

    def describe(self) -> str:
        """Where, for messages and logs: no user, no password."""
        return ",".join(where(h, p) for h, p in self.servers) + f"/{self.database}"


def where(host: str, port: int) -> str:
    """One server as messages name it: `host:port`, `[v6]:port`, or the
    socket path when `host` is a directory (libpq's rule)."""
    if host.startswith("/"):
        return f"{host.rstrip('/')}/.s.PGSQL.{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_postgresql(value: object) -> bool:
    return isinstance(value, str) and value.split(":", 1)[0] in SCHEMES


def parse_dsn(value: str, env: Mapping[str, str] | None = None) -> Dsn:
    env = env if env is not None else {}
    if not is_postgresql(value):
        raise DsnError("state_backend must be 'files' or a postgresql:// URL")
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        raise DsnError("state_backend: the PostgreSQL URL is malformed") from None
    if password is not None:
        raise DsnError(
            "state_backend: the URL must not carry a password "
            "(use state_password_file, PGPASSWORD or a pgpass file)"
        )
    if parts.fragment:
        raise DsnError("state_backend: the URL must not have a #fragment")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise DsnError("state_backend: the URL query is malformed") from None
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise DsnError(f"state_backend: unknown URL parameter(s): {', '.join(unknown)}")
    for key, values in query.items():
        if len(values) != 1:
            raise DsnError(f"state_backend: URL parameter {key} given more than once")
    default_port = _default_port(env)
    servers = _host_list(parts.netloc.rpartition("@")[2], default_port)
    port = servers[0][1] if servers else default_port
    if "host" in query:
        if "," in query["host"][0]:
            raise DsnError("state_backend: ?host= names one host or socket directory")
        servers = [(query["host"][0], port)]
    if not servers or not servers[0][0]:
        servers = [(env.get("PGHOST", "") or DEFAULT_SOCKET_DIR, port)]
    for host, _ in servers:
        _check_host(host, several=len(servers) > 1)
    database = unquote(parts.path.lstrip("/")) or env.get("PGDATABASE", "")
    if not database:
        raise DsnError("state_backend: the URL names no database (postgresql://host/DATABASE)")
    if not _IDENT.fullmatch(database):
        raise DsnError("state_backend: the database name has characters it should not have")
    user = unquote(parts.username) if parts.username else (env.get("PGUSER") or None)
    if user is not None and not _IDENT.fullmatch(user):
        raise DsnError("state_backend: the user name has characters it should not have")
    sslmode = query.get("sslmode", ["disable"])[0]
    if sslmode not in SSLMODES:
        raise DsnError(f"state_backend: sslmode must be one of {', '.join(SSLMODES)}")
    if sslmode != "disable" and servers[0][0].startswith("/"):
        raise DsnError(
            f"state_backend: sslmode={sslmode} cannot be applied to a Unix socket "
            "(PostgreSQL does not encrypt them): use sslmode=disable or a TCP host"
        )
    sslrootcert = query.get("sslrootcert", [None])[0]
    if sslrootcert is not None:
        if sslmode != "verify-full":
            raise DsnError("state_backend: sslrootcert needs sslmode=verify-full")
        if not sslrootcert.startswith("/") or "\0" in sslrootcert or len(sslrootcert) > 4096:
            raise DsnError("state_backend: sslrootcert must be an absolute path to a CA file")
    attrs = query.get("target_session_attrs", ["read-write"])[0]
    if attrs != "read-write":
        raise DsnError(
            "state_backend: target_session_attrs can only be read-write "
            "(the dispatcher writes its state; a standby cannot serve it)"
        )
    timeout_text = query.get("connect_timeout", ["10"])[0]
    if not timeout_text.isdigit() or not 1 <= int(timeout_text) <= MAX_CONNECT_TIMEOUT:
        raise DsnError(f"state_backend: connect_timeout must be 1 to {MAX_CONNECT_TIMEOUT}")
    (host, port), *rest = servers
    return Dsn(host, port, database, user, sslmode, int(timeout_text), sslrootcert, tuple(rest))


def _default_port(env: Mapping[str, str]) -> int:
    text = env.get("PGPORT", "")
    if text and not (text.isdigit() and 0 < int(text) < 65536):
        raise DsnError("PGPORT is not a port number")
    return int(text) if text else DEFAULT_PORT


def _host_list(hostlist: str, default_port: int) -> list[tuple[str, int]]:
    """`h1[:p1],h2[:p2],...` (IPv6 in brackets) as (host, port) pairs; [] for ''."""
    if not hostlist:
        return []
    entries = hostlist.split(",")
    if len(entries) > MAX_HOSTS:
        raise DsnError(f"state_backend: at most {MAX_HOSTS} hosts in the host list")
    servers = []
    for entry in entries:
        match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(?::(\d{1,5}))?", entry)
        if match is None or (not match.group(1) and len(entries) > 1):
            raise DsnError("state_backend: the PostgreSQL URL is malformed (host list?)")
        port = int(match.group(2)) if match.group(2) else default_port
        if not 0 < port < 65536:
            raise DsnError("state_backend: the PostgreSQL URL is malformed (port out of range)")
        servers.append((unquote(match.group(1).strip("[]")).lower(), port))
    return servers


def _check_host(host: str, several: bool) -> None:
    if host.startswith("/"):
        if several:
            raise DsnError("state_backend: a host list names TCP hosts, not socket directories")
        return
    if not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        raise DsnError("state_backend: the host is not a host name, an address or a directory")


def pgpass_lookup(
    text: str, dsn: Dsn, user: str, server: tuple[str, int] | None = None
) -> str | None:
    """The password a pgpass file gives for this host, port, database and
    user (libpq's format: `host:port:database:user:password`, `*` matches
    anything, `\\:` and `\\\\` escape). `server`: one of a host list's
    entries (default: the first)."""
    host, port = server or (dsn.host, dsn.port)
    host = "localhost" if host.startswith("/") else host
    wanted = (host, str(port), dsn.database, user)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) != 5:
            continue
        if all(f == "*" or f == w for f, w in zip(fields[:4], wanted, strict=True)):
            return fields[4]
    return None


def _pgpass_fields(line: str) -> list[str]:
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields
