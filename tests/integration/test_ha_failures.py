"""What docs/high-availability.md says about failures, on real PostgreSQL
servers (Debian's binaries, loopback and Unix sockets under the test's
temporary directories) and real `dispatcher serve` processes from the pyz:

- the maintenance node is killed (SIGKILL): the other node takes the lease
  within one fleet round and runs the pass (an expired run record purged);
- the database fails over (a streaming standby made with `pg_basebackup -R`
  is promoted): while no server accepts writes the API answers 500
  (`api-error`) and `ced` exits 1 with the reason, never the password;
  after the promotion the same dispatcher serves again without a restart,
  with the registered agent and the finished run's record, and a run that
  was in progress keeps its script from running twice (the holder record
  survives, the agent is asked);
- TLS to the database: `sslmode=require` encrypts (pg_stat_ssl), and
  `verify-full` with the operator's CA (`sslrootcert`) connects, while a
  wrong CA or a wrong host name is refused (exit 1) and an unusable CA file
  stops the command (exit 78)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import secrets
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import agentproc, apiproc, pgserver, testpki
from tests.support.agentproc import in_thread, wait_for

MAINTAIN = "ACTION=maintain AGENTS="
SCRIPTS = dict(agentproc.APPENDIX_C_SCRIPTS, block=agentproc.BLOCK)
TAKEN = "ACTION=maintain LEASE=taken"


def node(pyz_for, root: Path, session_ca, url: str, password: Path, name: str):
    ctl = pyz_for(root)
    issued = testpki.install_dispatcher(session_ca, ctl.root)
    config = {
        "state_backend": url,
        "state_password_file": str(password),
        "dispatcher_id": name,
        "api_auth_default": "allow",
        "fleet_sync_interval": 1,  # the lease is retried every second
    }
    apiproc.write_config(ctl.root, **config)
    return SimpleNamespace(ctl=ctl, issued=issued, config=config, api=None)


def serve(one) -> apiproc.ApiProcess:
    one.api = apiproc.ApiProcess(one.ctl, **one.config).start()
    apiproc.write_config(one.ctl.root, **one.config)  # for `ced` under the same root
    return one.api


def stop(*nodes) -> None:
    for one in nodes:
        if one.api is not None and one.api.proc.poll() is None:
            one.api.stop()


def own_server():
    """A PostgreSQL server of the test's own (it is stopped or reconfigured)."""
    reason = pgserver.unavailable_reason()
    if reason and os.environ.get("CTRL_EXEC_REQUIRE_POSTGRESQL"):
        pytest.fail(f"PostgreSQL is required here (CTRL_EXEC_REQUIRE_POSTGRESQL): {reason}")
    if reason:
        pytest.skip(f"SKIPPED LOUDLY: PostgreSQL tests cannot run: {reason}")
    return pgserver.start_server()


# -- the maintenance node dies --------------------------------------------------------------


def test_the_other_node_takes_the_maintenance_lease_when_its_holder_is_killed(
    session_ca, pyz_for, tmp_path, pg_server, pg_database
):
    password = pg_server.password_file(tmp_path)
    url = pg_server.url(pg_database)
    nodes = [
        node(pyz_for, tmp_path / name, session_ca, url, password, name)
        for name in ("node-a", "node-b")
    ]
    nodes[0].ctl.run("ced", "db", "migrate")
    try:
        for one in nodes:
            serve(one)
        leader = wait_for(
            lambda: [one for one in nodes if MAINTAIN in one.ctl.log_text()], 60, "a first pass"
        )[0]
        other = nodes[1] if leader is nodes[0] else nodes[0]
        wait_for(lambda: "SKIPPED=" in other.ctl.log_text(), 30, "the other node skipping")
        # A run record past its time to live: only a maintenance pass purges
        # it, and the holder's next one is hours away.
        expired = secrets.token_hex(8)
        pg_server.psql(
            "INSERT INTO ctrl_exec_runs (reqid, record, written) VALUES "
            f"('{expired}', '{{\"reqid\":\"{expired}\"}}', 1000)",
            pg_database,
        )
        leader.api.kill()  # SIGKILL: its lease ends with its database session
        log = wait_for(
            lambda: (text := other.ctl.log_text()).count(MAINTAIN) and text, 30, "the takeover"
        )
        assert log.index(TAKEN) < log.index(MAINTAIN), log
        assert "ACTION=run-store-purge REMOVED=1" in log
        left = f"SELECT count(*) FROM ctrl_exec_runs WHERE reqid = '{expired}'"
        assert pg_server.psql(left, pg_database) == "0"
        assert leader.ctl.log_text().count(MAINTAIN) == 1
    finally:
        stop(*nodes)


