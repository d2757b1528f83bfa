"""Certificate serial numbers, and the trust keys 0.12 derives from them.

The trusted-dispatcher map and the revocation list are keyed by a canonical
text form of a certificate serial. ctrl-exec 0.12 derives that form with a
function that reads a digits-only hex string as *decimal* ("10" -> "a").
Every peer in a mixed fleet must derive the same keys, so the quirk is kept
exactly. What is not kept is 0.12's habit of applying the function several
times along the trust path (it is not idempotent): we apply it once, to raw
certificate hex text, and store values that arrive already canonical
(`dispatcher_serial`, the rotate `serial`) as received.

A certificate's serial is a `Serial`: the integer itself (it compares,
hashes and formats as the integer), with 0.12's text forms as methods
(`trust_key`, `openssl_hex`, `hex`). A key is text and not a serial: the
mapping is not injective (0x0A and 0x10 both become `a`), so text that is
already a key (a map or revocation line, a received `dispatcher_serial`) goes
through `serial_to_hex` or `normalise_received` and stays text.
"""

from __future__ import annotations

import re

_HEX = re.compile(r"[0-9a-f]+")
_DIGITS = re.compile(r"[0-9]+")
_PREFIX_0X = re.compile(r"^0x", re.IGNORECASE)
_PREFIX_SERIAL = re.compile(r"^serial=", re.IGNORECASE)


def _strip_prefixes(value: str) -> str:
    value = _PREFIX_0X.sub("", value, count=1)
    return _PREFIX_SERIAL.sub("", value, count=1)


def _strip_leading_zeros(value: str) -> str:
    stripped = value.lstrip("0")
    return stripped if stripped else value[-1:]


def serial_to_hex(value: str | None) -> str:
    """The 0.12 canonical key of a serial given as text (raw cert hex, openssl
    output, a revocation line). Quirk kept: all-digit input is decimal."""
    if value is None:
        return ""
    value = value.strip()
    if not value:
        return ""
    value = _strip_prefixes(value)
    if ":" in value:
        return _strip_leading_zeros(value.replace(":", "").lower())
    value = value.lower()
    if _DIGITS.fullmatch(value):
        return format(int(value, 10), "x")
    if _HEX.fullmatch(value):
        return _strip_leading_zeros(value)
    return _garbage_to_hex(value)


def _garbage_to_hex(value: str) -> str:
    # 0.12 hands anything else to Math::BigInt ("garbage in, garbage out").
    # Such a key can never equal the canonical form of real certificate hex,
    # so we map it to the empty key, which is never trusted.
    return ""


def normalise_received(value: str | None) -> str:
    """A serial that arrives already canonical (pairing `dispatcher_serial`,
    rotate `serial`): tidy the spelling, never re-apply the decimal step."""
    if value is None:
        return ""
    value = _strip_prefixes(value.strip())
    value = value.replace(":", "").lower()
    if not value or not _HEX.fullmatch(value):
        return ""
    return _strip_leading_zeros(value)


class Serial(int):
    """A certificate serial number. DER allows a negative one; a CA that
    follows RFC 5280 never issues it, and its trust key is empty (never
    trusted)."""

    __slots__ = ()

    def __new__(cls, number: int) -> Serial:
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"a serial is an integer, not {type(number).__name__}")
        return super().__new__(cls, number)

    def trust_key(self) -> str:
        """The key of the trusted-dispatcher map and the revocation list:
        0.12's canonical form, applied once to the serial's hex text."""
        return serial_to_hex(format(self, "x"))

    def openssl_hex(self) -> str:
        """As 0.12 reads it from a peer certificate (OpenSSL's byte-padded
        hex, lowercased: 0x2 -> "02"): `PEER_SERIAL` log fields and the
        hook's ENVEXEC_DISPATCHER_SERIAL."""
        magnitude = abs(int(self))
        text = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "big").hex()
        return "-" + text if self < 0 else text

    def hex(self) -> str:
        """For people, the registry and `--json`: lowercase hex, no leading zeros."""
        return format(self, "x")

    def __repr__(self) -> str:
        return f"Serial(0x{self:x})" if self >= 0 else f"Serial(-0x{-self:x})"
