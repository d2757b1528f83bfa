"""`agent request-pairing`, `agent pairing-status`, `agent paired`.

The pairing exchange itself is agent/pairing.py; this module turns options
into its Request and its Outcome into text, JSON and an exit code."""

from __future__ import annotations

import os
import sys

from ..config.load import load_agent
from ..core import pairing as wire
from ..core.report import visible
from ..errors import CtrlExecError
from .common import Context, add_command


def _config(ctx: Context):
    config = load_agent(ctx.layout, ctx.config_path)
    ctx.configure_logging(config.log_target, config.log_format)
    return config


def _timeout(ctx: Context) -> float:
    args = ctx.args
    if args.timeout is None:
        return wire.BACKGROUND_TIMEOUT if args.background else wire.CLIENT_WINDOW
    if args.background and not 1 <= args.timeout <= wire.BACKGROUND_TIMEOUT_MAX:
        raise CtrlExecError(
            f"--timeout must be between 1 and {wire.BACKGROUND_TIMEOUT_MAX} "
            "seconds with --background (the dispatcher waits at most 600)"
        )
    if not 1 <= args.timeout <= wire.CLIENT_WINDOW:
        raise CtrlExecError(f"--timeout must be between 1 and {wire.CLIENT_WINDOW} seconds")
    return float(args.timeout)


def _pin(ctx: Context) -> str | None:
    if ctx.args.ca_fingerprint is None:
        return None
    from ..pki.ca import normalise_fingerprint

    try:
        return normalise_fingerprint(ctx.args.ca_fingerprint)
    except ValueError as exc:
        raise CtrlExecError(f"--ca-fingerprint: {exc}") from None


def request_pairing(ctx: Context) -> int:
    from ..agent import pairing
    from ..agent.hostname import local_hostname

    args = ctx.args
    timeout = _timeout(ctx)
    pin = _pin(ctx)
    config = _config(ctx)
    hostname = args.hostname or local_hostname()
    if "." not in hostname and not args.hostname and not ctx.json:
        ctx.err(f"note: this host has no domain name; pairing as '{hostname}'")
    port = config.pairing_port if args.port is None else args.port
    if not 1 <= port <= 65535:
        raise CtrlExecError("--port must be a port number (1-65535)")
    request = pairing.Request(
        dispatcher=args.dispatcher,
        port=port,
        hostname=hostname,
        key_type=args.key_type,
        lookup_by=args.lookup_by,
        pin=pin,
        timeout=timeout,
        background=args.background,
    )

    shown: dict[str, str] = {}

    def on_code(code: str) -> None:
        shown["code"] = code
        if not ctx.json:
            ctx.out(f"Pairing code: {code}")
            if not args.background:
                ctx.out("  Check that the dispatcher shows the same code before it is approved.")
            sys.stdout.flush()

    def on_pending(reqid: str) -> None:
        if ctx.json:
            ctx.emit_json(
                {
                    "ok": 1,
                    "status": "pending",
                    "reqid": reqid,
                    "code": shown["code"],
                    "hostname": hostname,
                }
            )
        else:
            ctx.out(
                f"Request {reqid} is waiting for the operator's decision (up to {int(timeout)}s)..."
            )
            sys.stdout.flush()

    outcome = pairing.request_pairing(config, request, on_code=on_code, on_pending=on_pending)
    if outcome.status == pairing.DETACHED:
        _print_detached(ctx, outcome)
    elif outcome.status == pairing.APPROVED:
        _print_approved(ctx, outcome)
    else:
        _print_failed(ctx, outcome)
    return outcome.exit_code


def _print_detached(ctx: Context, outcome) -> None:
    """--background: the request id (last line), and the caller gets its
    prompt back while a detached process waits (0.12's --background)."""
    if ctx.json:
        ctx.emit_json(
            {
                "ok": 1,
                "status": "pending",
                "reqid": outcome.reqid,
                "code": outcome.code,
                "hostname": outcome.hostname,
                "pid": outcome.pid,
            }
        )
    else:
        ctx.out(outcome.reqid)
    sys.stdout.flush()


def _print_approved(ctx: Context, outcome) -> None:
    stored = outcome.stored
    if ctx.json:
        ctx.emit_json(
            {
                "ok": 1,
                "status": "approved",
                "reqid": outcome.reqid,
                "code": outcome.code,
                "hostname": outcome.hostname,
                "dispatcher_id": stored.dispatcher_id,
                "dispatcher_serial": stored.dispatcher_serial,
                "cert_serial": stored.cert_serial.hex(),
                "expiry": stored.expiry,
                "trusted": stored.trusted,
            }
        )
        return
    ctx.out(
        f"Pairing complete: certificate for '{stored.subject}' stored (expires {stored.expiry})."
    )
    if stored.trusted:
        ctx.out(
            f"Trusting dispatcher '{stored.dispatcher_id}' (serial {stored.dispatcher_serial})."
        )
    else:
        ctx.err(
            "WARNING: the dispatcher sent no certificate serial; this agent trusts no "
            "dispatcher yet."
        )
    ctx.out(
        "Start the agent now, or restart it if it is running: it reads its certificate "
        "and trusted dispatchers at start."
    )


