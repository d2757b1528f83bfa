"""The private CA and its CSR rules, checked with openssl where it can judge."""

from __future__ import annotations

import re
import stat

import pytest
from cryptography import x509

from ctrlexec.pki import ca, csr, keys
from tests.support import openssl


@pytest.fixture(scope="module")
def ca_paths(tmp_path_factory):
    paths = ca.CAPaths(tmp_path_factory.mktemp("ca"))
    ca.create_ca(paths)
    return paths


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_files_and_extensions(ca_paths):
    assert _mode(ca_paths.key) == 0o600 and _mode(ca_paths.cert) == 0o644
    assert ca_paths.serial.read_text() == "01\n"
    text = openssl.run("x509", "-in", str(ca_paths.cert), "-noout", "-text")
    assert "Subject: CN = ctrl-exec CA" in text
    assert re.search(r"X509v3 Basic Constraints: critical\s+CA:TRUE", text)
    assert re.search(r"X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign", text)
    assert "X509v3 Subject Key Identifier" in text
    assert "ASN1 OID: prime256v1" in text
    assert ca.fingerprint(ca_paths.cert.read_text()) == openssl.fingerprint(ca_paths.cert)


def test_refuses_to_replace_then_force_keeps_a_backup(tmp_path):
    paths = ca.CAPaths(tmp_path)
    ca.create_ca(paths)
    old_key, old_cert = paths.key.read_bytes(), paths.cert.read_bytes()
    with pytest.raises(ca.CAExists):
        ca.create_ca(paths)
    assert paths.key.read_bytes() == old_key
    backups = ca.create_ca(paths, force=True)
    assert sorted(b.read_bytes() for b in backups) == sorted([old_key, old_cert])
    assert all(re.fullmatch(r"ca\.(key|crt)\.bak-\d{8}T\d{6}Z", b.name) for b in backups)
    assert paths.key.read_bytes() != old_key and _mode(paths.key) == 0o600


def test_rsa_ca(tmp_path):
    paths = ca.CAPaths(tmp_path)
    ca.create_ca(paths, key_type="rsa")
    assert "Public-Key: (4096 bit)" in openssl.run(
        "x509", "-in", str(paths.cert), "-noout", "-text"
    )


def test_signed_csr_verifies_strictly_and_serials_are_fresh(ca_paths, tmp_path):
    key = openssl.rsa_key(tmp_path / "agent.pem")
    serials = set()
    for index in range(3):
        issued = ca.sign_csr(ca_paths, openssl.csr(key, "web-01"))
        path = tmp_path / f"agent{index}.crt"
        path.write_text(issued.cert_pem)
        assert openssl.verify(ca_paths.cert, path)
        assert openssl.serial_text(path).lower().lstrip("0") == format(issued.serial, "x")
        text = openssl.run("x509", "-in", str(path), "-noout", "-text", "-dates")
        assert "Subject: CN = web-01" in text and "CA:FALSE" in text
        assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
        days = (issued.not_after - path.stat().st_mtime) / 86400
        assert 824 < days <= 825
        serials.add(issued.serial)
    assert len(serials) == 3
    issued_file = ca_paths.issued.read_text().split()
    for serial in serials:
        assert serial >= 1 << 64
        text = format(serial, "x")
        assert text in issued_file
        # never all decimal digits: 0.12 agents would misread the key
        assert not text.isdigit() and serial.trust_key() == text


def test_dispatcher_identity(ca_paths, tmp_path):
    key_pem, issued = ca.issue_key_and_cert(ca_paths, ca.DISPATCHER_COMMON_NAME, "ec")
    (tmp_path / "d.crt").write_text(issued.cert_pem)
    assert openssl.verify(ca_paths.cert, tmp_path / "d.crt")
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    assert keys.public_der(keys.load_pem(key_pem)) == keys.public_der(cert.public_key())
    assert ca.issued_by(issued.cert_pem, ca.read_ca_pem(ca_paths))
    other = ca.CAPaths(tmp_path / "other")
    ca.create_ca(other)
    assert not ca.issued_by(issued.cert_pem, ca.read_ca_pem(other))


