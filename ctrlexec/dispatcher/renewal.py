"""Agent certificate renewal from the dispatcher side (protocol.md §5).

After a ping, every agent that answered ok, holds no staged certificate and
has less than half of `cert_days` (default 365) left is renewed over the
live mTLS channel, each step its own connection:

1. `POST /renew {reqid}`: the agent answers a CSR made from its own key;
2. the CA signs it for `cert_days`, only if its CN is the agent's registered
   certificate CN (the registry name for records without one);
3. `POST /renew-complete {cert, ca, reqid}`: done only when the agent
   answers `status: "ok"` (0.12 takes any HTTP 200);
4. the registry record gets the new expiry, serial and fingerprint.

A failure at any step is logged (`renew ERROR=...`) and leaves the agent
on its current certificate; it never changes the ping result. Signing
needs the CA key: without read access (an operator who is not root) the
renewal is skipped and logged once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import log
from ..core import lifecycle
from ..core.results import HostResult, failure_text, known_failure
from ..errors import CtrlExecError
from .engine import Engine
from .registry import Target


@dataclass(frozen=True)
class Renewal:
    host: str
    ok: bool
    detail: str  # new expiry, or the error


def _fail(target: Target, reqid: str, error: str) -> Renewal:
    log.event("renew", log.ERR, TARGET=target.label, ERROR=error[:200], REQID=reqid)
    return Renewal(target.name, False, error)


def renew_one(engine: Engine, settings, target: Target, now: float) -> Renewal:
    from ..pki import ca

    reqid = engine.new_reqid()
    log.event("renew", log.INFO, TARGET=target.label, STATUS="starting", REQID=reqid)
    reply, failure, _ = engine.post(target, "/renew", {"reqid": reqid})
    if reply is None:
        return _fail(
            target, reqid, failure_text(known_failure(failure), settings.read_timeout, "renew")
        )
    body = lifecycle.reply_ok(reply.body) if reply.ok else None
    csr_pem = lifecycle.text_field(body or {}, "csr")
    if not csr_pem:
        detail = lifecycle.reply_error(reply.body, f"HTTP {reply.status}")
        return _fail(target, reqid, f"no CSR in renew response ({detail})")
    record = engine.registry.get(target.name) or {}
    expected_cn = str(record.get("cert_cn") or target.name)
    paths = ca.CAPaths(Path(settings.ca_dir))
    try:
        issued = ca.sign_csr(
            paths,
            csr_pem,
            days=settings.cert_days or lifecycle.AGENT_RENEWAL_DAYS,
            expected_cn=expected_cn,
            now=now,
        )
        ca_pem = ca.read_ca_pem(paths)
    except CtrlExecError as exc:
        return _fail(target, reqid, f"signing refused: {exc}")
    new_serial = issued.serial.hex()
    try:
        # Accepted as this agent's identity from now on, even if the answer
        # to /renew-complete is lost after the agent staged it.
        engine.registry.update(
            target.name, lambda rec: rec.__setitem__("cert_serial_next", new_serial)
        )
    except (CtrlExecError, OSError) as exc:
        return _fail(target, reqid, f"registry not writable: {exc}")
    reply, failure, _ = engine.post(
        target, "/renew-complete", {"cert": issued.cert_pem, "ca": ca_pem, "reqid": reqid}
    )
    if reply is None:
        return _fail(
            target, reqid, failure_text(known_failure(failure), settings.read_timeout, "renew")
        )
    if not reply.ok or lifecycle.reply_ok(reply.body) is None:
        detail = lifecycle.reply_error(reply.body, f"HTTP {reply.status}")
        return _fail(target, reqid, f"agent refused the renewed cert: {detail}")
    fingerprint = ca.fingerprint(issued.cert_pem)

    def change(rec: dict) -> None:
        rec["expiry"] = issued.expiry
        rec["cert_serial"] = new_serial
        rec["cert_fingerprint"] = fingerprint
        rec.pop("cert_serial_next", None)
        rec.setdefault("cert_cn", expected_cn)

    try:
        engine.registry.update(target.name, change)
    except (CtrlExecError, OSError) as exc:
        return _fail(target, reqid, f"renewed, but the registry was not updated: {exc}")
    log.event("renew-complete", log.INFO, TARGET=target.label, EXPIRY=issued.expiry, REQID=reqid)
    return Renewal(target.name, True, issued.expiry)


def ca_key_readable(settings) -> bool:
    return os.access(Path(settings.ca_dir) / "ca.key", os.R_OK)


def renew_due(
    engine: Engine,
    settings,
    targets: list[Target],
    ping_results: Sequence[HostResult],
    now: float | None = None,
) -> list[Renewal]:
    """Renew every agent whose ping result asks for it (targets and results
    in the same order)."""
    now = time.time() if now is None else now
    due = [
        target
        for target, result in zip(targets, ping_results, strict=True)
        if lifecycle.ping_wants_renewal(result, now, settings.cert_days)
    ]
    if not due:
        return []
    if not ca_key_readable(settings):
        log.event(
            "renew",
            log.WARNING,
            HOSTS=",".join(t.name for t in due),
            ERROR="renewal due but the CA key is not readable (run as root)",
        )
        return [Renewal(t.name, False, "CA key not readable") for t in due]
    return [renew_one(engine, settings, target, now) for target in due]


def ping_and_renew(engine: Engine, settings, hosts: list[str], **ping_args) -> list[HostResult]:
    """`ced ping`: the ping results (0.12's), then renewals for the agents
    that need one (renewal never changes the results)."""
    results = engine.ping(hosts, **ping_args)
    now = time.time()
    # The registry is read again only when an agent asks for renewal: a ping
    # of thousands of healthy agents reads each record once.
    if any(lifecycle.ping_wants_renewal(result, now, settings.cert_days) for result in results):
        targets = engine.resolve(hosts, ping_args.get("port"))
        renew_due(engine, settings, targets, results, now)
    return results
