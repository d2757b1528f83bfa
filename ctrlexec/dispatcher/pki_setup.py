"""The dispatcher's certificate: issued by its CA and kept consistent with it."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from .. import log
from ..store import atomic_write


def key_owner(settings) -> tuple[int, int] | None:
    """As root, the dispatcher key belongs to service_user (the API reads it)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(settings.service_user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def install_certificate(settings, key_type: str, reason: str | None = None):
    """A new key and a certificate from the CA at the configured paths
    (setup-ctrl-exec); the issued certificate."""
    from ..pki import ca

    cert_path, key_path = Path(settings.cert), Path(settings.key)
    paths = ca.CAPaths(Path(settings.ca_dir))
    key_pem, issued = ca.issue_key_and_cert(paths, ca.DISPATCHER_COMMON_NAME, key_type)
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(key_path, key_pem, 0o600, key_owner(settings))
    atomic_write(cert_path, issued.cert_pem.encode("ascii"), 0o644)
    why = {"REASON": reason} if reason else {}
    serial, expiry = issued.serial.hex(), issued.expiry
    log.event("setup-ctrl-exec", CERT=str(cert_path), SERIAL=serial, EXPIRY=expiry, **why)
    return issued


def reissue_if_foreign(settings):
    """After the CA was replaced: a dispatcher certificate the new CA did not
    sign would be refused by every agent paired from now on, so it is
    replaced at once by one the new CA signs (same paths, new key). Returns
    the new certificate, or None when there was nothing to do."""
    from ..pki import ca

    cert_path = Path(settings.cert)
    if not cert_path.exists():
        return None
    paths = ca.CAPaths(Path(settings.ca_dir))
    if ca.issued_by(cert_path.read_text("ascii", "replace"), ca.read_ca_pem(paths)):
        return None
    return install_certificate(settings, settings.key_type, reason="CA replaced")
