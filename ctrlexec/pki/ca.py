"""The private CA on the dispatcher host. `cryptography` is imported lazily.

Files (in `ca_dir`, 0.12's names): `ca.key` (0600), `ca.crt` (0644),
`ca.serial` and our `ca.issued`.

- The CA certificate is self-signed with BasicConstraints CA:TRUE (critical,
  path length 0), KeyUsage keyCertSign+cRLSign (critical) and a Subject Key
  Identifier, so strict verifiers (Python >= 3.13, recent OpenSSL) accept
  the chain. Issued certificates carry CA:FALSE, digitalSignature, both TLS
  purposes, SKI and AKI, and a subject of CN only.
- Serial numbers are random, 64 bits or more, never reused: each one is
  recorded in `ca.issued` (and fsynced) before the certificate exists. We
  also skip serials whose hex text is all decimal digits: 0.12 agents read
  such text as decimal and then mangle it again when storing it (protocol.md
  §1.5), so a dispatcher with such a serial would be refused by them.
- Signing is serialised by an flock on `ca.serial`, the file 0.12 locks, so
  both implementations sharing a CA directory take turns. setup-ca writes
  `01` into it, as 0.12 does, and we never change it again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.ids import TokenBytes
from ..core.serial import Serial
from ..core.timefmt import openssl_notafter
from ..errors import CAExists, StateError
from ..store import FileLock, atomic_write, ensure_dir
from . import csr as csr_rules
from . import keys

CA_COMMON_NAME = "ctrl-exec CA"
DISPATCHER_COMMON_NAME = "ctrl-exec-dispatcher"
CA_DAYS = 3650
# 0.12's lifetime of a dispatcher cert and of an agent cert issued at pairing.
LEAF_DAYS = 825
# Certificates are valid from a little before now: peers' clocks differ.
BACKDATE = dt.timedelta(minutes=5)
SERIAL_BYTES = 16
# How long a signer waits for another one to finish.
LOCK_TIMEOUT = 30
_ALL_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class CAPaths:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def serial(self) -> Path:
        return self.directory / "ca.serial"

    @property
    def issued(self) -> Path:
        return self.directory / "ca.issued"

    def exists(self) -> bool:
        return self.key.exists() or self.cert.exists()


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    serial: Serial
    not_after: float

    @property
    def expiry(self) -> str:
        """The openssl `notAfter` text the registry and /ping use."""
        return openssl_notafter(self.not_after)


def _now(now: float | None) -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)


def _backup(path: Path, stamp: str) -> Path | None:
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.bak-{stamp}")
    os.replace(path, target)
    return target


def create_ca(
    paths: CAPaths,
    key_type: str = "ec",
    common_name: str = CA_COMMON_NAME,
    days: int = CA_DAYS,
    force: bool = False,
    now: float | None = None,
    token_bytes: TokenBytes = secrets.token_bytes,
) -> list[Path]:
    """Create the CA key and certificate. An existing CA is refused unless
    `force`, which first renames the old files to `*.bak-<UTC time>`.
    Returns the backups made."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    if paths.exists() and not force:
        raise CAExists(
            f"a CA already exists in {paths.directory} (ca.key or ca.crt); "
            "refusing to overwrite it (--force replaces it, keeping a backup; "
            "every agent must then be paired again)"
        )
    ensure_dir(paths.directory, 0o750)
    started = _now(now)
    backups = [
        b
        for b in (_backup(p, started.strftime("%Y%m%dT%H%M%SZ")) for p in (paths.key, paths.cert))
        if b
    ]
    key = keys.generate(key_type, for_ca=True)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    serial = _allocate_serial(paths, token_bytes)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(started - BACKDATE)
        .not_valid_after(started + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True, rsa=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, keys.signing_hash(key))
    )
    atomic_write(paths.key, keys.to_pem(key), 0o600)
    atomic_write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if not paths.serial.exists():
        atomic_write(paths.serial, b"01\n", 0o600)
    return backups


def _key_usage(ca: bool, rsa: bool):
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=rsa and not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def load_ca(paths: CAPaths):
    """(certificate, private key) of the CA; StateError if it is not set up."""
    from cryptography import x509

    if not paths.key.exists() or not paths.cert.exists():
        raise StateError(f"no CA in {paths.directory}: run 'ced setup-ca' first")
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    except ValueError:
        raise StateError(f"{paths.cert} is not a PEM certificate") from None
    try:
        key = keys.load_pem(paths.key.read_bytes(), str(paths.key))
    except ValueError as exc:
        raise StateError(str(exc)) from None
    except PermissionError:
        raise StateError(
            f"cannot read {paths.key}: permission denied (CA operations need the CA key; try sudo)"
        ) from None
    if keys.public_der(key) != keys.public_der(cert.public_key()):
        raise StateError(f"{paths.key} does not belong to {paths.cert}")
    return cert, key


