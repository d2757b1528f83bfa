"""Certificate lifecycle on the wire and in state, with no I/O.

- Agent renewal (protocol.md §5, §3.8, §3.9): when a renewal is due, the
  bodies of `/renew` and `/renew-complete` and what the dispatcher counts as
  done (`status == "ok"`, stricter than 0.12, which takes any HTTP 200).
- `/rotate-serial` (§3.7): the request checked in 0.12's order, plus a
  bound on the serial (0.12 accepts any text its canonicaliser maps to
  something non-empty).
- Dispatcher rotation (§6): the `rotation.json` document and the dates that
  drive the maintenance phases.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import RotateRejected
from .results import HostResult
from .serial import normalise_received
from .timefmt import iso_utc, parse_iso_utc, parse_openssl_notafter
from .x509 import facts_from_der

DAY = 86_400
# Lifetime of a renewed agent certificate when `cert_days` is unset (0.12).
AGENT_RENEWAL_DAYS = 365
# Lifetime of a rotated dispatcher certificate when `cert_days` is unset (0.12).
DISPATCHER_DAYS = 825
# Longest serial text /rotate-serial accepts: 20 bytes is the X.509 maximum.
MAX_SERIAL_HEX = 40

ADD = "add"
REMOVE = "remove"

UNKNOWN = "unknown"
PENDING = "pending"
CURRENT = "current"
STALE = "stale"


# --- agent renewal --------------------------------------------------------------


def renewal_due(expiry: object, now: float, cert_days: int | None) -> bool:
    """0.12's rule: renew when less than half of `cert_days` (default 365)
    remains before the agent certificate's notAfter."""
    if not isinstance(expiry, str):
        return False
    not_after = parse_openssl_notafter(expiry)
    if not_after is None:
        return False
    days = cert_days or AGENT_RENEWAL_DAYS
    return not_after - now < (days / 2) * DAY


def ping_wants_renewal(result: HostResult, now: float, cert_days: int | None) -> bool:
    """A ping result that asks for a renewal: answered ok, an expiry, not
    already holding a staged certificate, and due."""
    return (
        result.status == "ok"
        and result.wire.get("staged") is not True
        and renewal_due(result.wire.get("expiry"), now, cert_days)
    )


def json_object(body: bytes) -> dict[str, Any]:
    """A request body as 0.12 reads it: anything unparsable counts as `{}`."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def text_field(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def renew_ok(csr_pem: str, reqid: str) -> dict[str, Any]:
    return {"status": "ok", "csr": csr_pem, "reqid": reqid}


def renew_complete_ok(reqid: str) -> dict[str, Any]:
    return {"status": "ok", "reqid": reqid, "staged": True}


def status_error(message: str) -> dict[str, Any]:
    return {"status": "error", "error": message}


def reply_ok(body: bytes) -> dict[str, Any] | None:
    """The JSON object of an agent reply that says `status: ok`, else None."""
    data = json_object(body)
    return data if data.get("status") == "ok" else None


def reply_error(body: bytes, fallback: str) -> str:
    error = json_object(body).get("error")
    return error if isinstance(error, str) and error else fallback


# --- /rotate-serial -------------------------------------------------------------


@dataclass(frozen=True)
class RotateRequest:
    serial: str  # as sent (echoed in the reply)
    key: str  # canonical key for the map
    action: str
    token: str = field(repr=False)  # a credential: never in a log line


def parse_rotate(body: bytes) -> RotateRequest:
    """0.12's order: serial required, then the action; then our bound on the
    serial. RotateRejected carries the 200 error body."""
    data = json_object(body)
    serial = data.get("serial")
    if not isinstance(serial, str) or not serial.strip():
        raise RotateRejected("serial required")
    action = data.get("action", ADD)
    if action is None or action == "":
        action = ADD
    if action not in (ADD, REMOVE):
        raise RotateRejected(f"invalid action '{str(action)[:64]}'")
    key = normalise_received(serial)
    if not key or len(key) > MAX_SERIAL_HEX:
        raise RotateRejected("invalid serial: hexadecimal, at most 40 digits")
    return RotateRequest(serial, key, action, text_field(data, "token"))


def list_line(key: str) -> str:
    """How a canonical serial is written in a revocation list so that 0.12's
    canonicaliser reads it back unchanged: an all-digit key would be read
    as decimal, so it gets the colon form (`00:14` reads as `14`)."""
    return "00:" + key if key.isdigit() else key


def parse_revoke(body: bytes) -> RotateRequest:
    """`/revoke-serial {"serial", "token"?}`: the serial of a certificate the
    agent must refuse from now on."""
    data = json_object(body)
    serial = data.get("serial")
    if not isinstance(serial, str) or not serial.strip():
        raise RotateRejected("serial required")
    key = normalise_received(serial)
    if not key or len(key) > MAX_SERIAL_HEX:
        raise RotateRejected("invalid serial: hexadecimal, at most 40 digits")
    return RotateRequest(serial, key, "revoke", text_field(data, "token"))


def rotate_ok(request: RotateRequest, dispatcher: str) -> dict[str, Any]:
    return {
        "status": "ok",
        "action": request.action,
        "serial": request.serial,
        "dispatcher": dispatcher,
    }


# --- rotation.json --------------------------------------------------------------


@dataclass(frozen=True)
class RotationState:
    current_serial: str
    previous_serial: str  # "" once retired
    rotated_at: str
    overlap_expires: str
    overlap_days: int
    previous_retired: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "current_serial": self.current_serial,
            "rotated_at": self.rotated_at,
            "overlap_expires": self.overlap_expires,
            "overlap_days": self.overlap_days,
        }
        if self.previous_serial:
            data["previous_serial"] = self.previous_serial
        if self.previous_retired:
            data["previous_retired"] = self.previous_retired
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RotationState:
        """ValueError when a field is missing or malformed."""
        current = data.get("current_serial")
        if not isinstance(current, str) or not current:
            raise ValueError("current_serial is missing")
        for key in ("rotated_at", "overlap_expires"):
            value = data.get(key)
            if not isinstance(value, str):
                raise ValueError(f"{key} is missing")
            parse_iso_utc(value)
        days = data.get("overlap_days", 0)
        if isinstance(days, bool) or not isinstance(days, int):
            raise ValueError("overlap_days is not an integer")
        previous = data.get("previous_serial") or ""
        retired = data.get("previous_retired") or ""
        if not isinstance(previous, str) or not isinstance(retired, str):
            raise ValueError("previous_serial is malformed")
        return cls(current, previous, data["rotated_at"], data["overlap_expires"], days, retired)

    def overlap_over(self, now: float) -> bool:
        return now >= parse_iso_utc(self.overlap_expires)

    def retired(self, now: float) -> RotationState:
        return RotationState(
            self.current_serial,
            "",
            self.rotated_at,
            self.overlap_expires,
            self.overlap_days,
            iso_utc(now),
        )


def new_rotation(new_serial: str, old_serial: str, now: float, overlap_days: int) -> RotationState:
    return RotationState(
        new_serial,
        old_serial,
        iso_utc(now),
        iso_utc(now + overlap_days * DAY),
        overlap_days,
    )


def pending_expired(
    record: dict[str, Any], state: RotationState | None, now: float, overlap_days: int
) -> bool:
    """Whether an agent still `pending` has missed its overlap. It became
    pending at its `serial_broadcast` stamp, by a rotation of this node or,
    in a fleet of dispatchers, of another node: it is stale once that stamp
    is `overlap_days` old, or once this node's overlap is over if it became
    pending no later than this node's rotation (a record without a readable
    stamp follows this node's overlap, as in 0.12)."""
    since = _stamp(record.get("serial_broadcast"))
    if since is not None and since + overlap_days * DAY <= now:
        return True
    if state is None or not state.overlap_over(now):
        return False
    return since is None or since <= parse_iso_utc(state.rotated_at)


