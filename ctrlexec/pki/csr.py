"""Certificate signing requests: build one (agent side) and decide whether the
CA may sign one (dispatcher side). `cryptography` is imported lazily.

The checks are 0.12's (CA::_validate_csr), with its two loopholes closed:
size at most 10 KiB and PEM framing; a self-signature that verifies; a
strong key; no MD2/MD4/MD5/SHA-1 signature; and, when given, the exact
subject CN. "Strong" means RSA of 2048 to 16384 bits or EC on P-256/P-384:
0.12 reads the key size in bits, so it also refuses EC keys (256 < 2048) but
would take any other algorithm of 2048 bits or more; we accept exactly the
key types we can vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.pairing import CSR_BEGIN, MAX_CSR
from ..errors import CsrRejected

RSA_MIN_BITS = 2048
# Verifying a signature with a huge RSA modulus is slow; no real key is larger.
RSA_MAX_BITS = 16384
EC_CURVES = ("secp256r1", "secp384r1")
HASHES = ("sha224", "sha256", "sha384", "sha512")
CSR_END = "-----END CERTIFICATE REQUEST-----"


@dataclass(frozen=True)
class CsrFacts:
    common_name: str
    key_description: str
    key_sha256: str = ""  # of the public key (SubjectPublicKeyInfo DER), hex


def key_sha256(public) -> str:
    """The hash by which a revoked certificate's key is refused again."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def warm() -> None:
    """Import the parts of cryptography validation needs, ahead of the first
    request (a long-running listener should not pay for it mid-request)."""
    from cryptography import x509  # noqa: F401
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: F401


def build(key, common_name: str) -> str:
    """A PEM CSR with subject CN=<common_name>, signed by `key` with SHA-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load(csr_pem: str):
    """Parse after the framing checks; CsrRejected if it is not one PEM CSR."""
    from cryptography import x509

    if not isinstance(csr_pem, str):
        raise CsrRejected("the CSR is not text")
    if len(csr_pem.encode("utf-8")) > MAX_CSR:
        raise CsrRejected(f"the CSR is larger than {MAX_CSR} bytes")
    if (
        not csr_pem.startswith(CSR_BEGIN)
        or not csr_pem.rstrip().endswith(CSR_END)
        or csr_pem.count(CSR_BEGIN) != 1
    ):
        raise CsrRejected("the CSR is not a single PEM certificate request")
    try:
        return x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise CsrRejected("the CSR cannot be parsed") from None


def describe_key(public) -> str:
    """'RSA 2048', 'EC secp256r1', or the key's type name."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA {public.key_size}"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"EC {public.curve.name}"
    return type(public).__name__.replace("PublicKey", "").replace("_", "") or "unknown"


def check_key(public) -> None:
    """CsrRejected unless the public key is one the CA signs."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < RSA_MIN_BITS:
            raise CsrRejected(f"weak key: RSA {public.key_size} (at least {RSA_MIN_BITS} bits)")
        if public.key_size > RSA_MAX_BITS:
            raise CsrRejected(f"RSA key of {public.key_size} bits is larger than {RSA_MAX_BITS}")
        return
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in EC_CURVES:
            raise CsrRejected(
                f"unsupported EC curve {public.curve.name} (use {' or '.join(EC_CURVES)})"
            )
        return
    raise CsrRejected(f"unsupported key type {describe_key(public)} (use RSA or EC)")


def validate(csr_pem: str, expected_cn: str | None = None) -> CsrFacts:
    """Everything the CA requires before signing; CsrRejected with the reason."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.x509.oid import NameOID

    request = load(csr_pem)
    try:
        public = request.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CsrRejected("the CSR's public key cannot be read") from None
    check_key(public)
    try:
        digest = request.signature_hash_algorithm
    except UnsupportedAlgorithm:
        digest = None
    if digest is None or digest.name not in HASHES:
        name = digest.name if digest is not None else "unknown"
        raise CsrRejected(f"weak or unsupported signature hash {name} (use {', '.join(HASHES)})")
    if not request.is_signature_valid:
        raise CsrRejected("the CSR's signature does not verify")
    names = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if len(names) == 1 else ""
    if expected_cn is not None and common_name != expected_cn:
        raise CsrRejected(f"the CSR's subject CN {common_name!r} is not {expected_cn!r}")
    return CsrFacts(
        common_name=common_name,
        key_description=describe_key(public),
        key_sha256=key_sha256(public),
    )
