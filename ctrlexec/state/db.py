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
import select
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import log
from ..core.db_lineage import Lineage, choose, lineage_from_row, refusal
from ..errors import ConfigError, StateError
from .dsn import Dsn, pgpass_lookup, where
from .lineage_file import LineageFile

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
# Seconds after which the next new session looks at every listed server
# again, not only the one in use (see Database.open).
SURVEY_EVERY = 60.0
# Whether the server accepts writes, its current WAL file (the timeline is
# in its name; a standby has none) and its cluster's system identifier:
# every function here is executable by any role on PostgreSQL 10 and later.
LINEAGE_QUERY = (
    "SELECT current_setting('transaction_read_only'), "
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, "
    "(SELECT system_identifier FROM pg_control_system())"
)
MAX_CA_BYTES = 1 << 20


def read_password(
    path: str | None,
    dsn: Dsn,
    user: str,
    env: Mapping[str, str],
    server: tuple[str, int] | None = None,
) -> str | None:
    """The password: from `path` (state_password_file), else PGPASSWORD,
    else PGPASSFILE or ~/.pgpass (for `server`, one of the host list's);
    None when none applies."""
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
    return pgpass_lookup(text, dsn, user, server)


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
        history: LineageFile | None = None,
        survey_every: float = SURVEY_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.dsn = dsn
        env = dict(os.environ) if env is None else env
        self.user = dsn.user or env.get("PGUSER") or getpass.getuser()
        self._passwords = {
            server: read_password(password_file, dsn, self.user, env, server)
            for server in dsn.servers
        }
        self._ssl_context = tls_context(dsn)
        self._application_name = application_name
        self._idle: list[Any] = []
        self._server: tuple[str, int] | None = None  # the last one used
        self._history = history
        self._known: Lineage | None = None  # the highest lineage used (or recorded)
        self._loaded = False
        self._surveyed: float | None = None
        self._survey_every = survey_every
        self._clock = clock
        self._survey_lock = threading.Lock()
        self._last_survey: tuple[float, str | None] | None = None  # (ended, error)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_OPEN)

    def describe(self) -> str:
        return self.dsn.describe()

    @property
    def history(self) -> LineageFile | None:
        """The host's record of the lineage it used (None: memory only)."""
        return self._history

    # -- connections ----------------------------------------------------------

    def open(self) -> Any:
        """A new connection (pg8000.native.Connection) to the server the
        state lives on; StateError if no listed server may be used.

        The fence (core/db_lineage.py): a server is used only if it accepts
        writes, belongs to the cluster used before and is not on a lower
        timeline than the one used before. The server last used is tried
        first, checked in the round trip that checks it accepts writes; the
        whole host list is looked at (a survey) at the first session, when
        that server fails or is refused, and every `survey_every` seconds,
        so that a higher timeline elsewhere is found and an old primary
        that came back is seen and logged."""
        driver = self._driver()
        self._remembered()
        with self._lock:
            due = self._surveyed is None or self._clock() - self._surveyed >= self._survey_every
        if not due:
            conn = self._try_current(driver)
            if conn is not None:
                return conn
        return self._survey_once(driver)

    def _try_current(self, driver: Any) -> Any:
        """A connection to the server in use if it still may be used, else None."""
        with self._lock:
            server, known = self._server, self._known
        if server is None:
            return None
        try:
            conn, lineage = self._open_one(driver, server)
        except (TimeoutError, driver.Error, OSError, ValueError, _ReadOnly):
            return None  # gone, demoted or not what it was: look at the whole list
        if refusal(known, lineage) is None:
            return self._use(server, lineage, conn)
        with contextlib.suppress(Exception):
            conn.close()
        return None

    def _survey_once(self, driver: Any) -> Any:
        """One survey at a time: while the database is down every request
        needs one, and each would open a connection to every listed server.
        A request that waited for another's survey takes its outcome (its
        server, or its error) instead of surveying again."""
        asked = self._clock()
        with self._survey_lock:
            last = self._last_survey
            if last is not None and last[0] >= asked:
                if last[1] is not None:
                    raise StateError(last[1])
                conn = self._try_current(driver)
                if conn is not None:
                    return conn
            try:
                conn = self._survey(driver)
            except StateError as exc:
                self._last_survey = (self._clock(), str(exc))
                raise
            self._last_survey = (self._clock(), None)
            return conn

    def survey(self) -> list[dict[str, Any]]:
        """Every listed server as it is now, for `ced db accept`: where,
        whether it accepts writes, its lineage, or why it cannot be used.
        Ignores what was used before (that is what accept replaces)."""
        driver = self._driver()
        found = []
        for server, outcome in zip(self.dsn.servers, self._reach_all(driver), strict=True):
            entry: dict[str, Any] = {"server": where(*server)}
            if isinstance(outcome, str):
                entry.update(writable=False, error=outcome)
            else:
                conn, lineage = outcome
                with contextlib.suppress(Exception):
                    conn.close()
                entry.update(writable=True, system=lineage.system, timeline=lineage.timeline)
            found.append(entry)
        return found

    def _survey(self, driver: Any) -> Any:
        with self._lock:
            self._surveyed = self._clock()
            known = self._known
        outcomes = self._reach_all(driver)
        reasons: dict[int, str] = {i: o for i, o in enumerate(outcomes) if isinstance(o, str)}
        writable = [i for i, o in enumerate(outcomes) if not isinstance(o, str)]
        lineages = [outcomes[i][1] for i in writable]
        choice = choose(known, lineages)
        for position, why in choice.refused:
            index = writable[position]
            reasons[index] = why
            log.event(
                "state-server-refused",
                log.WARNING,
                SERVER=where(*self.dsn.servers[index]),
                SYSTEM=lineages[position].system,
                TIMELINE=lineages[position].timeline,
                USED=known.timeline if known is not None else "",
                REASON=why,
            )
        chosen = writable[choice.chosen] if choice.chosen is not None else None
        for index in writable:
            if index != chosen:
                with contextlib.suppress(Exception):
                    outcomes[index][0].close()
        if chosen is not None:
            conn, lineage = outcomes[chosen]
            return self._use(self.dsn.servers[chosen], lineage, conn)
        if len(self.dsn.servers) == 1 and choice.reason is None:
            raise StateError(f"cannot connect to PostgreSQL at {self.describe()}: {reasons[0]}")
        tried = "; ".join(
            f"{where(*server)}: {reasons[i]}" for i, server in enumerate(self.dsn.servers)
        )
        why = choice.reason or "no server of the host list accepts writes and may be used"
        raise StateError(
            f"cannot connect to PostgreSQL (database {self.dsn.database}): {why} ({tried})"
        )

    def _reach_all(self, driver: Any) -> list[Any]:
        """Connect to every listed server at once (a dead one costs at most
        connect_timeout, not that times the list): per server, (connection,
        lineage) when it accepts writes, else why not."""
        servers = self.dsn.servers

        def reach(server: tuple[str, int]) -> Any:
            try:
                return self._open_one(driver, server)
            except (TimeoutError, driver.Error, OSError) as exc:
                return _reason(exc)
            except ValueError as exc:
                return f"its history could not be read ({exc})"
            except _ReadOnly:
                return "a read-only server (a standby), not the primary"

        if len(servers) == 1:
            return [reach(servers[0])]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(servers), thread_name_prefix="pg-survey") as pool:
            return list(pool.map(reach, servers))

    def _driver(self) -> Any:
        try:
            import pg8000.native  # only here: the PostgreSQL backend is configured
        except ImportError:
            raise ConfigError(
                "state_backend names a PostgreSQL database but its driver, pg8000, is not "
                "installed (the pyz carries it; for a package install: "
                "pip install 'ctrl-exec[postgresql]')"
            ) from None
        return pg8000.native

    def _remembered(self) -> Lineage | None:
        """What this process used before: in memory, else the host's record."""
        with self._lock:
            if self._loaded:
                return self._known
        recorded = self._history.load() if self._history is not None else None
        with self._lock:
            if not self._loaded:
                self._known, self._loaded = recorded, True
            return self._known

    def _use(self, server: tuple[str, int], lineage: Lineage, conn: Any) -> Any:
        """Note the server used and its lineage: logged when either moved
        (a followed failover), recorded on the host when it moved forward;
        `conn`, or StateError (and `conn` closed) when the record cannot be
        written."""
        with self._lock:
            before = self._known
            # Checked again under the lock: another thread may have moved
            # to a higher timeline since this connection was judged.
            why = refusal(before, lineage)
            if why is None:
                previous, self._server = self._server, server
                if before is None or lineage.timeline > before.timeline:
                    self._known = lineage
        if why is not None:
            with contextlib.suppress(Exception):
                conn.close()
            raise StateError(f"cannot use PostgreSQL at {where(*server)}: {why}")
        moved = previous is not None and previous != server
        if moved or (before is not None and lineage != before):
            log.event(
                "state-server",
                log.WARNING,
                SERVER=where(*server),
                PREVIOUS=where(*previous) if previous is not None else "",
                TIMELINE=lineage.timeline,
            )
        if self._history is not None and lineage != before:
            try:
                self._history.advance(lineage, where(*server))
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.close()
                raise
        return conn

    def _open_one(self, driver: Any, server: tuple[str, int]) -> tuple[Any, Lineage]:
        """A connection to `server` if it accepts writes, with its lineage."""
        host, port = server
        kwargs: dict[str, Any] = {
            "user": self.user,
            "database": self.dsn.database,
            "timeout": self.dsn.connect_timeout,
            "application_name": self._application_name,
            # False: no TLS at all (the driver would otherwise try it
            # unverified, which is neither disable nor require).
            "ssl_context": self._ssl_context if self._ssl_context is not None else False,
        }
        password = self._passwords.get(server)
        if password is not None:
            kwargs["password"] = password
        if host.startswith("/"):
            kwargs["unix_sock"] = where(host, port)
        else:
            kwargs["host"] = host
            kwargs["port"] = port
        conn = driver.Connection(**kwargs)
        try:
            conn.run(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            # What libpq's target_session_attrs=read-write checks (after a
            # failover the old primary may come back as a standby), and the
            # server's place in its cluster's history, in one round trip.
            read_only, walfile, system = conn.run(LINEAGE_QUERY)[0]
            if read_only != "off":
                raise _ReadOnly()
            lineage = lineage_from_row(system, walfile)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        # The connect timeout also bounds every later read of the socket;
        # a statement may legitimately wait up to the server's statement
        # timeout (a blocking advisory lock), so reads wait a little longer
        # than that before the connection is given up as dead. An idle
        # connection (a run holding its locks) reads nothing and never times out.
        with contextlib.suppress(OSError, AttributeError):
            conn._usock.settimeout(STATEMENT_TIMEOUT_MS / 1000 + READ_MARGIN)
        return conn, lineage

    def dedicated(self) -> Any:
        """A connection of its own (close it to release what it holds)."""
        if not self._slots.acquire(timeout=ACQUIRE_WAIT):
            raise StateError(f"too many PostgreSQL connections open ({MAX_OPEN})")
        try:
            return _Counted(self.open(), self._slots)
        except BaseException:
            self._slots.release()
            raise

    def _take_idle(self) -> Any:
        """An idle connection the server has not closed meanwhile, or None.
        A server that stopped or failed over has sent its sessions an error
        and closed them: every idle connection has something to read, and
        is dropped here rather than failing the next request."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or not conn.closed_by_server():
                return conn
            conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection for short statements."""
        conn = self._take_idle()
        if conn is None:
            conn = self.dedicated()
        broken = False
        try:
            yield conn
        except Exception:
            # A refused request (an unknown agent) leaves a usable
            # connection; a dead or confused one is dropped.
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

    def closed_by_server(self) -> bool:
        """Whether an idle connection has anything to read (an idle session
        is sent nothing but its end: an error, a close, an EOF)."""
        sock = getattr(self._conn, "_usock", None)
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

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


class _ReadOnly(Exception):
    """The server accepts no writes (a standby)."""


def tls_context(dsn: Dsn) -> ssl.SSLContext | None:
    """The TLS context of `sslmode` (None: disable). `verify-full` checks the
    certificate chain and the host name against `sslrootcert` when given,
    else the system CA store. A CA file that cannot be used is a
    configuration error (exit 78), found when the backend is opened."""
    if dsn.sslmode == "disable":
        return None
    if dsn.sslmode == "require":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if dsn.sslrootcert is None:
        return ssl.create_default_context()
    try:
        fd = os.open(dsn.sslrootcert, os.O_RDONLY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(f"sslrootcert {dsn.sslrootcert} is not a regular file")
            pem = handle.read(MAX_CA_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read sslrootcert {dsn.sslrootcert}: {exc.strerror}") from None
    if len(pem) > MAX_CA_BYTES:
        raise ConfigError(f"sslrootcert {dsn.sslrootcert} is larger than {MAX_CA_BYTES} bytes")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and name
    try:
        context.load_verify_locations(cadata=pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"sslrootcert {dsn.sslrootcert} holds no PEM CA certificate") from None
    return context


def _reason(exc: BaseException) -> str:
    """A driver error as one line: the server's message and SQLSTATE when it
    sent one, else the exception text and what caused it (a refused or
    timed-out connection, a certificate that failed verification); no
    credentials in any of them."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], dict):
        fields = args[0]
        message = str(fields.get("M", "error"))
        code = fields.get("C")
        return f"{message} ({code})" if code else message
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the server's certificate was refused: {exc.verify_message}"[:300]
    cause = exc.__cause__  # the driver wraps socket errors: say what happened
    if isinstance(cause, OSError):
        text = cause.strerror or str(cause) or type(cause).__name__
    else:
        text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