def test_serials_come_from_the_injected_randomness_and_are_never_reused(tmp_path):
    """The CA draws serials from `token_bytes`; a draw that repeats an issued
    serial, or is too small, or reads as all decimal digits, is drawn again."""
    first = bytes.fromhex("f1" * 16)
    draws = iter(
        [
            first,  # the CA's own serial
            first,  # already issued: drawn again
            bytes(16),  # under 2**64: drawn again
            bytes.fromhex("22" * 16),  # hex 1111...: all digits, drawn again
            bytes.fromhex("ab" * 16),
        ]
    )
    paths = ca.CAPaths(tmp_path)
    ca.create_ca(paths, token_bytes=lambda n: next(draws))
    _, issued = ca.issue_key_and_cert(
        paths, ca.DISPATCHER_COMMON_NAME, "ec", token_bytes=lambda n: next(draws)
    )
    assert x509.load_pem_x509_certificate(paths.cert.read_bytes()).serial_number == (
        int.from_bytes(first, "big") >> 1
    )
    assert issued.serial == int.from_bytes(bytes.fromhex("ab" * 16), "big") >> 1
    assert paths.issued.read_text().split() == [
        format(int.from_bytes(first, "big") >> 1, "x"),
        format(issued.serial, "x"),
    ]


@pytest.fixture(scope="module")
def bad_csrs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rsa2048 = openssl.rsa_key(d / "rsa2048.pem")
    good = openssl.csr(rsa2048, "web-01")
    lines = good.splitlines()
    body = "".join(lines[1:-1])
    # flip a character near the end of the base64 (inside the signature)
    broken = body[:-10] + ("A" if body[-10] != "A" else "B") + body[-9:]
    broken_pem = (
        "\n".join(
            [lines[0]] + [broken[i : i + 64] for i in range(0, len(broken), 64)] + [lines[-1]]
        )
        + "\n"
    )
    return {
        "weak rsa": (openssl.csr(openssl.rsa_key(d / "rsa1024.pem", 1024), "web-01"), "weak key"),
        "p521": (
            openssl.csr(openssl.ec_key(d / "p521.pem", "secp521r1"), "web-01"),
            "unsupported EC curve",
        ),
        "ed25519": (
            openssl.run("req", "-new", "-key", str(_ed25519(d)), "-subj", "/CN=web-01"),
            "unsupported key type",
        ),
        "sha1": (openssl.csr(rsa2048, "web-01", "sha1"), "signature hash sha1"),
        "md5": (openssl.csr(rsa2048, "web-01", "md5"), "signature hash md5"),
        "bad signature": (broken_pem, "signature does not verify"),
        "cn mismatch": (openssl.csr(rsa2048, "db-01"), "subject CN 'db-01' is not 'web-01'"),
        "garbage": (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "cannot be parsed",
        ),
        "two blocks": (good + good, "single PEM"),
        "not pem": ("hello", "single PEM"),
        "oversize": (good + " " * 10_240, "larger than 10240 bytes"),
        "good": (good, None),
        "p384": (openssl.csr(openssl.ec_key(d / "p384.pem", "secp384r1"), "web-01"), None),
    }


def _ed25519(directory):
    path = directory / "ed.pem"
    openssl.run("genpkey", "-algorithm", "ed25519", "-out", str(path))
    return path


@pytest.mark.parametrize(
    "case",
    [
        "weak rsa",
        "p521",
        "ed25519",
        "sha1",
        "md5",
        "bad signature",
        "cn mismatch",
        "garbage",
        "two blocks",
        "not pem",
        "oversize",
        "good",
        "p384",
    ],
)
def test_csr_rules(bad_csrs, ca_paths, case):
    pem, problem = bad_csrs[case]
    before = ca_paths.issued.read_text()
    if problem is None:
        assert csr.validate(pem, "web-01").common_name == "web-01"
        return
    with pytest.raises(csr.CsrRejected, match=re.escape(problem)):
        ca.sign_csr(ca_paths, pem, expected_cn="web-01")
    assert ca_paths.issued.read_text() == before  # no serial used on a refusal


def test_our_csrs_pass_our_rules():
    for key_type, described in (("rsa", "RSA 2048"), ("ec", "EC secp256r1")):
        facts = csr.validate(csr.build(keys.generate(key_type), "agent-9"), "agent-9")
        assert (facts.common_name, facts.key_description) == ("agent-9", described)


def test_fingerprint_forms():
    colon = "AB:" * 31 + "CD"
    assert ca.normalise_fingerprint(colon.lower().replace(":", "")) == colon
    assert ca.normalise_fingerprint("sha256:" + colon) == colon
    with pytest.raises(ValueError):
        ca.normalise_fingerprint("AB:CD")


def test_no_ca(tmp_path):
    from ctrlexec.errors import StateError

    with pytest.raises(StateError, match="setup-ca"):
        ca.load_ca(ca.CAPaths(tmp_path))
