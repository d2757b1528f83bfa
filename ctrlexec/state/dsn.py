"""The `state_backend` URL of the PostgreSQL backend, parsed and checked.

    postgresql://[user@]host[:port]/database[?sslmode=...&connect_timeout=N]
    postgresql://[user@]/database?host=/run/postgresql      (Unix socket)

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

    @property
    def unix_socket(self) -> str | None:
        """The socket path when `host` is a directory (libpq's rule)."""
        if self.host.startswith("/"):
            return f"{self.host.rstrip('/')}/.s.PGSQL.{self.port}"
        return None

    def describe(self) -> str:
        """Where, for messages and logs: no user, no password."""
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"{where}/{self.database}"


def is_postgresql(value: object) -> bool:
    return isinstance(value, str) and value.split(":", 1)[0] in SCHEMES


def parse_dsn(value: str, env: Mapping[str, str] | None = None) -> Dsn:
    env = env if env is not None else {}
    if not is_postgresql(value):
        raise DsnError("state_backend must be 'files' or a postgresql:// URL")
    try:
        parts = urlsplit(value)
        port_given = parts.port
    except ValueError:
        raise DsnError("state_backend: the PostgreSQL URL is malformed (port?)") from None
    if parts.password is not None:
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
    unknown = sorted(set(query) - {"host", "sslmode", "connect_timeout"})
    if unknown:
        raise DsnError(f"state_backend: unknown URL parameter(s): {', '.join(unknown)}")
    for key, values in query.items():
        if len(values) != 1:
            raise DsnError(f"state_backend: URL parameter {key} given more than once")
    host = unquote(parts.hostname or "") if parts.hostname else ""
    if "host" in query:
        host = query["host"][0]
    host = host or env.get("PGHOST", "") or DEFAULT_SOCKET_DIR
    if not host.startswith("/") and not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        raise DsnError("state_backend: the host is not a host name, an address or a directory")
    port = port_given
    if port is None:
        port_text = env.get("PGPORT", "")
        if port_text and not port_text.isdigit():
            raise DsnError("PGPORT is not a port number")
        port = int(port_text) if port_text else DEFAULT_PORT
    if not 0 < port < 65536:
        raise DsnError("state_backend: the port is out of range")
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
    timeout_text = query.get("connect_timeout", ["10"])[0]
    if not timeout_text.isdigit() or not 1 <= int(timeout_text) <= MAX_CONNECT_TIMEOUT:
        raise DsnError(f"state_backend: connect_timeout must be 1 to {MAX_CONNECT_TIMEOUT}")
    return Dsn(host, port, database, user, sslmode, int(timeout_text))


def pgpass_lookup(text: str, dsn: Dsn, user: str) -> str | None:
    """The password a pgpass file gives for this host, port, database and
    user (libpq's format: `host:port:database:user:password`, `*` matches
    anything, `\\:` and `\\\\` escape)."""
    host = "localhost" if dsn.host.startswith("/") else dsn.host
    wanted = (host, str(dsn.port), dsn.database, user)
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
