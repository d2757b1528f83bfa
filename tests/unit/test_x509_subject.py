"""core.x509's subject text: what self-check and pairing-status show, from
certificates built by `cryptography` (an independent encoder)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ctrlexec.core.x509 import MAX_SUBJECT_TEXT, facts_from_pem
from tests.support.tables import each_case

KEY = ec.generate_private_key(ec.SECP256R1())


def cert_with(name: x509.Name) -> str:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(KEY.public_key())
        .serial_number(0x1234)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def attribute(oid, value: str) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName([x509.NameAttribute(oid, value)])


SUBJECT_TEXT_CASES = [
    ([attribute(NameOID.COMMON_NAME, "web-01")], "CN=web-01", "web-01"),
    (
        [
            attribute(NameOID.COUNTRY_NAME, "GB"),
            attribute(NameOID.ORGANIZATION_NAME, "Example Ltd"),
            attribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
            attribute(NameOID.COMMON_NAME, "web-01"),
        ],
        "C=GB, O=Example Ltd, OU=ops, CN=web-01",
        "web-01",
    ),
    ([attribute(NameOID.ORGANIZATION_NAME, "no cn")], "O=no cn", ""),
    ([attribute(NameOID.COMMON_NAME, "a,b+c=d\\e")], "CN=a\\,b\\+c\\=d\\\\e", "a,b+c=d\\e"),
    ([attribute(NameOID.COMMON_NAME, "bell\x07\x1b[2J")], "CN=bell\\07\\1b[2J", None),
    ([attribute(NameOID.COMMON_NAME, "héllo")], "CN=héllo", "héllo"),
    ([attribute(NameOID.DOMAIN_COMPONENT, "example")], "DC=example", ""),
    (
        [attribute(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), "x")],
        "1.3.6.1.4.1.99999.1=x",
        "",
    ),
    (
        [
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "two"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "in one"),
                ]
            )
        ],
        None,
        "two",
    ),
]


def test_subject_text():
    def check(rdns, text, cn):
        facts = facts_from_pem(cert_with(x509.Name(rdns)))
        if text is not None:
            assert facts.subject == text
        else:
            assert set(facts.subject.split("+")) == {"CN=two", "OU=in one"}
        if cn is not None:
            assert facts.subject_cn == cn

    each_case(SUBJECT_TEXT_CASES, check)


def test_empty_subject_and_a_long_one():
    assert facts_from_pem(cert_with(x509.Name([]))).subject == ""
    many = [attribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "u" * 60) for _ in range(40)]
    text = facts_from_pem(cert_with(x509.Name(many))).subject
    assert len(text) == MAX_SUBJECT_TEXT and text.endswith("...")
