"""Keeping the dispatcher's certificate consistent with its CA."""

from __future__ import annotations

from pathlib import Path

from .. import log
from ..store import atomic_write
from .rotation import _key_owner


def reissue_if_foreign(settings):
    """After the CA was replaced: a dispatcher certificate the new CA did not
    sign would be refused by every agent paired from now on, so it is
    replaced at once by one the new CA signs (same paths, new key). Returns
    the new certificate, or None when there was nothing to do."""
    from ..pki import ca

    cert_path, key_path = Path(settings.cert), Path(settings.key)
    if not cert_path.exists():
        return None
    paths = ca.CAPaths(Path(settings.ca_dir))
    if ca.issued_by(cert_path.read_text("ascii", "replace"), ca.read_ca_pem(paths)):
        return None
    key_pem, issued = ca.issue_key_and_cert(paths, ca.DISPATCHER_COMMON_NAME, settings.key_type)
    atomic_write(key_path, key_pem, 0o600, _key_owner(settings))
    atomic_write(cert_path, issued.cert_pem.encode("ascii"), 0o644)
    log.event(
        "setup-ctrl-exec",
        CERT=str(cert_path),
        SERIAL=issued.serial.hex(),
        EXPIRY=issued.expiry,
        REASON="CA replaced",
    )
    return issued
