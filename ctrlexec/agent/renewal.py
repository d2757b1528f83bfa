"""Agent certificate renewal: the CSR for `/renew`, the checks and staging
of `/renew-complete`, and `promote-cert` (protocol.md §3.8, §3.9, §5).

A renewed certificate is written to `cert_staging_path` only after it
passes every check: signed by the CA the agent trusts, for the agent's own
key, with the CN of the certificate in use, and valid now. The running
agent serves it from there at once (agent/identity.py); `promote-cert`
(at the next start, or run by hand) checks it again and installs it at
`cert`, keeping that file's owner, group and mode. Every file is replaced
atomically, so a crash at any instant leaves the old or the new
certificate, never a part of one.

`cryptography` is imported here, lazily: only renewal work needs it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import log
from ..core.x509 import facts_from_pem
from ..errors import CtrlExecError, RenewalRejected
from ..store import atomic_write, ensure_dir

# A certificate is a few KiB; anything much larger is not one.
MAX_CERT_BYTES = 65_536
# Peers' clocks differ: a certificate valid from a little in the future is fine.
CLOCK_SKEW = 300.0


@dataclass(frozen=True)
class Promotion:
    status: str  # none | installed | discarded | failed
    detail: str = ""


def _read_text(path: str, what: str, limit: int = MAX_CERT_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise RenewalRejected(f"{what} not found at '{path}'") from None
    except OSError as exc:
        raise RenewalRejected(f"cannot read {what} at '{path}': {exc.strerror or exc}") from None
    if len(data) > limit:
        raise RenewalRejected(f"{what} at '{path}' is larger than {limit} bytes")
    return data.decode("ascii", "replace")


def current_cn(config) -> str:
    """The subject CN of the certificate in use (the identity renewal keeps)."""
    try:
        return facts_from_pem(_read_text(config.cert, "agent cert")).subject_cn
    except (RenewalRejected, ValueError):
        return ""


def make_csr(config, fallback_cn: str) -> str:
    """A CSR from the agent's existing key, CN of the certificate in use."""
    from ..pki import csr, keys

    key_pem = _read_text(config.key, "agent key")
    try:
        key = keys.load_pem(key_pem.encode("ascii"), config.key)
    except ValueError as exc:
        raise RenewalRejected(str(exc)) from None
    return csr.build(key, current_cn(config) or fallback_cn)


def _issued_at(path: str) -> float | None:
    """When the certificate at `path` was issued (its notBefore), if it can be read."""
    try:
        return facts_from_pem(_read_text(path, "cert")).not_before
    except (RenewalRejected, ValueError):
        return None


def check_renewed(config, cert_pem: str, now: float, in_use: tuple[str, ...] | None = None) -> str:
    """Every check a renewed certificate must pass; its PEM text, tidied.
    RenewalRejected says which check failed.

    It must also be no older than the certificates in `in_use` (default: the
    installed one and a staged one). `/renew-complete` needs no trusted
    identity (0.12: a rotated dispatcher must reach it), and renewal keeps
    the key, so every certificate this agent ever had would otherwise pass:
    any holder of a certificate from the CA (another agent) could send back
    one of this agent's superseded certificates, which the dispatcher no
    longer accepts as this agent's identity, and cut it off the fleet."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from ..pki import keys

    if not isinstance(cert_pem, str) or not cert_pem.strip():
        raise RenewalRejected("cert required")
    if len(cert_pem) > MAX_CERT_BYTES:
        raise RenewalRejected(f"renewed cert is larger than {MAX_CERT_BYTES} bytes")
    ca_pem = _read_text(config.ca, "CA cert")
    key_pem = _read_text(config.key, "agent key")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        issuer = x509.load_pem_x509_certificate(ca_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise RenewalRejected("renewed cert is not a PEM certificate") from None
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise RenewalRejected("renewed cert does not verify against the agent CA") from None
    try:
        own = keys.public_der(keys.load_pem(key_pem.encode("ascii"), config.key))
    except ValueError as exc:
        raise RenewalRejected(str(exc)) from None
    if keys.public_der(cert.public_key()) != own:
        raise RenewalRejected("renewed cert public key does not match the agent key")
    from cryptography.hazmat.primitives import serialization

    tidy = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    facts = facts_from_pem(tidy)
    expected = current_cn(config)
    if expected and facts.subject_cn != expected:
        raise RenewalRejected(
            f"renewed cert CN '{facts.subject_cn}' is not this agent's CN '{expected}'"
        )
    if facts.not_after <= now or facts.not_before > now + CLOCK_SKEW:
        raise RenewalRejected("renewed cert is not valid now (expired or not yet valid)")
    paths = (config.cert, config.cert_staging_path) if in_use is None else in_use
    issued = [when for when in map(_issued_at, paths) if when is not None]
    if issued and facts.not_before < max(issued):
        raise RenewalRejected("renewed cert is older than the certificate in use")
    return tidy


def stage(config, cert_pem: str, now: float | None = None) -> str:
    """Check and write the renewed certificate to `cert_staging_path` (0640).
    Returns the staged PEM text."""
    now = time.time() if now is None else now
    tidy = check_renewed(config, cert_pem, now)
    target = Path(config.cert_staging_path)
    try:
        ensure_dir(target.parent, 0o750)
        atomic_write(target, tidy.encode("ascii"), 0o640)
    except (OSError, CtrlExecError) as exc:
        raise RenewalRejected(
            f"could not stage cert: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return tidy


def _owner_and_mode(path: Path) -> tuple[tuple[int, int] | None, int]:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None, 0o644
    return (info.st_uid, info.st_gid), info.st_mode & 0o7777


def promote(config, now: float | None = None) -> Promotion:
    """Install a staged certificate at `cert` after checking it again. An
    invalid staged certificate is deleted. Never raises."""
    now = time.time() if now is None else now
    staged = Path(config.cert_staging_path)
    if not staged.exists():
        return Promotion("none", "no staged certificate")
    try:
        tidy = check_renewed(
            config, _read_text(str(staged), "staged cert"), now, in_use=(config.cert,)
        )
    except RenewalRejected as exc:
        try:
            staged.unlink()
        except OSError:
            pass
        log.event("cert-promote", log.WARNING, ERROR=f"staged cert discarded: {exc}")
        return Promotion("discarded", str(exc))
    except Exception as exc:  # a broken crypto bundle must not stop the agent
        log.event("cert-promote", log.WARNING, ERROR=f"{type(exc).__name__}: {exc}")
        return Promotion("failed", str(exc))
    target = Path(config.cert)
    owner, mode = _owner_and_mode(target)
    try:
        atomic_write(target, tidy.encode("ascii"), mode, owner if os.geteuid() == 0 else None)
        staged.unlink()
    except OSError as exc:
        log.event("cert-promote", log.WARNING, ERROR=f"cannot install: {exc.strerror or exc}")
        return Promotion("failed", exc.strerror or str(exc))
    facts = facts_from_pem(tidy)
    log.event("cert-promote", log.INFO, STATUS="installed", SERIAL=facts.serial.hex())
    return Promotion("installed", facts.serial.hex())
