"""The operator's decisions on queued pairing requests: approve and deny.

Approval (protocol.md §4.8): take the operator's overrides, else the agent's
hints, else the defaults; validate and sign the CSR (binding its CN to the
requested hostname); read the serial of the certificate this dispatcher
presents; then commit the approval body and the registry record together
(pairing_queue.py explains the commit).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import log
from ..core import pairing as wire
from ..core.serial import Serial
from ..core.timefmt import iso_utc
from ..errors import StateError
from ..pki import ca, revocation
from ..pki import csr as csr_rules
from .identity import dispatcher_id, dispatcher_serial
from .pairing_queue import PairingQueue
from .registry import Registry, new_record

# Keys of revoked certificates, in ca_dir: never certified again.
REVOKED_KEYS = "revoked-keys"


@dataclass(frozen=True)
class Approved:
    request: dict
    record: dict
    cert_serial: Serial


def open_queue(pairing_dir: str | Path, registry_dir: str | Path, settings=None) -> PairingQueue:
    """The queue of the configured state backend (files without `settings`)."""
    if settings is not None and getattr(settings, "state_backend", "files") != "files":
        from ..state import open_state

        queue = open_state(settings, os.devnull, os.devnull, pairing_dir).pairing_queue()
        return queue  # type: ignore[return-value]
    return PairingQueue(pairing_dir, Registry(registry_dir))


def approve(
    queue: PairingQueue,
    settings,
    reqid: str,
    lookup_by: str | None = None,
    ip: str | None = None,
    agent_port: int | None = None,
    now: float | None = None,
    replace: bool = False,
) -> Approved:
    """Sign and register. Raises StateError (no such request, no CA, no
    dispatcher cert) or CsrRejected; nothing is registered then."""
    ca_paths = ca.CAPaths(Path(settings.ca_dir))
    serial_key = dispatcher_serial(settings.cert)
    ident = dispatcher_id(settings.dispatcher_id)
    with queue.lock():
        queue.tidy()
        request = queue.get_pending(reqid)
        key_digest = csr_rules.validate(request["csr"]).key_sha256
        if key_digest in revocation.read_keys(Path(settings.ca_dir) / REVOKED_KEYS):
            raise StateError(
                f"request {reqid} carries the key of a revoked certificate: never certified again"
            )
        existing = queue.registry.get(request["hostname"])
        if existing is not None and not replace:
            raise StateError(
                f"agent '{request['hostname']}' is already registered (paired "
                f"{existing.get('paired') or '?'}, address {existing.get('ip') or '?'}); "
                "approving this request would replace that record and trust a new key "
                f"for the name: check the request, then 'approve {reqid} --replace' "
                "(revoke the old certificate with 'ced revoke --agent NAME' first if the "
                "old host is not coming back)"
            )
        issued = ca.sign_csr(ca_paths, request["csr"], expected_cn=request["hostname"], now=now)
        stamp = iso_utc(time.time() if now is None else now)
        body = wire.approved_body(
            issued.cert_pem,
            ca.read_ca_pem(ca_paths),
            str(request.get("nonce") or ""),
            serial_key,
            ident,
        )
        record = new_record(
            hostname=request["hostname"],
            ip=wire.effective_ip(ip, request.get("ip")),
            paired=stamp,
            expiry=issued.expiry,
            reqid=reqid,
            lookup_by=wire.effective_lookup_by(lookup_by, request.get("lookup_by")),
            port=wire.effective_port(agent_port, request.get("port")),
            dispatcher_serial=serial_key,
            serial_status="current" if serial_key else "unknown",
            serial_confirmed=stamp if serial_key else "",
        )
        # Who the agent is on later connections (checked by the dispatcher).
        record["cert_serial"] = issued.serial.hex()
        record["cert_fingerprint"] = ca.fingerprint(issued.cert_pem)
        record["cert_cn"] = request["hostname"]
        record["cert_key_sha256"] = key_digest
        queue.commit_approval(reqid, body, record)
    log.event("pair-approve", AGENT=request["hostname"], REQID=reqid)
    return Approved(request, record, issued.serial)


def deny(queue: PairingQueue, reqid: str) -> dict:
    with queue.lock():
        queue.tidy()
        request = queue.deny(reqid, wire.denied_body(wire.REASON_REJECTED))
    log.event("pair-deny", AGENT=request.get("hostname", "?"), REQID=reqid)
    return request
