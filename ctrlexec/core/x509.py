"""The few certificate facts the request paths need, read from DER with no
dependency outside the standard library.

The agent answers `/ping` with its certificate's notAfter and keys trust by
the peer's serial; the dispatcher shows expiry dates. None of that may pull
in `cryptography` (start-up time, memory, and a broken native bundle must not
stop operations), so this module walks just enough of the X.509 structure:
serial, validity, the subject common name and the subject as text
(`CN=web-01`, `O=Example, CN=web-01`, in the certificate's order, as
`openssl x509 -subject` lists it). Anything malformed raises
ValueError; nothing here verifies a signature (TLS does that).
"""

from __future__ import annotations

import base64
import binascii
import calendar
from collections.abc import Iterator
from dataclasses import dataclass

from .serial import Serial

_SEQUENCE = 0x30
_SET = 0x31
_INTEGER = 0x02
_OID = 0x06
_UTCTIME = 0x17
_GENERALIZEDTIME = 0x18
_CONTEXT_0 = 0xA0
_OID_COMMON_NAME = bytes([0x55, 0x04, 0x03])
_STRING_TAGS = {0x0C, 0x13, 0x14, 0x16, 0x1E}  # UTF8, Printable, T61, IA5, BMP
# Attribute names for the subject text (RFC 4514's, and openssl's for the rest).
_ATTRIBUTE_NAMES = {
    bytes([0x55, 0x04, 0x03]): "CN",
    bytes([0x55, 0x04, 0x05]): "serialNumber",
    bytes([0x55, 0x04, 0x06]): "C",
    bytes([0x55, 0x04, 0x07]): "L",
    bytes([0x55, 0x04, 0x08]): "ST",
    bytes([0x55, 0x04, 0x09]): "street",
    bytes([0x55, 0x04, 0x0A]): "O",
    bytes([0x55, 0x04, 0x0B]): "OU",
    bytes([0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19]): "DC",
    bytes([0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01]): "UID",
    bytes([0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01]): "emailAddress",
}
# Longest subject text shown; a longer one is cut with "...".
MAX_SUBJECT_TEXT = 1_024


@dataclass(frozen=True)
class CertFacts:
    serial: Serial
    not_before: float
    not_after: float
    subject_cn: str
    subject: str = ""  # the whole subject: "CN=web-01"


def _read_tlv(data: bytes, pos: int, limit: int | None = None) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the element at pos, which must
    end by `limit` (its container's end; the whole of `data` by default)."""
    limit = len(data) if limit is None else limit
    if pos + 2 > limit:
        raise ValueError("truncated DER element")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > limit:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > limit:
        raise ValueError("DER element overruns its container")
    return tag, pos, end


def _children(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    pos = start
    while pos < end:
        tag, vstart, vend = _read_tlv(data, pos, end)
        yield tag, vstart, vend
        pos = vend


def _parse_time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii")
    if tag == _UTCTIME and len(text) == 13 and text.endswith("Z"):
        year = int(text[0:2])
        year += 1900 if year >= 50 else 2000
        rest = text[2:12]
    elif tag == _GENERALIZEDTIME and len(text) == 15 and text.endswith("Z"):
        year = int(text[0:4])
        rest = text[4:14]
    else:
        raise ValueError("unsupported certificate time format")
    month, day, hh, mm, ss = (int(rest[i : i + 2]) for i in range(0, 10, 2))
    return float(calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)))


def _common_name(data: bytes, start: int, end: int) -> str:
    for rdn_tag, rstart, rend in _children(data, start, end):
        if rdn_tag != _SET:
            continue
        for atv_tag, astart, aend in _children(data, rstart, rend):
            if atv_tag != _SEQUENCE:
                continue
            parts = list(_children(data, astart, aend))
            if len(parts) != 2:
                continue
            (otag, os_, oe), (vtag, vs, ve) = parts
            if otag == _OID and data[os_:oe] == _OID_COMMON_NAME and vtag in _STRING_TAGS:
                raw = data[vs:ve]
                return raw.decode("utf-16-be" if vtag == 0x1E else "utf-8", "replace")
    return ""


