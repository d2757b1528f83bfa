"""Private keys: generate, serialise, load. `cryptography` is imported inside
each function, so importing this module costs nothing on the request paths.

Key types: `ec` is ECDSA P-256 (fast handshakes; our default for the CA and
the dispatcher); `rsa` is RSA, 4096 bits for a CA and 2048 for other keys.
Agents default to RSA 2048 because a 0.12 dispatcher measures every key in
bits and refuses anything under 2048, so it refuses P-256 CSRs.
"""

from __future__ import annotations

KEY_TYPES = ("ec", "rsa")
RSA_CA_BITS = 4096
RSA_BITS = 2048


def generate(key_type: str, for_ca: bool = False):
    if key_type == "ec":
        from cryptography.hazmat.primitives.asymmetric import ec

        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        from cryptography.hazmat.primitives.asymmetric import rsa

        return rsa.generate_private_key(65537, RSA_CA_BITS if for_ca else RSA_BITS)
    raise ValueError(f"key type must be one of {', '.join(KEY_TYPES)}, not {key_type!r}")


def to_pem(key) -> bytes:
    """Unencrypted PKCS#8 PEM: the file mode protects it, as in 0.12."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_pem(data: bytes, source: str = "key"):
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source} is not an unencrypted PEM private key") from exc


def public_der(key) -> bytes:
    """The SubjectPublicKeyInfo of a private or public key, to compare keys."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signing_hash(key):
    """The digest a CA key signs with (None for keys that carry their own)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return hashes.SHA256()
    return None