# -- the database fails over ----------------------------------------------------------------


def test_a_dispatcher_follows_a_failover_to_the_promoted_standby(session_ca, pyz_for, tmp_path):
    primary = own_server()
    standby = None
    dispatcher = None
    agent = None
    try:
        primary.create_database("fleet")
        standby = primary.standby()
        password = primary.password_file(tmp_path)
        # What an operator writes: the primary and its standby, in order;
        # the dispatcher uses the one that accepts writes.
        url = (
            f"postgresql://{pgserver.ROLE}@127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
            "/fleet?connect_timeout=5"
        )
        dispatcher = node(pyz_for, tmp_path / "node", session_ca, url, password, "node-a")
        dispatcher.ctl.run("ced", "db", "migrate")
        runner = pyz_for(tmp_path / "agent-01")
        site = agentproc.install_site(session_ca, runner.root, dispatcher.issued, scripts=SCRIPTS)
        agent = agentproc.AgentProcess(runner, site).start()
        record = testpki.register_agent(
            tmp_path / "scratch", "agent-01", site.port, site.issued, dispatcher.issued
        )
        from ctrlexec.state import open_state

        settings = SimpleNamespace(
            state_backend=url, state_password_file=str(password), registry_dir="/nonexistent"
        )
        open_state(settings, tmp_path, tmp_path, tmp_path).registry.put(record)
        serve(dispatcher)
        client = dispatcher.api.client()
        ran = client.post("/run", {"hosts": ["agent-01"], "script": "echo-args", "args": ["one"]})
        assert ran.status == 200 and ran.json["results"][0]["exit"] == 0, ran.json
        reqid = ran.json["reqid"]
        # Asynchronous replication promises nothing for the last commits:
        # the failover starts once the standby has replayed the run's record.
        replayed = f"SELECT count(*) FROM ctrl_exec_runs WHERE reqid = '{reqid}'"
        wait_for(lambda: standby.psql(replayed, "fleet") == "1", 30, "replication")
        # A run in progress across the failover: its lock goes with the old
        # primary's session, its holder record is on the standby.
        gate = tmp_path / "gate"
        gate.mkdir()
        block = {"hosts": ["agent-01"], "script": "block", "args": [str(gate)]}
        blocked = in_thread(lambda: client.post("/run", block))
        wait_for((gate / "started").exists, 30, "block started")
        holder = "SELECT count(*) FROM ctrl_exec_lock_holders WHERE script = 'block'"
        wait_for(lambda: standby.psql(holder, "fleet") == "1", 30, "the holder replicated")

        primary.halt("fast")
        down = client.get(f"/status/{reqid}")
        assert down.status == 500, down.json
        refused = client.post("/run", {"hosts": ["agent-01"], "script": "echo-args"})
        assert refused.status == 500, refused.json
        cli = dispatcher.ctl.run("ced", "status", reqid, check=False)
        assert cli.returncode == 1, cli.stderr
        assert "cannot connect to PostgreSQL" in cli.stderr
        assert f"127.0.0.1:{primary.port}: Connection refused" in cli.stderr
        assert f"127.0.0.1:{standby.port}: a read-only server (a standby)" in cli.stderr
        log = dispatcher.ctl.log_text()
        assert re.search(r"ACTION=api-error .*cannot connect to PostgreSQL", log), log[-2000:]
        secret = password.read_text().strip()
        assert secret not in cli.stderr + cli.stdout + log

        standby.promote()
        # The first request after the promotion is served: sessions to the
        # old primary were dropped, new ones find the new primary.
        status = client.get(f"/status/{reqid}")
        assert status.status == 200, status.json
        assert status.json["results"][0]["stdout"].strip() == "one"
        again = client.post("/run", {"hosts": ["agent-01"], "script": "echo-args", "args": ["2"]})
        assert again.status == 200 and again.json["results"][0]["stdout"].strip() == "2"
        listed = json.loads(dispatcher.ctl.run("ced", "list-agents", "--json").stdout)
        assert "agent-01" in json.dumps(listed)
        shown = dispatcher.ctl.run("ced", "status", reqid, "--json")
        assert "one" in shown.stdout
        # The lock is gone with the old primary, the holder record is not:
        # the agent is asked, says the script still runs, and the run is refused.
        refused = client.post("/run", block)
        assert refused.status == 409, refused.json
        assert "RESULT=still-running" in dispatcher.ctl.log_text()
        (gate / "go").touch()
        first = blocked()
        assert first.status == 200 and first.json["results"][0]["stdout"].strip() == "released"
        # It ended: the next run of the script goes ahead.
        after = client.post("/run", block)
        assert after.status == 200 and after.json["results"][0]["exit"] == 0, after.json
        assert "RESULT=ended" in dispatcher.ctl.log_text()
        moved = f"PREVIOUS=127.0.0.1:{primary.port} SERVER=127.0.0.1:{standby.port} TIMELINE=2"
        assert f"ACTION=state-server {moved}" in dispatcher.ctl.log_text()
        # The maintenance lease went with the old primary's session: taken again.
        wait_for(lambda: dispatcher.ctl.log_text().count(TAKEN) == 2, 30, "the lease retaken")
        the_old_primary_comes_back(
            primary, standby, dispatcher, site, url, password, reqid, tmp_path / "gate-after"
        )
    finally:
        if dispatcher is not None:
            stop(dispatcher)
        if agent is not None:
            agent.stop()
        if standby is not None:
            standby.stop()
        primary.stop()