def _oid_text(raw: bytes) -> str:
    if not raw:
        return "?"
    arcs = [*divmod(raw[0], 40)] if raw[0] < 80 else [2, raw[0] - 80]
    value = 0
    for byte in raw[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(str(arc) for arc in arcs)


def _value_text(tag: int, raw: bytes) -> str:
    if tag not in _STRING_TAGS:
        return "#" + raw.hex()
    text = raw.decode("utf-16-be" if tag == 0x1E else "utf-8", "replace")
    out = []
    for char in text:
        if char in ',+"\\<>;=':
            out.append("\\" + char)
        elif ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            out.append(f"\\{ord(char):02x}")  # nothing that moves a terminal's cursor
        else:
            out.append(char)
    return "".join(out)


def _subject_text(data: bytes, start: int, end: int) -> str:
    """The subject's attributes as `NAME=value`, in the certificate's order;
    several in one RDN joined with `+`."""
    rdns = []
    for rdn_tag, rstart, rend in _children(data, start, end):
        if rdn_tag != _SET:
            continue
        attributes = []
        for atv_tag, astart, aend in _children(data, rstart, rend):
            if atv_tag != _SEQUENCE:
                continue
            parts = list(_children(data, astart, aend))
            if len(parts) != 2 or parts[0][0] != _OID:
                continue
            (_, os_, oe), (vtag, vs, ve) = parts
            oid = data[os_:oe]
            name = _ATTRIBUTE_NAMES.get(oid) or _oid_text(oid)
            attributes.append(f"{name}={_value_text(vtag, data[vs:ve])}")
        if attributes:
            rdns.append("+".join(attributes))
    text = ", ".join(rdns)
    if len(text) > MAX_SUBJECT_TEXT:
        text = text[: MAX_SUBJECT_TEXT - 3] + "..."
    return text


def facts_from_der(der: bytes) -> CertFacts:
    tag, start, _end = _read_tlv(der, 0)
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tbs_tag, tbs_start, tbs_end = _read_tlv(der, start)
    if tbs_tag != _SEQUENCE:
        raise ValueError("certificate has no TBSCertificate")
    fields = list(_children(der, tbs_start, tbs_end))
    if fields and fields[0][0] == _CONTEXT_0:
        fields = fields[1:]
    if len(fields) < 6:
        raise ValueError("TBSCertificate is truncated")
    serial_tag, s_start, s_end = fields[0]
    if serial_tag != _INTEGER:
        raise ValueError("certificate serial is not an INTEGER")
    serial = int.from_bytes(der[s_start:s_end], "big", signed=True)
    validity_tag, v_start, v_end = fields[3]
    if validity_tag != _SEQUENCE:
        raise ValueError("certificate validity is malformed")
    times = list(_children(der, v_start, v_end))
    if len(times) != 2:
        raise ValueError("certificate validity is malformed")
    not_before = _parse_time(times[0][0], der[times[0][1] : times[0][2]])
    not_after = _parse_time(times[1][0], der[times[1][1] : times[1][2]])
    subject_tag, sub_start, sub_end = fields[4]
    if subject_tag != _SEQUENCE:
        raise ValueError("certificate subject is malformed")
    return CertFacts(
        Serial(serial),
        not_before,
        not_after,
        _common_name(der, sub_start, sub_end),
        _subject_text(der, sub_start, sub_end),
    )


def first_pem_cert_der(pem_text: str) -> bytes:
    begin = "-----BEGIN CERTIFICATE-----"
    end = "-----END CERTIFICATE-----"
    start = pem_text.find(begin)
    stop = pem_text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate found")
    body = pem_text[start + len(begin) : stop]
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except binascii.Error as exc:
        raise ValueError("PEM certificate is not valid base64") from exc


def facts_from_pem(pem_text: str) -> CertFacts:
    return facts_from_der(first_pem_cert_der(pem_text))
