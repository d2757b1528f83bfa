"""What pairing leaves on the agent host, and how to tell whether it is there.

After an approval the agent checks what it received before keeping any of
it: the certificate must be for our key and signed by the returned CA; with
a pinned CA fingerprint, the CA must match the pin and must also have signed
the certificate the pairing listener presented (so a stranger on port 7444
cannot hand us its own CA). Then it writes, each atomically and with 0.12's
modes, `agent.key` and `agent.crt` (0640) and `ca.crt` (0644) at the
configured paths (0.12 always used its fixed paths), and adds
`<dispatcher_serial> <dispatcher_id>` to the trusted-dispatcher map.

The serial arrives already canonical (the dispatcher applied 0.12's
canonicalisation once), so it is stored as received: trust.add_dispatcher
only tidies its spelling and never re-applies the decimal step.
"""

from __future__ import annotations

import grp
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.names import is_dispatcher_id
from ..core.pairing import Approval
from ..core.serial import Serial, normalise_received
from ..core.timefmt import openssl_notafter
from ..core.x509 import facts_from_pem
from ..errors import PairingRejected
from ..store import atomic_write, ensure_dir
from . import trust

AGENT_GROUP = "ctrl-exec-agent"


@dataclass(frozen=True)
class Stored:
    dispatcher_id: str
    dispatcher_serial: str
    cert_serial: Serial
    expiry: str
    subject: str
    trusted: bool


def _owner() -> tuple[int, int] | None:
    """root:ctrl-exec-agent for the identity files when that group exists (0.12)."""
    if os.geteuid() != 0:
        return None
    try:
        return 0, grp.getgrnam(AGENT_GROUP).gr_gid
    except KeyError:
        return None


def check(approval: Approval, key, server_cert_der: bytes, pin: str | None) -> None:
    """PairingRejected unless the approval is safe to store."""
    from cryptography import x509

    from ..pki import ca, keys

    try:
        cert = x509.load_pem_x509_certificate(approval.cert.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise PairingRejected("the returned certificate cannot be parsed") from None
    if keys.public_der(cert.public_key()) != keys.public_der(key):
        raise PairingRejected("the returned certificate is not for this agent's key")
    if not ca.issued_by(approval.cert, approval.ca):
        raise PairingRejected("the returned certificate is not signed by the returned CA")
    if pin is not None:
        try:
            got = ca.fingerprint(approval.ca)
        except ValueError:
            raise PairingRejected("the returned CA certificate cannot be parsed") from None
        if got != pin:
            raise PairingRejected(
                f"the dispatcher's CA fingerprint {got} does not match the pinned {pin}"
            )
        if not server_cert_der or not ca.issued_by(server_cert_der, approval.ca):
            raise PairingRejected(
                "the pairing listener's certificate is not signed by the pinned CA"
            )


def store(
    approval: Approval, key_pem: bytes, cert_path: str, key_path: str, ca_path: str, map_path: str
) -> Stored:
    owner = _owner()
    for path in (cert_path, key_path, ca_path):
        ensure_dir(Path(path).parent, 0o750)
    atomic_write(key_path, key_pem, 0o640, owner)
    atomic_write(cert_path, approval.cert.encode("ascii"), 0o640, owner)
    atomic_write(ca_path, approval.ca.encode("ascii"), 0o644)
    serial = normalise_received(approval.dispatcher_serial)
    ident = approval.dispatcher_id if is_dispatcher_id(approval.dispatcher_id) else serial
    trusted = False
    if serial and is_dispatcher_id(ident):
        trust.add_dispatcher(map_path, serial, ident)
        trusted = True
    facts = facts_from_pem(approval.cert)
    return Stored(
        dispatcher_id=ident,
        dispatcher_serial=serial,
        cert_serial=facts.serial,
        expiry=openssl_notafter(facts.not_after),
        subject=facts.subject_cn,
        trusted=trusted,
    )


def writable_dirs(paths: list[str]) -> list[str]:
    """Create the directories pairing writes into; return those we cannot
    write (checked before any network use, as 0.12 does)."""
    problems = []
    for directory in sorted({str(Path(p).parent) for p in paths}):
        try:
            ensure_dir(directory, 0o750)
        except OSError as exc:
            problems.append(f"{directory} ({exc.strerror})")
            continue
        if not os.access(directory, os.W_OK):
            problems.append(directory)
    return problems


@dataclass(frozen=True)
class Status:
    paired: bool
    reason: str = ""
    expiry: str = ""
    subject: str = ""  # the certificate's whole subject, "CN=web-01"
    serial: str = ""


def status(cert_path: str, key_path: str, ca_path: str, now: float | None = None) -> Status:
    """Paired means: certificate, key and CA present, and the certificate
    readable and not expired. Standard library only."""
    for label, path in (
        ("certificate", cert_path),
        ("private key", key_path),
        ("CA certificate", ca_path),
    ):
        if not Path(path).exists():
            return Status(False, f"{label} not found: {path}")
    try:
        facts = facts_from_pem(Path(cert_path).read_text(errors="replace"))
    except (OSError, ValueError) as exc:
        return Status(False, f"certificate {cert_path} cannot be read: {exc}")
    expiry = openssl_notafter(facts.not_after)
    current = time.time() if now is None else now
    if facts.not_after <= current:
        return Status(
            False,
            f"certificate expired on {expiry}",
            expiry,
            facts.subject,
            facts.serial.hex(),
        )
    return Status(True, "", expiry, facts.subject, facts.serial.hex())


def identity_files_present(cert_path: str, key_path: str, ca_path: str) -> bool:
    return all(Path(p).is_file() for p in (cert_path, key_path, ca_path))
