"""A real PostgreSQL server for the tests: initdb in a temporary directory as
an unprivileged user, listening on a Unix socket in that directory and on
127.0.0.1 with a free port, stopped and removed at the end.

Debian's postgresql package provides the binaries (`.ci/run` installs it);
without them, or without root to switch to the `postgres` user, the tests
that need the server skip with the reason (never a silent pass).

Login: role `ctrlexec` with a password, SCRAM over TCP (what a deployment
uses); the superuser `postgres` over the socket (trust) to create and drop
databases.

For the failure tests, a server of their own: `enable_tls` (a certificate
from a throwaway CA, `ssl = on`), `standby` (a streaming replica made with
`pg_basebackup -R`), `halt`, `launch` and `promote`.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROLE = "ctrlexec"
OS_USER = "postgres"


def find_bindir() -> Path | None:
    override = os.environ.get("CTRL_EXEC_PG_BINDIR")
    candidates = [override] if override else sorted(glob.glob("/usr/lib/postgresql/*/bin"))[::-1]
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    return None


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None."""
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql; .ci/run does)"
    if os.geteuid() != 0:
        return "starting PostgreSQL needs root (to run it as the postgres user)"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"no '{OS_USER}' system user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        user = pwd.getpwnam(OS_USER)
        return subprocess.run(
            list(argv),
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=check,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            timeout=120,
        )

    def _client(self, program: str, *argv: str) -> subprocess.CompletedProcess:
        """A client program of the server's binaries, connected as the
        superuser over this server's Unix socket."""
        where = ("-h", str(self.socket_dir), "-p", str(self.port), "-U", OS_USER)
        return self._as_postgres(str(self.bindir / program), *where, *argv)

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = self._client(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql
        )
        return done.stdout.strip()

    def timeline(self) -> int:
        """The timeline this primary writes on (a promotion starts a new one)."""
        walfile = self.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        return int(walfile[:8], 16)

    def _own(self, path: Path, data: bytes, mode: int) -> None:
        user = pwd.getpwnam(OS_USER)
        path.write_bytes(data)
        os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(path, mode)

    def _configure(self) -> None:
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )

    def launch(self) -> None:
        """pg_ctl start on the data directory as it is; returns once it accepts."""
        self._as_postgres(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def halt(self, mode: str = "fast") -> None:
        """pg_ctl stop, keeping the data (`fast`: sessions are told and closed)."""
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop")

    def promote(self) -> None:
        """A standby becomes a primary; returns once new sessions can write
        (pg_ctl's wait ends when pg_control says so, a moment before)."""
        from tests.support.agentproc import wait_for

        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "promote")
        wait_for(lambda: self.psql("SELECT pg_is_in_recovery()") == "f", 30, "the promotion")

    def enable_tls(self, cert_pem: bytes, key_pem: bytes) -> None:
        """ssl = on with this certificate and key (a reload: no restart)."""
        self._own(self.data / "server.crt", cert_pem, 0o644)
        self._own(self.data / "server.key", key_pem, 0o600)
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "reload")
        from tests.support.agentproc import wait_for

        wait = "SELECT 1 FROM pg_settings WHERE name = 'ssl' AND setting = 'on'"
        wait_for(lambda: self.psql(wait) == "1", 30, "PostgreSQL's ssl = on")

    def standby(self) -> PgServer:
        """A hot standby of this server, streaming from it over its Unix
        socket, in a directory and on a port of its own, started."""
        user = pwd.getpwnam(OS_USER)
        root = Path(tempfile.mkdtemp(prefix="ctrl-exec-pg-standby-"))
        replica = PgServer(self.bindir, root, _free_port(), self.password)
        for path in (root, replica.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o711)
        os.chmod(replica.socket_dir, 0o755)
        try:
            self._client(
                "pg_basebackup", "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast"
            )
            replica._configure()  # its own port and socket (later lines win)
            replica.launch()
        except BaseException:
            replica.stop()
            raise
        return replica

    def start(self) -> None:
        user = pwd.getpwnam(OS_USER)
        for path in (self.root, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o711)
        os.chmod(self.socket_dir, 0o755)  # the tests connect to the socket as root
        self._as_postgres(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            OS_USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self._configure()
        self.launch()
        self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")

    def stop(self) -> None:
        if self.data.exists():
            self._as_postgres(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> None:
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def password_file(self, directory: Path) -> Path:
        path = directory / "pg-password"
        path.write_text(self.password + "\n")
        path.chmod(0o600)
        return path


def start_server() -> PgServer:
    bindir = find_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="ctrl-exec-pg-"))
    server = PgServer(bindir, root, _free_port(), secrets.token_hex(16))
    try:
        server.start()
    except BaseException:
        log = root / "server.log"
        detail = log.read_text()[-2000:] if log.exists() else ""
        server.stop()
        if detail:
            raise RuntimeError(f"PostgreSQL did not start:\n{detail}") from None
        raise
    return server