def _print_failed(ctx: Context, outcome) -> None:
    if ctx.json:
        ctx.emit_json(
            {
                "ok": 0,
                "error": outcome.reason,
                "status": outcome.status,
                "reqid": outcome.reqid,
                "reason": outcome.reason,
            }
        )
    else:
        ctx.err(f"Pairing failed: {visible(outcome.reason)}")


def pairing_status(ctx: Context) -> int:
    from ..agent import pairing_store

    config = _config(ctx)
    status = pairing_store.status(config.cert, config.key, config.ca)
    if ctx.json:
        ctx.emit_json(
            {
                "ok": 1 if status.paired else 0,
                **({} if status.paired else {"error": f"not paired: {status.reason}"}),
                "paired": status.paired,
                "reason": status.reason,
                "expiry": status.expiry,
                "subject": status.subject,
                "serial": status.serial,
            }
        )
    elif status.paired:
        ctx.out(f"Paired. Certificate expires: {status.expiry}")
        ctx.out(f"Certificate subject: {status.subject or '(empty)'}")
    else:
        ctx.out(f"Not paired. Reason: {status.reason}")
    return 0 if status.paired else 1


def paired(ctx: Context) -> int:
    from ..agent import pairing_store

    config = load_agent(ctx.layout, ctx.config_path)
    present = pairing_store.identity_files_present(config.cert, config.key, config.ca)
    if ctx.json:
        missing = [p for p in (config.cert, config.key, config.ca) if not os.path.isfile(p)]
        ctx.emit_json(
            {"ok": 1, "paired": True}
            if present
            else {"ok": 0, "paired": False, "error": "not paired: missing " + ", ".join(missing)}
        )
    return 0 if present else 1


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "request-pairing",
        request_pairing,
        "pair this agent with a dispatcher",
        description="Generate a key and a CSR, send the CSR to the dispatcher's pairing port "
        "and wait for the operator. Both sides show the same 6-digit code; "
        "compare them before approving. On approval the certificate, the CA and "
        "the dispatcher's serial are stored.",
        epilog="Exit codes: 0 stored, 2 timed out, 3 denied or failed (1: could not start).\n"
        "--background prints 'Pairing code: NNNNNN', then the request id alone on "
        "the last line,\nand waits detached; with --json one object "
        "{status, reqid, code, hostname, pid}.",
    )
    parser.add_argument(
        "--dispatcher", required=True, metavar="HOST", help="the dispatcher's name or address"
    )
    parser.add_argument(
        "--port", type=int, metavar="PORT", help="its pairing port (default: pairing_port, 7444)"
    )
    parser.add_argument(
        "--background",
        action="store_true",
        help="print the request id and wait detached (for orchestration)",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        metavar="SECONDS",
        help="how long to wait for the decision (default 30 with --background, "
        "at most 600; else 660)",
    )
    parser.add_argument(
        "--lookup-by",
        choices=wire.LOOKUP_CHOICES,
        help="suggest how the dispatcher should address this agent",
    )
    parser.add_argument(
        "--key-type",
        choices=("rsa", "ec"),
        default="rsa",
        help="rsa (2048, the default: 0.12 dispatchers refuse smaller keys, "
        "EC included) or ec (P-256)",
    )
    parser.add_argument(
        "--ca-fingerprint",
        metavar="SHA256",
        help="store nothing unless the dispatcher's CA has this SHA-256 "
        "fingerprint (shown by 'ced pairing-mode' and 'ced setup-ca')",
    )
    parser.add_argument(
        "--hostname",
        metavar="NAME",
        help="name to register under (default: this host's FQDN, else its short name)",
    )
    add_command(
        subparsers,
        "pairing-status",
        pairing_status,
        "is this agent paired?",
        description="Says whether the certificate, key and CA are in place and when "
        "the certificate expires. Exit 0 paired, 1 not.",
    )
    add_command(
        subparsers,
        "paired",
        paired,
        "exit 0 when paired (for init scripts)",
        description="Exit 0 when the certificate, key and CA files all exist, 1 "
        "otherwise. Prints nothing.",
    )
