"""Connections to the PostgreSQL state database (driver: pg8000).

pg8000 is imported here and only here, when a PostgreSQL backend is opened:
`ced run`, `ced ping` and the agent never load it (a test keeps it so).

A `Database` keeps a few idle connections for short statements and opens a
dedicated one for anything that holds a session advisory lock for a while
(host:script locks, the leader lease): closing that connection is the
release, and PostgreSQL does it for us when the holder dies and its socket
drops.

Credentials: the password is read from `state_password_file`, else
PGPASSWORD, else the pgpass file; it is passed to the driver and never
logged or put in a message. Driver errors are re-raised as StateError with
the server's message (which never holds the password) and where we tried.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import ssl
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StateError
from .dsn import Dsn, pgpass_lookup

# Idle connections kept for short statements; more are opened when busy
# (up to MAX_OPEN) and closed when returned beyond this.
MAX_IDLE = 4
# Every open connection of one process, pooled and dedicated: beyond this a
# caller waits up to ACQUIRE_WAIT seconds, then gets a StateError.
MAX_OPEN = 96
ACQUIRE_WAIT = 30.0
# A statement that takes longer is cancelled by the server.
STATEMENT_TIMEOUT_MS = 30_000
READ_MARGIN = 15.0
MAX_PASSWORD_BYTES = 1024


def read_password(path: str | None, dsn: Dsn, user: str, env: Mapping[str, str]) -> str | None:
    """The password: from `path` (state_password_file), else PGPASSWORD,
    else PGPASSFILE or ~/.pgpass; None when none applies."""
    if path:
        return _read_secret_file(Path(path)).splitlines()[0].rstrip("\r")
    if env.get("PGPASSWORD"):
        return env["PGPASSWORD"]
    passfile = env.get("PGPASSFILE") or os.path.join(os.path.expanduser("~"), ".pgpass")
    try:
        text = _read_secret_file(Path(passfile))
    except ConfigError:
        if env.get("PGPASSFILE"):
            raise
        return None
    return pgpass_lookup(text, dsn, user)


def _read_secret_file(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"password file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot open password file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"password file {path} is not a regular file")
        if info.st_mode & 0o007:
            raise ConfigError(
                f"password file {path} is readable by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}): chmod 0600 or 0640"
            )
        raw = handle.read(MAX_PASSWORD_BYTES + 1)
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ConfigError(f"password file {path} is larger than {MAX_PASSWORD_BYTES} bytes")
    text = raw.decode("utf-8", "replace")
    if not text.strip():
        raise ConfigError(f"password file {path} is empty")
    return text


class Database:
    def __init__(
        self,
        dsn: Dsn,
        password_file: str | None = None,
        env: Mapping[str, str] | None = None,
        application_name: str = "ctrl-exec",
    ):
        self.dsn = dsn
        env = dict(os.environ) if env is None else env
        self.user = dsn.user or env.get("PGUSER") or getpass.getuser()
        self._password = read_password(password_file, dsn, self.user, env)
        self._application_name = application_name
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_OPEN)

    def describe(self) -> str:
        return self.dsn.describe()

    # -- connections ----------------------------------------------------------

    def open(self) -> Any:
        """A new connection (pg8000.native.Connection); StateError if none."""
        import pg8000.native  # only here: the PostgreSQL backend is configured

        kwargs: dict[str, Any] = {
            "user": self.user,
            "database": self.dsn.database,
            "timeout": self.dsn.connect_timeout,
            "application_name": self._application_name,
        }
        if self._password is not None:
            kwargs["password"] = self._password
        if self.dsn.unix_socket:
            kwargs["unix_sock"] = self.dsn.unix_socket
        else:
            kwargs["host"] = self.dsn.host
            kwargs["port"] = self.dsn.port
            if self.dsn.sslmode != "disable":
                context = ssl.create_default_context()
                if self.dsn.sslmode == "require":
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                kwargs["ssl_context"] = context
        try:
            conn = pg8000.native.Connection(**kwargs)
            conn.run(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        except (TimeoutError, pg8000.native.Error, OSError) as exc:
            raise StateError(
                f"cannot connect to PostgreSQL at {self.describe()}: {_reason(exc)}"
            ) from None
        # The connect timeout also bounds every later read of the socket;
        # a statement may legitimately wait up to the server's statement
        # timeout (a blocking advisory lock), so reads wait a little longer
        # than that before the connection is given up as dead. An idle
        # connection (a run holding its locks) reads nothing and never times out.
        with contextlib.suppress(OSError, AttributeError):
            conn._usock.settimeout(STATEMENT_TIMEOUT_MS / 1000 + READ_MARGIN)
        return conn

    def dedicated(self) -> Any:
        """A connection of its own (close it to release what it holds)."""
        if not self._slots.acquire(timeout=ACQUIRE_WAIT):
            raise StateError(f"too many PostgreSQL connections open ({MAX_OPEN})")
        try:
            return _Counted(self.open(), self._slots)
        except BaseException:
            self._slots.release()
            raise

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection for short statements."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self.dedicated()
        broken = False
        try:
            yield conn
        except StateError:
            broken = not conn.healthy()
            raise
        except BaseException:
            broken = True
            raise
        finally:
            with self._lock:
                keep = not broken and len(self._idle) < MAX_IDLE
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        with self.connection() as conn:
            return conn.run(sql, **params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.connection() as conn:
            conn.run("BEGIN")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(StateError):
                    conn.run("ROLLBACK")
                raise
            conn.run("COMMIT")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Counted:
    """A connection that gives its slot back when closed, and turns driver
    errors into StateError (the server's words, never the password)."""

    def __init__(self, conn: Any, slots: threading.BoundedSemaphore):
        self._conn = conn
        self._slots: threading.BoundedSemaphore | None = slots

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        import pg8000.native

        try:
            return self._conn.run(sql, **params) or []
        except (TimeoutError, pg8000.native.Error, OSError) as exc:
            raise StateError(f"PostgreSQL: {_reason(exc)}") from None

    def healthy(self) -> bool:
        try:
            self._conn.run("SELECT 1")
            return True
        except Exception:
            return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        if self._slots is not None:
            self._slots.release()
            self._slots = None


def _reason(exc: BaseException) -> str:
    """A driver error as one line: the server's message and SQLSTATE when it
    sent one, else the exception text (no credentials in either)."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], dict):
        fields = args[0]
        message = str(fields.get("M", "error"))
        code = fields.get("C")
        return f"{message} ({code})" if code else message
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