# The old primary's ctrl-exec tables, as one digest: unchanged means no
# session wrote to it.
TABLES = (
    "ctrl_exec_agents",
    "ctrl_exec_runs",
    "ctrl_exec_lock_holders",
    "ctrl_exec_pairing",
    "ctrl_exec_dispatchers",
    "ctrl_exec_revoked",
)
ROWS = " UNION ALL ".join(f"SELECT '{table}' || t::text AS x FROM {table} t" for table in TABLES)
DIGEST = f"SELECT md5(string_agg(x, '|' ORDER BY x)) FROM ({ROWS}) rows"


def the_old_primary_comes_back(primary, standby, dispatcher, site, url, password, reqid, gate):
    """After the failover, the old primary is started again as it was
    (writable, on the timeline before the promotion): the dispatcher, a new
    `ced` and a process with no record keep to the promoted server and log
    the refusal; with the promoted server down, requests fail closed
    instead of going to the old primary; `ced db accept` is the explicit
    way to take it."""
    from ctrlexec.state.db import Database
    from ctrlexec.state.dsn import parse_dsn

    ctl = dispatcher.ctl
    client = dispatcher.api.client()
    secret = password.read_text().strip()
    # The dispatcher's role is an ordinary one; the fence reads what it may.
    assert standby.psql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{pgserver.ROLE}'") == "f"
    system = standby.psql("SELECT system_identifier FROM pg_control_system()")
    record = next(ctl.root.rglob("postgresql-lineage.json"))
    assert record.stat().st_mode & 0o777 == 0o640
    entry = json.loads(record.read_text())["databases"]["fleet"]
    assert (entry["system"], entry["timeline"]) == (system, 2), entry

    primary.launch()  # an operator's mistake: the old primary, writable again
    assert primary.psql("SELECT pg_is_in_recovery()") == "f"
    assert (primary.timeline(), standby.timeline()) == (1, 2)
    untouched = primary.psql(DIGEST, "fleet")

    # A process with no memory at all: the highest timeline, listed second.
    fresh = Database(parse_dsn(url, {}), str(password), env={})
    try:
        assert fresh.run("SELECT inet_server_port()")[0][0] == standby.port
    finally:
        fresh.close()

    # The dispatcher keeps to the promoted server: runs, status, locks. It
    # looks at the whole host list again within fleet_sync_interval (1 s).
    def served_and_seen():
        ran = client.post("/run", {"hosts": ["agent-01"], "script": "echo-args", "args": ["3"]})
        assert ran.status == 200 and ran.json["results"][0]["exit"] == 0, ran.json
        return "ACTION=state-server-refused" in ctl.log_text() and ran.json["reqid"]

    latest = wait_for(served_and_seen, 30, "the old primary seen and refused")
    line = next(x for x in ctl.log_text().splitlines() if "ACTION=state-server-refused" in x)
    assert f"SERVER=127.0.0.1:{primary.port}" in line and f"SYSTEM={system}" in line, line
    assert "TIMELINE=1 USED=2" in line and "behind timeline 2" in line, line
    assert client.get(f"/status/{latest}").status == 200
    assert standby.psql(f"SELECT count(*) FROM ctrl_exec_runs WHERE reqid = '{latest}'", "fleet")
    gate.mkdir()
    block = {"hosts": ["agent-01"], "script": "block", "args": [str(gate)]}
    blocked = in_thread(lambda: client.post("/run", block))
    wait_for((gate / "started").exists, 30, "block started")
    assert client.post("/run", block).status == 409  # its lock is on the promoted server
    (gate / "go").touch()
    assert blocked().status == 200

    # A `ced` started now: its record says timeline 2; it writes to the promoted server.
    refusals = ctl.log_text().count("ACTION=state-server-refused")
    edited = ctl.run("ced", "edit-agent", "agent-01", "--agent-port", str(site.port))
    assert edited.returncode == 0, edited.stderr
    assert ctl.log_text().count("ACTION=state-server-refused") > refusals
    assert primary.psql(DIGEST, "fleet") == untouched

    # The promoted server stops: nothing goes to the old primary; requests
    # fail with the reason (the server and both timelines).
    standby.halt("fast")
    down = client.get(f"/status/{reqid}")
    assert down.status == 500, down.json
    refused = client.post("/run", {"hosts": ["agent-01"], "script": "echo-args"})
    assert refused.status == 500, refused.json
    cli = ctl.run("ced", "status", reqid, check=False)
    assert cli.returncode == 1, cli.stdout
    assert (
        f"127.0.0.1:{primary.port}: writable on timeline 1, behind timeline 2 used before"
        in cli.stderr
    ), cli.stderr
    assert f"127.0.0.1:{standby.port}: Connection refused" in cli.stderr
    log = ctl.log_text()
    assert re.search(r"ACTION=api-error .*behind timeline 2", log), log[-2000:]
    assert primary.psql(DIGEST, "fleet") == untouched
    assert secret not in cli.stderr + cli.stdout + log

    # The operator decides the old primary is the database now (here the
    # same cluster; a rebuilt one is another system identifier).
    accepted = ctl.run("ced", "db", "accept", "--json")
    assert accepted.returncode == 0, accepted.stderr
    result = json.loads(accepted.stdout)
    assert (result["server"], result["timeline"]) == (f"127.0.0.1:{primary.port}", 1)
    assert result["previous"] == {"system": system, "timeline": 2}
    assert "ACTION=state-server-accepted" in ctl.log_text()
    shown = ctl.run("ced", "status", reqid, "--json")
    assert shown.returncode == 0 and "one" in shown.stdout, shown.stderr
    # The running dispatcher keeps what it used in memory until restarted.
    assert client.get(f"/status/{reqid}").status == 500


