"""A test-only private CA, so agent and dispatcher tests need not pair.

It writes the same files pairing writes (agent cert/key/CA, the
trusted-dispatcher map line, the registry record, the dispatcher's
cert/key), with real keys and real certificates from `cryptography`; the
pairing tests prove pairing writes them the same way. One CA per test
session: `SessionCA` is cheap to reuse.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ctrlexec.agent import trust
from ctrlexec.config.paths import Layout, system_layout
from ctrlexec.core.serial import Serial
from ctrlexec.core.timefmt import iso_utc, openssl_notafter
from ctrlexec.dispatcher.registry import Registry, new_record


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes
    serial: int
    not_after: dt.datetime

    @property
    def serial_key(self) -> str:
        return Serial(self.serial).trust_key()


class SessionCA:
    def __init__(self, cn: str = "ctrl-exec CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, cn: str, serial: int | None = None, days: int = 825, backdate_days: int = 0
    ) -> Issued:
        """`backdate_days` moves the whole validity into the past (an expired
        certificate when it exceeds `days`)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC) - dt.timedelta(days=backdate_days)
        serial = serial if serial is not None else x509.random_serial_number()
        not_after = (now + dt.timedelta(days=days)).replace(microsecond=0)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(
            cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), serial, not_after
        )


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the DER, upper-case hex pairs joined by colons (openssl's form)."""
    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def layout_for(root: Path) -> Layout:
    return system_layout(Path(root).resolve())


def install_dispatcher(ca: SessionCA, root: Path, serial: int | None = None) -> Issued:
    """CA cert plus a dispatcher cert/key under `root`, as setup-ca and setup-ctrl-exec do."""
    layout = layout_for(root)
    issued = ca.issue("ctrl-exec-dispatcher", serial=serial)
    _write(layout.ca_cert, ca.cert_pem, 0o644)
    _write(layout.dispatcher_cert, issued.cert_pem, 0o644)
    _write(layout.dispatcher_key, issued.key_pem, 0o600)
    return issued


def install_agent(
    ca: SessionCA,
    root: Path,
    name: str,
    dispatcher: Issued | None = None,
    dispatcher_id: str = "test-dispatcher",
    days: int = 825,
    backdate_days: int = 0,
) -> Issued:
    """Agent cert/key/CA under `root`, trusting `dispatcher` (as pairing leaves them)."""
    layout = layout_for(root)
    issued = ca.issue(name, days=days, backdate_days=backdate_days)
    _write(layout.agent_cert, issued.cert_pem, 0o644)
    _write(layout.agent_key, issued.key_pem, 0o600)
    _write(layout.agent_ca, ca.cert_pem, 0o644)
    if dispatcher is not None:
        layout.trusted_dispatchers.parent.mkdir(parents=True, exist_ok=True)
        trust.add_dispatcher(layout.trusted_dispatchers, dispatcher.serial_key, dispatcher_id)
    return issued


def register_agent(
    dispatcher_root: Path,
    name: str,
    port: int,
    agent: Issued,
    dispatcher: Issued,
    ip: str = "127.0.0.1",
) -> dict:
    """The dispatcher's registry record for an agent (as approval writes it)."""
    record = new_record(
        hostname=name,
        ip=ip,
        paired=iso_utc(time.time()),
        expiry=openssl_notafter(agent.not_after.timestamp()),
        reqid=secrets.token_hex(8),
        lookup_by="ip",
        port=port,
        dispatcher_serial=dispatcher.serial_key,
        serial_status="current",
    )
    # The agent certificate's identity, as approval records it.
    record["cert_serial"] = format(agent.serial, "x")
    record["cert_fingerprint"] = fingerprint(agent.cert_pem)
    record["cert_cn"] = name
    layout = layout_for(dispatcher_root)
    layout.registry_dir.mkdir(parents=True, exist_ok=True)
    Registry(layout.registry_dir).put(record)
    return record


def install_ca_key(ca: SessionCA, root: Path) -> Path:
    """The CA key and serial file in the dispatcher's ca_dir, as setup-ca
    leaves them, for tests of work that signs (renewal, rotation)."""
    layout = layout_for(root)
    _write(layout.ca_cert, ca.cert_pem, 0o644)
    _write(layout.ca_key, _pem_key(ca.key), 0o600)
    if not layout.ca_serial.exists():
        _write(layout.ca_serial, b"01\n", 0o600)
    return layout.ca_key
