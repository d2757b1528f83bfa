"""`allowed_ips`: which peer addresses may talk to the agent at all.

0.12 accepts exact IPv4 addresses and /8, /16, /24 prefixes (octets may carry
leading zeros, which it strips) and never matches IPv6. We accept that syntax
unchanged and also any prefix length and IPv6, so a list written for 0.12
means the same here. The check runs right after accept, before the handshake.
"""

from __future__ import annotations

import ipaddress
import re

_LOOSE_V4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:/(\d{1,3}))?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_entry(text: str) -> Network:
    """One allowed_ips entry as a network; ValueError with a reason if bad."""
    text = text.strip()
    match = _LOOSE_V4.fullmatch(text)
    if match:
        octets = [int(part) for part in match.groups()[:4]]
        if any(octet > 255 for octet in octets):
            raise ValueError(f"malformed IPv4 address: {text}")
        prefix = match.group(5)
        canonical = ".".join(str(octet) for octet in octets)
        if prefix is not None:
            canonical += f"/{int(prefix)}"
        try:
            return ipaddress.ip_network(canonical, strict=False)
        except ValueError as exc:
            raise ValueError(f"unsupported prefix length: {text}") from exc
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"malformed address: {text}") from exc


class AddressFilter:
    def __init__(self, networks: list[Network]):
        self._networks = list(networks)

    @classmethod
    def from_entries(cls, entries: list[str]) -> AddressFilter:
        return cls([parse_entry(entry) for entry in entries])

    @property
    def enabled(self) -> bool:
        return bool(self._networks)

    def allows(self, address: str) -> bool:
        if not self._networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self._networks)