# -- TLS to the database --------------------------------------------------------------------


def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(ca_key, ca_cert) -> tuple[bytes, bytes]:
    """A certificate for 127.0.0.1 only (so `localhost` is the wrong name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db.test")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _pem(path: Path, cert) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_tls_to_the_database(session_ca, pyz_for, tmp_path):
    from ctrlexec.state.db import Database
    from ctrlexec.state.dsn import parse_dsn

    server = own_server()
    dispatcher = None
    try:
        ca_key, ca_cert = _ca("throwaway database CA")
        server.enable_tls(*_server_cert(ca_key, ca_cert))
        server.create_database("tls")
        password = server.password_file(tmp_path)
        right = _pem(tmp_path / "db-ca.pem", ca_cert)
        wrong = _pem(tmp_path / "other-ca.pem", _ca("another CA")[1])
        base = f"postgresql://{pgserver.ROLE}@127.0.0.1:{server.port}/tls"

        def session_ssl(url: str) -> bool:
            """Whether the server sees this backend's own session encrypted."""
            database = Database(parse_dsn(url, {}), str(password), env={})
            try:
                query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                encrypted = database.run(query)[0][0]
                with database.connection() as idle:  # the pooled session, reused
                    assert not idle.closed_by_server()
                return encrypted
            finally:
                database.close()

        assert session_ssl(base + "?sslmode=require") is True
        assert session_ssl(base) is False  # disable (the default) means no TLS at all

        verified = f"{base}?sslmode=verify-full&sslrootcert={right}"
        dispatcher = node(pyz_for, tmp_path / "node", session_ca, verified, password, "node-a")
        ctl = dispatcher.ctl

        def ced_db(url: str):
            apiproc.write_config(ctl.root, **{**dispatcher.config, "state_backend": url})
            return ctl.run("ced", "db", "migrate", check=False)

        done = ced_db(verified)
        assert done.returncode == 0, done.stderr
        refused = ced_db(f"{base}?sslmode=verify-full&sslrootcert={wrong}")
        assert refused.returncode == 1
        assert "TLS: the server's certificate was refused" in refused.stderr, refused.stderr
        misnamed = ced_db(
            f"postgresql://{pgserver.ROLE}@localhost:{server.port}/tls"
            f"?sslmode=verify-full&sslrootcert={right}"
        )
        assert misnamed.returncode == 1
        assert "Hostname mismatch" in misnamed.stderr, misnamed.stderr
        system_store = ced_db(f"{base}?sslmode=verify-full")  # the throwaway CA is not there
        assert system_store.returncode == 1 and "certificate" in system_store.stderr
        missing = ced_db(f"{base}?sslmode=verify-full&sslrootcert={tmp_path}/none.pem")
        assert missing.returncode == 78 and "cannot read sslrootcert" in missing.stderr
        (tmp_path / "junk.pem").write_text("not a certificate\n")
        junk = ced_db(f"{base}?sslmode=verify-full&sslrootcert={tmp_path}/junk.pem")
        assert junk.returncode == 78 and "holds no PEM CA certificate" in junk.stderr
        relative = ced_db(f"{base}?sslmode=verify-full&sslrootcert=db-ca.pem")
        assert relative.returncode == 78 and "absolute path" in relative.stderr
        secret = password.read_text().strip()
        for result in (refused, misnamed, system_store, missing, junk, relative):
            assert secret not in result.stdout + result.stderr

        # A dispatcher on verify-full: every session it opens is encrypted.
        apiproc.write_config(ctl.root, **dispatcher.config)
        serve(dispatcher)
        assert dispatcher.api.client().get("/status/0123456789abcdef").status == 404
        sessions = (
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) "
            "FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            f"WHERE a.usename = '{pgserver.ROLE}' AND a.datname = 'tls'"
        )
        encrypted, plain = server.psql(sessions).split("|")
        assert int(encrypted) >= 1 and int(plain) == 0
    finally:
        if dispatcher is not None:
            stop(dispatcher)
        server.stop()