def _stamp(value: object) -> float | None:
    try:
        return parse_iso_utc(value) if isinstance(value, str) else None
    except ValueError:
        return None


def days_left(not_after: float, now: float) -> int:
    return int((not_after - now) // DAY)


def rotation_due(not_after: float, now: float, renewal_days: int) -> bool:
    """0.12: rotate when the days left are at most `cert_renewal_days`."""
    return days_left(not_after, now) <= renewal_days


# --- who answered: the registered agent? ----------------------------------------


def der_fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate's DER, as openssl prints it (AB:CD:...)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


@dataclass(frozen=True)
class ExpectedPeer:
    """What the registry knows of an agent's certificate. Records written at
    approval or renewal carry its serial and fingerprint; records without
    them (0.12's) are checked by subject CN."""

    name: str
    serials: frozenset[int] = frozenset()
    fingerprints: frozenset[str] = frozenset()
    cn: str = ""

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> ExpectedPeer:
        serials = set()
        for key in ("cert_serial", "cert_serial_next"):
            value = record.get(key)
            if isinstance(value, str) and value:
                try:
                    serials.add(int(value, 16))
                except ValueError:
                    pass
        fingerprint = record.get("cert_fingerprint")
        fingerprints = (
            {fingerprint.upper()} if isinstance(fingerprint, str) and fingerprint else set()
        )
        cn = record.get("cert_cn")
        return cls(
            name,
            frozenset(serials),
            frozenset(fingerprints),
            cn if isinstance(cn, str) and cn else name,
        )


def peer_problem(expected: ExpectedPeer | None, der: bytes, revoked: frozenset[str]) -> str | None:
    """Why the certificate an agent presented is not acceptable, or None."""
    try:
        facts = facts_from_der(der)
    except ValueError:
        return "its certificate cannot be read"
    if revoked and facts.serial.trust_key() in revoked:
        return (
            f"its certificate serial {facts.serial:x} is revoked (ced revoke); "
            "to use the host again, pair it again for a new certificate"
        )
    if expected is None:
        return None
    if expected.serials or expected.fingerprints:
        if facts.serial in expected.serials or der_fingerprint(der) in expected.fingerprints:
            return None
        registered = ", ".join(f"{s:x}" for s in sorted(expected.serials)) or "(fingerprint only)"
        return (
            f"it presented certificate serial {facts.serial:x} (CN {facts.subject_cn!r}); "
            f"'{expected.name}' is registered with serial {registered}"
        )
    if facts.subject_cn != expected.cn:
        return f"it presented a certificate for CN {facts.subject_cn!r}, not {expected.cn!r}"
    return None
