import hashlib

from ctrlexec.core import names
from ctrlexec.core.digest import pairing_code, schema_version_fallback
from ctrlexec.core.timefmt import iso_utc, openssl_notafter, parse_openssl_notafter
from tests.support.tables import each_case

DISPATCHER_ID_CASES = [
    ("perl-ref-dispatcher", "x", "perl-ref-dispatcher"),
    (None, "vm.example.org", "vm.example.org"),
    ("", "host name!", "host-name-"),
    (None, "--.x", "x"),
    (None, "", "dispatcher"),
    (None, "a" * 80, "a" * 64),
    ("_..", "h", "dispatcher"),
]


def test_dispatcher_id():
    def check(configured, hostname, expected):
        assert names.derive_dispatcher_id(configured, hostname) == expected

    each_case(DISPATCHER_ID_CASES, check)


def test_pairing_code_matches_the_formula():
    csr = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
    digest = hashlib.sha256(csr.encode()).digest()
    assert pairing_code(csr) == f"{int.from_bytes(digest[:4], 'big') % 1000000:06d}"
    assert len(pairing_code("")) == 6


def test_schema_version_fallback_is_canonical():
    assert schema_version_fallback({"b": 1, "a": [1, 2]}) == schema_version_fallback(
        {"a": [1, 2], "b": 1}
    )
    assert (
        schema_version_fallback({}).startswith("sha256:") and len(schema_version_fallback({})) == 19
    )


def test_notafter_text_round_trips():
    assert openssl_notafter(1798113600) == "Dec 24 12:00:00 2026 GMT"
    assert openssl_notafter(1799150400) == "Jan  5 12:00:00 2027 GMT"
    assert parse_openssl_notafter("Feb 24 12:58:55 2029 GMT") is not None
    assert parse_openssl_notafter(openssl_notafter(1799150400)) == 1799150400
    assert parse_openssl_notafter("unknown") is None
    assert iso_utc(0) == "1970-01-01T00:00:00Z"


SCRIPT_NAMES_CASES = [
    ("echo-args", True),
    ("a_b", True),
    ("x y", False),
    ("../x", False),
    ("", False),
    ("caf\u00e9", False),
]


def test_script_names():
    def check(name, ok):
        assert names.is_script_name(name) is ok

    each_case(SCRIPT_NAMES_CASES, check)
