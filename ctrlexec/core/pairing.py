"""The pairing exchange on port 7444, as messages and rules with no I/O.

One connection carries one `POST /pair` (JSON: hostname, csr, nonce and the
optional lookup_by, port, ip) and up to two `200` responses: the immediate
acknowledgement `{"status":"pending","reqid"}`, then the result (approved
with cert/ca/nonce/dispatcher_serial/dispatcher_id, or denied with a reason).
A request that fails validation gets a single `{"status":"error","reason"}`.
The reason texts are 0.12's; agents and orchestrators match on them.

The listener (dispatcher/pairing_server.py) and the client
(agent/pairing_client.py) own the sockets; the queue and approval own the
files. This module decides what is valid and what each message looks like.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import PairingRejected, PairRequestError, ProtocolError
from .digest import pairing_code
from .ids import PAIRING_REQID
from .names import is_agent_name

# 0.12's cap on a pairing body; checked on Content-Length before reading.
MAX_PAIR_BODY = 64 * 1024
# 0.12's cap on a CSR accepted for signing.
MAX_CSR = 10_240
# How long the dispatcher holds a request open for a decision, and after how
# long an undecided queued request is stale (both 0.12's ten minutes).
APPROVAL_WAIT = 600
STALE_AFTER = 600
# The agent outlasts the dispatcher's wait (0.12: 660 s socket timeout).
CLIENT_WINDOW = 660
# An agent's background wait: 0.12's default and maximum.
BACKGROUND_TIMEOUT = 30
BACKGROUND_TIMEOUT_MAX = 600

CSR_BEGIN = "-----BEGIN CERTIFICATE REQUEST-----"

# Reasons in single-response errors (`{"status":"error","reason":...}`).
REASON_TOO_LARGE = "request too large"
REASON_INVALID = "invalid request"
REASON_HOSTNAME = "invalid hostname"
REASON_QUEUE_FULL = "pairing queue full"
# Reasons in denials (`{"status":"denied","reason":...}`).
REASON_REJECTED = "rejected by operator"
REASON_TIMEOUT = "approval timeout"

# The agent's nonce is 32 lowercase hex characters; 0.12 stores whatever
# arrives. We accept any short run of letters and digits (it is only echoed)
# and refuse anything else rather than store arbitrary text.
_NONCE = re.compile(r"[A-Za-z0-9]{0,128}")
LOOKUP_CHOICES = ("ip", "hostname")


@dataclass(frozen=True)
class PairRequest:
    hostname: str
    csr: str
    nonce: str
    lookup_by: str | None
    port: int | None
    ip: str | None

    @property
    def code(self) -> str:
        return pairing_code(self.csr)


def valid_lookup_by(value: object) -> str | None:
    return value if isinstance(value, str) and value in LOOKUP_CHOICES else None


def valid_port(value: object) -> int | None:
    """A port sent as an integer or as digits (0.12 agents send a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        number = int(value)
    else:
        return None
    return number if 1 <= number <= 65535 else None


def valid_ip(value: object) -> str | None:
    """An IPv4 or IPv6 literal in its canonical spelling, else None."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def parse_request(body: bytes) -> PairRequest:
    """Validate a request body in 0.12's order: JSON with csr and hostname,
    then the hostname rule. Optional fields that are not valid are dropped
    (as 0.12); a nonce or csr of the wrong shape is refused."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PairRequestError(REASON_INVALID, "invalid-request", "body is not JSON") from None
    if not isinstance(data, dict):
        raise PairRequestError(REASON_INVALID, "invalid-request", "body is not a JSON object")
    csr, hostname = data.get("csr"), data.get("hostname")
    if not isinstance(csr, str) or not csr or not isinstance(hostname, str) or not hostname:
        raise PairRequestError(REASON_INVALID, "invalid-request", "csr and hostname are required")
    if not is_agent_name(hostname):
        raise PairRequestError(REASON_HOSTNAME, "invalid-hostname")
    nonce = data.get("nonce")
    if nonce is None:
        nonce = ""
    elif not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise PairRequestError(REASON_INVALID, "invalid-request", "nonce is malformed")
    if len(csr.encode("utf-8")) > MAX_CSR or not csr.startswith(CSR_BEGIN):
        raise PairRequestError(
            REASON_INVALID, "invalid-csr", f"csr is not a PEM CSR of at most {MAX_CSR} bytes"
        )
    return PairRequest(
        hostname=hostname,
        csr=csr,
        nonce=nonce,
        lookup_by=valid_lookup_by(data.get("lookup_by")),
        port=valid_port(data.get("port")),
        ip=valid_ip(data.get("ip")),
    )


def queue_record(
    request: PairRequest,
    reqid: str,
    source_ip: str,
    received: str,
    reverse_dns: str,
    reverse_confirmed: bool,
) -> dict[str, Any]:
    """The `<reqid>.json` queue file (0.12's fields). `ip` is the address the
    agent reported when valid, else the connection's source."""
    return {
        "id": reqid,
        "hostname": request.hostname,
        "ip": request.ip or source_ip,
        "source_ip": source_ip,
        "csr": request.csr,
        "nonce": request.nonce,
        "lookup_by": request.lookup_by,
        "port": request.port,
        "received": received,
        "code": request.code,
        "reverse_dns": reverse_dns,
        "reverse_confirmed": 1 if reverse_confirmed else 0,
    }


def effective_lookup_by(override: str | None, queued: object) -> str:
    """Operator's choice, else the agent's hint, else `hostname`."""
    return valid_lookup_by(override) or valid_lookup_by(queued) or "hostname"


def effective_port(override: int | None, queued: object) -> int:
    return valid_port(override) or valid_port(queued) or 7443


def effective_ip(override: str | None, queued: object) -> str:
    return valid_ip(override) or valid_ip(queued) or ""


# --- messages ---------------------------------------------------------------


def error_body(reason: str) -> dict[str, Any]:
    return {"status": "error", "reason": reason}


def pending_body(reqid: str) -> dict[str, Any]:
    return {"status": "pending", "reqid": reqid}


def denied_body(reason: str) -> dict[str, Any]:
    return {"status": "denied", "reason": reason}


def approved_body(
    cert_pem: str, ca_pem: str, nonce: str, dispatcher_serial: str, dispatcher_id: str
) -> dict[str, Any]:
    return {
        "status": "approved",
        "cert": cert_pem,
        "ca": ca_pem,
        "nonce": nonce,
        "dispatcher_serial": dispatcher_serial,
        "dispatcher_id": dispatcher_id,
    }


def request_body(
    hostname: str,
    csr: str,
    nonce: str,
    lookup_by: str | None = None,
    port: int | None = None,
    ip: str | None = None,
) -> bytes:
    """What an agent sends. `port` travels as a string, as 0.12 agents send it."""
    body: dict[str, Any] = {"hostname": hostname, "csr": csr, "nonce": nonce}
    if lookup_by:
        body["lookup_by"] = lookup_by
    if port:
        body["port"] = str(port)
    if ip:
        body["ip"] = ip
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


# --- the agent's reading of the responses ----------------------------------


@dataclass(frozen=True)
class Approval:
    cert: str
    ca: str
    dispatcher_serial: str
    dispatcher_id: str


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(f"the dispatcher's {what} is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"the dispatcher's {what} is not a JSON object")
    return data


def parse_ack(body: bytes) -> str:
    """The reqid of a `pending` acknowledgement; an error raises PairingRejected."""
    data = _json_object(body, "acknowledgement")
    status = data.get("status")
    if status == "pending":
        reqid = data.get("reqid")
        if PAIRING_REQID.matches(reqid):
            return reqid
        raise ProtocolError("the dispatcher's acknowledgement has no valid reqid")
    raise PairingRejected(_reason(data, "unexpected answer"))


def parse_result(body: bytes, nonce: str) -> Approval:
    """The final response. Anything but a well-formed approval echoing our
    nonce raises PairingRejected (timed_out for `approval timeout`)."""
    data = _json_object(body, "result")
    if data.get("status") != "approved":
        reason = _reason(data, "denied")
        raise PairingRejected(reason, timed_out=reason == REASON_TIMEOUT)
    if data.get("nonce") != nonce:
        raise PairingRejected("nonce mismatch in pairing result")
    cert, ca = data.get("cert"), data.get("ca")
    if not isinstance(cert, str) or not cert or not isinstance(ca, str) or not ca:
        raise PairingRejected("approval without a certificate and CA")
    serial, ident = data.get("dispatcher_serial", ""), data.get("dispatcher_id", "")
    return Approval(
        cert=cert,
        ca=ca,
        dispatcher_serial=serial if isinstance(serial, str) else "",
        dispatcher_id=ident if isinstance(ident, str) else "",
    )


def _reason(data: dict[str, Any], default: str) -> str:
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason:
        return default
    return reason[:200]
