"""The state_backend URL and pgpass lookups (state/dsn.py): a table of
inputs and what comes out, and errors that never repeat a secret."""

from __future__ import annotations

import pytest

from ctrlexec.config import schema
from ctrlexec.state.dsn import Dsn, DsnError, parse_dsn, pgpass_lookup
from tests.support.tables import each_case

PARSE_CASES = [
    (
        "postgresql://ce@db.example.net:6432/fleet",
        {},
        Dsn("db.example.net", 6432, "fleet", "ce"),
    ),
    ("postgres://ce@127.0.0.1/fleet", {}, Dsn("127.0.0.1", 5432, "fleet", "ce")),
    (
        "postgresql:///fleet",
        {"PGHOST": "pg1", "PGPORT": "5433", "PGUSER": "u"},
        Dsn("pg1", 5433, "fleet", "u"),
    ),
    (
        "postgresql://ce@/fleet?host=/run/postgresql",
        {},
        Dsn("/run/postgresql", 5432, "fleet", "ce"),
    ),
    ("postgresql:///", {"PGDATABASE": "d"}, Dsn("/run/postgresql", 5432, "d", None)),
    (
        "postgresql://ce@h/fleet?sslmode=verify-full&connect_timeout=3",
        {},
        Dsn("h", 5432, "fleet", "ce", "verify-full", 3),
    ),
]


def test_parse():
    def check(url, env, expected):
        assert parse_dsn(url, env) == expected

    each_case(PARSE_CASES, check)


def test_socket_path_and_description():
    dsn = parse_dsn("postgresql://ce@/fleet?host=/run/postgresql", {})
    assert dsn.unix_socket == "/run/postgresql/.s.PGSQL.5432"
    assert dsn.describe() == "/run/postgresql/.s.PGSQL.5432/fleet"
    assert parse_dsn("postgresql://ce@h:1/f", {}).describe() == "h:1/f"


REFUSED_CASES = [
    ("mysql://h/db", "must be 'files' or a postgresql:// URL"),
    ("postgresql://ce:s3cret-value@h/db", "must not carry a password"),
    ("postgresql://h:99999/db", "malformed"),
    ("postgresql://h/", "names no database"),
    ("postgresql://h/db;drop", "database name"),
    ("postgresql://bad%20user@h/db", "user name"),
    ("postgresql://h/db?sslmode=prefer", "sslmode"),
    ("postgresql://h/db?connect_timeout=0", "connect_timeout"),
    ("postgresql://h/db?password=x", "unknown URL parameter"),
    ("postgresql://h/db?sslmode=require&sslmode=disable", "more than once"),
    ("postgresql://h/db#frag", "fragment"),
]


def test_refused():
    def check(url, message):
        with pytest.raises(DsnError, match=message) as refused:
            parse_dsn(url, {})
        assert "s3cret" not in str(refused.value)
        assert url not in str(refused.value)

    each_case(REFUSED_CASES, check)


def test_schema_check():
    key = next(k for k in schema.DISPATCHER_KEYS if k.name == "state_backend")
    assert key.default == "files" and key.check is not None
    assert key.check("files") is None
    assert key.check("postgresql://ce@h/db") is None
    assert "password" in key.check("postgresql://ce:pw@h/db")


def test_pgpass():
    dsn = parse_dsn("postgresql://ce@db:5432/fleet", {})
    text = "# comment\nother:5432:fleet:ce:wrong\ndb:5432:*:ce:pa\\:ss\\\\word\n*:*:*:*:fallback\n"
    assert pgpass_lookup(text, dsn, "ce") == "pa:ss\\word"
    assert pgpass_lookup(text, dsn, "someone") == "fallback"
    socket = parse_dsn("postgresql://ce@/fleet?host=/tmp", {})
    assert pgpass_lookup("localhost:5432:fleet:ce:local\n", socket, "ce") == "local"
    assert pgpass_lookup("db:1:fleet:ce:x\n", dsn, "ce") is None


def test_a_host_list_is_tried_in_order():
    dsn = parse_dsn(
        "postgresql://ce@pg-a:6432,PG-B,[fd00::5]:7000/fleet?target_session_attrs=read-write",
        {"PGPORT": "5433"},
    )
    assert dsn.servers == (("pg-a", 6432), ("pg-b", 5433), ("fd00::5", 7000))
    assert (dsn.host, dsn.port) == ("pg-a", 6432)
    assert dsn.describe() == "pg-a:6432,pg-b:5433,[fd00::5]:7000/fleet"
    assert dsn.unix_socket is None
    text = "pg-a:6432:fleet:ce:first\npg-b:5433:fleet:ce:second\n"
    assert pgpass_lookup(text, dsn, "ce") == "first"
    assert pgpass_lookup(text, dsn, "ce", ("pg-b", 5433)) == "second"


def test_a_port_without_a_host_keeps_the_port():
    dsn = parse_dsn("postgresql://ce@:6543/fleet", {"PGHOST": "pg1"})
    assert dsn.servers == (("pg1", 6543),)


def test_a_ca_file_for_verify_full():
    dsn = parse_dsn("postgresql://ce@db/fleet?sslmode=verify-full&sslrootcert=/etc/pg/ca.pem", {})
    assert dsn.sslmode == "verify-full" and dsn.sslrootcert == "/etc/pg/ca.pem"
    assert parse_dsn("postgresql://ce@db/fleet", {}).sslrootcert is None


TLS_AND_HOST_LIST_REFUSALS = [
    ("postgresql://h/db?sslmode=require&sslrootcert=/ca.pem", "needs sslmode=verify-full"),
    ("postgresql://h/db?sslrootcert=/ca.pem", "needs sslmode=verify-full"),
    ("postgresql://h/db?sslmode=verify-full&sslrootcert=ca.pem", "absolute path"),
    ("postgresql://h/db?target_session_attrs=any", "can only be read-write"),
    ("postgresql://ce@/db?host=/run/postgresql&sslmode=require", "Unix socket"),
    ("postgresql://a,,b/db", "host list"),
    ("postgresql://a,b:0/db", "port out of range"),
    ("postgresql://" + ",".join("h" * 9) + "/db", "at most 8 hosts"),
    ("postgresql://a,b/db?host=/run/postgresql,/x", "one host or socket directory"),
]


def test_tls_and_host_list_refusals():
    def check(url, message):
        with pytest.raises(DsnError, match=message):
            parse_dsn(url, {})

    each_case(TLS_AND_HOST_LIST_REFUSALS, check)