def read_ca_pem(paths: CAPaths) -> str:
    try:
        return paths.cert.read_text()
    except FileNotFoundError:
        raise StateError(f"no CA certificate at {paths.cert}: run 'ced setup-ca' first") from None


def _read_issued(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except FileNotFoundError:
        return set()


def _allocate_serial(paths: CAPaths, token_bytes: TokenBytes) -> int:
    """A fresh serial, recorded durably before use. Caller holds the CA lock
    (or is creating the CA)."""
    issued = _read_issued(paths.issued)
    while True:
        serial = int.from_bytes(token_bytes(SERIAL_BYTES), "big") >> 1
        text = format(serial, "x")
        if serial >= 1 << 64 and not _ALL_DIGITS.fullmatch(text) and text not in issued:
            break
    fd = os.open(paths.issued, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, (text + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return serial


def _sign(
    paths: CAPaths,
    public,
    common_name: str,
    days: int,
    now: float | None,
    token_bytes: TokenBytes,
) -> Issued:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = load_ca(paths)
    started = _now(now)
    not_after = min(started + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    not_after = not_after.replace(microsecond=0)
    ensure_dir(paths.directory, 0o750)
    with FileLock(paths.serial, 0o600).acquire(timeout=LOCK_TIMEOUT):
        serial = _allocate_serial(paths, token_bytes)
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(started - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(ca=False, rsa=isinstance(public, rsa.RSAPublicKey)), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(ca_key, keys.signing_hash(ca_key))
        )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return Issued(pem, Serial(serial), not_after.timestamp())


def sign_csr(
    paths: CAPaths,
    csr_pem: str,
    days: int = LEAF_DAYS,
    expected_cn: str | None = None,
    now: float | None = None,
    token_bytes: TokenBytes = secrets.token_bytes,
) -> Issued:
    """Validate (csr.validate) and sign. Raises CsrRejected or StateError."""
    facts = csr_rules.validate(csr_pem, expected_cn)
    if not facts.common_name:
        raise csr_rules.CsrRejected("the CSR has no single subject CN")
    public = csr_rules.load(csr_pem).public_key()
    return _sign(paths, public, facts.common_name, days, now, token_bytes)


def issue_key_and_cert(
    paths: CAPaths,
    common_name: str,
    key_type: str,
    days: int = LEAF_DAYS,
    now: float | None = None,
    token_bytes: TokenBytes = secrets.token_bytes,
) -> tuple[bytes, Issued]:
    """A new key and a certificate for it (the dispatcher's identity)."""
    key = keys.generate(key_type)
    return keys.to_pem(key), _sign(paths, key.public_key(), common_name, days, now, token_bytes)


def fingerprint(cert_pem: str | bytes) -> str:
    """SHA-256 of the certificate's DER, as `openssl x509 -fingerprint -sha256`
    prints it (upper-case hex pairs joined by colons)."""
    from ..core.x509 import first_pem_cert_der

    text = cert_pem.decode("ascii") if isinstance(cert_pem, bytes) else cert_pem
    digest = hashlib.sha256(first_pem_cert_der(text)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normalise_fingerprint(text: str) -> str:
    """Accept `AB:CD:...`, `abcd...` or `sha256:...`; return the colon form.
    ValueError if it is not 32 bytes of hex."""
    raw = text.strip()
    if raw.lower().startswith("sha256:") or raw.lower().startswith("sha256="):
        raw = raw[7:]
    raw = raw.replace(":", "").replace(" ", "").upper()
    if not re.fullmatch(r"[0-9A-F]{64}", raw):
        raise ValueError("a CA fingerprint is 64 hex digits (SHA-256), colons optional")
    return ":".join(raw[i : i + 2] for i in range(0, 64, 2))


def issued_by(cert: str | bytes, ca_pem: str) -> bool:
    """True when `ca_pem` is a CA certificate whose key signed `cert` (PEM
    text, or DER bytes as a TLS peer certificate arrives)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        if isinstance(cert, bytes):
            subject = x509.load_der_x509_certificate(cert)
        else:
            subject = x509.load_pem_x509_certificate(cert.encode("ascii"))
        issuer = x509.load_pem_x509_certificate(ca_pem.encode("ascii"))
        subject.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, UnicodeEncodeError, InvalidSignature):
        return False
    return True
