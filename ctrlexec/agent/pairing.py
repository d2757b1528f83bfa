"""The agent's pairing workflow (`agent request-pairing`), as 0.12 runs it.

In order: refuse early what cannot work (an invalid name, directories we
cannot write, a pairing port that does not answer - all before a key
exists); generate the key and CSR and show the 6-digit code; send the
request on one connection and take the acknowledgement; wait on that
connection for the operator's decision (in a detached process with
`background`); check the approval before keeping any of it; store the
identity files and the trusted dispatcher. Every end is one log line.

Nothing here prints: the caller learns the code and the request id through
`on_code` and `on_pending` and gets an `Outcome`. The connection comes from
`connect` (pairing_client.open_connection: TCP and TLS), so the workflow
runs in tests on any connected stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import log
from ..core import pairing as wire
from ..core.digest import pairing_code
from ..core.ids import new_nonce
from ..core.names import is_agent_name
from ..detach import detach
from ..errors import CtrlExecError, OperationTimeout, PairingRejected, ProtocolError
from . import pairing_client, pairing_store

EXIT_STORED = 0
EXIT_TIMEOUT = 2
EXIT_FAILED = 3

APPROVED = "approved"
DENIED = "denied"
TIMEOUT = "timeout"
# The request was sent and a detached process waits for the decision.
DETACHED = "pending"


@dataclass(frozen=True)
class Request:
    """What to ask for, already validated by the caller's option parsing."""

    dispatcher: str
    port: int
    hostname: str
    key_type: str = "rsa"
    lookup_by: str | None = None
    pin: str | None = None  # normalised SHA-256 fingerprint of the CA
    timeout: float = wire.CLIENT_WINDOW
    background: bool = False


@dataclass(frozen=True)
class Outcome:
    status: str  # APPROVED, DENIED, TIMEOUT or DETACHED
    reqid: str
    code: str
    hostname: str
    reason: str = ""
    stored: pairing_store.Stored | None = None
    pid: int = 0  # the detached process (DETACHED only)

    @property
    def exit_code(self) -> int:
        if self.status == TIMEOUT:
            return EXIT_TIMEOUT
        if self.status == DENIED:
            return EXIT_FAILED
        return EXIT_STORED


def request_pairing(
    config,
    request: Request,
    *,
    on_code: Callable[[str], None] = lambda code: None,
    on_pending: Callable[[str], None] = lambda reqid: None,
    probe: Callable[[str, int], None] = pairing_client.probe,
    connect: Callable[[str, int], pairing_client.PairingConnection] = (
        pairing_client.open_connection
    ),
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Pair with the dispatcher; `config` is the agent's loaded configuration.

    `on_code(code)` comes once the CSR exists, before any byte is sent;
    `on_pending(reqid)` once the dispatcher has queued the request, before
    the wait (not with `background`: the Outcome then carries the request id
    and the pid of the process that waits). Raises CtrlExecError for what
    stops pairing before a request is queued."""
    from ..pki import csr, keys

    _check_can_store(config, request.hostname)
    probe(request.dispatcher, request.port)

    key = keys.generate(request.key_type)
    csr_pem = csr.build(key, request.hostname)
    code = pairing_code(csr_pem)
    nonce = new_nonce()
    on_code(code)

    connection = connect(request.dispatcher, request.port)
    try:
        body = wire.request_body(
            request.hostname,
            csr_pem,
            nonce,
            request.lookup_by,
            config.port,
            connection.local_ip,
        )
        reqid = connection.submit(body)
    except BaseException:
        connection.close()
        raise
    deadline = clock() + request.timeout

    def finish() -> Outcome:
        try:
            return _decision(config, request, connection, key, nonce, reqid, code, deadline)
        finally:
            connection.close()

    if request.background:
        # The connection now belongs to the child; the parent only forgets it
        # (closing a copy of the socket sends nothing to the dispatcher).
        child = detach(lambda report: finish().exit_code)
        return Outcome(DETACHED, reqid, code, request.hostname, pid=child.pid)
    on_pending(reqid)
    return finish()


def _check_can_store(config, hostname: str) -> None:
    if not is_agent_name(hostname):
        raise CtrlExecError(
            f"'{hostname}' cannot be an agent name (letters, digits, '.', '_', "
            "'-'); give one with --hostname"
        )
    problems = pairing_store.writable_dirs(
        [config.cert, config.key, config.ca, config.trusted_dispatchers_path]
    )
    if problems:
        raise CtrlExecError(
            "cannot write to " + ", ".join(problems) + ": run as the agent's owner or root (sudo)"
        )


def _decision(
    config,
    request: Request,
    connection: pairing_client.PairingConnection,
    key,
    nonce: str,
    reqid: str,
    code: str,
    deadline: float,
) -> Outcome:
    from ..pki import keys

    try:
        approval = connection.result(nonce, deadline)
        pairing_store.check(approval, key, connection.server_cert_der, request.pin)
    except (OperationTimeout, PairingRejected, ProtocolError) as exc:
        return _failed(request, reqid, code, exc)
    stored = pairing_store.store(
        approval,
        keys.to_pem(key),
        config.cert,
        config.key,
        config.ca,
        config.trusted_dispatchers_path,
    )
    log.event(
        "pair-complete",
        STATUS="approved",
        DISPATCHER=stored.dispatcher_id,
        DISPATCHER_HOST=request.dispatcher,
    )
    return Outcome(APPROVED, reqid, code, request.hostname, stored=stored)


def _failed(request: Request, reqid: str, code: str, exc: Exception) -> Outcome:
    timed_out = isinstance(exc, OperationTimeout) or getattr(exc, "timed_out", False)
    reason = exc.reason if isinstance(exc, PairingRejected) else str(exc)
    if timed_out:
        log.event("pair-timeout", log.WARNING, REQID=reqid)
    else:
        log.event("pair-denied", log.WARNING, REQID=reqid, REASON=reason)
    return Outcome(TIMEOUT if timed_out else DENIED, reqid, code, request.hostname, reason=reason)
