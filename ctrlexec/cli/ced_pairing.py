"""`ced list-requests`, `ced approve`, `ced deny`: deciding pairing requests
while `ced pairing-mode` holds the agents' connections open."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config.load import load_dispatcher
from ..core import pairing as wire
from ..errors import CtrlExecError
from .common import Context, add_command, table

if TYPE_CHECKING:
    from ..dispatcher.pairing_decide import Approved

# Topic modules are imported for every `ced` command (to build --help), so
# the pairing services are imported only when a pairing command runs.

# Fields of a queued request shown by `list-requests --json` (the CSR and
# the nonce stay in the queue file).
LISTED_FIELDS = (
    "hostname",
    "ip",
    "source_ip",
    "code",
    "received",
    "reverse_dns",
    "reverse_confirmed",
    "lookup_by",
    "port",
)


def settings_and_queue(ctx: Context):
    from ..dispatcher.pairing_decide import open_queue

    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    return settings, open_queue(ctx.layout.pairing_dir, settings.registry_dir, settings)


def listed(request: dict) -> dict:
    entry = {"reqid": request.get("id", "")}
    entry.update({name: request.get(name) for name in LISTED_FIELDS})
    return entry


def reverse_text(request: dict) -> str:
    name = request.get("reverse_dns") or ""
    if not name:
        return "-"
    return f"{name} ({'ok' if request.get('reverse_confirmed') else '?'})"


def request_table(requests: list[dict]) -> list[str]:
    rows = [("ID", "HOSTNAME", "SOURCE IP", "REVERSE DNS", "CODE")]
    rows += [
        (
            str(r.get("id", "?")),
            str(r.get("hostname", "?")),
            str(r.get("source_ip") or r.get("ip") or "?"),
            reverse_text(r),
            str(r.get("code", "??????")),
        )
        for r in requests
    ]
    lines = table(rows, [16, 24, 16, 28])
    return [*lines[:1], "-" * 94, *lines[1:]]


def list_requests(ctx: Context) -> int:
    _, queue = settings_and_queue(ctx)
    requests = queue.pending()
    if ctx.json:
        ctx.emit_json([listed(r) for r in requests])
        return 0
    if not requests:
        ctx.out("No pending pairing requests.")
        return 0
    for line in request_table(requests):
        ctx.out(line)
    ctx.out("")
    ctx.out("Compare CODE with the code the agent printed before approving.")
    ctx.out(
        "REVERSE DNS is this host's name for the source address; (ok) means the name "
        "resolves back to it."
    )
    return 0


def approval_lines(result: Approved) -> list[str]:
    """What the operator is told after an approval (also used in pairing mode)."""
    record, request = result.record, result.request
    name = record["hostname"]
    address = record["ip"] if record["lookup_by"] == "ip" else name
    lines = [
        f"Approved '{name}' ({record['reqid']}); the agent receives its certificate now.",
        f"  Registered: {name}  lookup_by={record['lookup_by']}  "
        f"address={address}:{record['port']}  expires {record['expiry']}",
    ]
    fixes = []
    source = request.get("source_ip") or ""
    if source and (record["lookup_by"] != "ip" or record["ip"] != source):
        fixes.append(f"    ced edit-agent {name} --lookup-by ip --ip {source}")
    reverse = request.get("reverse_dns") or ""
    if request.get("reverse_confirmed") and reverse and reverse.lower() != name.lower():
        fixes.append(f"    ced edit-agent {name} --rename {reverse}")
    if fixes:
        lines.append(
            "  If the dispatcher cannot reach it that way, change the record "
            "(no new pairing needed):"
        )
        lines += fixes
    if not record["dispatcher_serial"]:
        lines.append(
            "  WARNING: this dispatcher's certificate serial could not be read; "
            "the agent will trust no dispatcher."
        )
    return lines


def _port(text: str) -> int:
    port = wire.valid_port(text)
    if port is None:
        raise CtrlExecError("--agent-port must be a port number (1-65535)")
    return port


def approve(ctx: Context) -> int:
    args = ctx.args
    if args.ip is not None and wire.valid_ip(args.ip) is None:
        raise CtrlExecError("--ip must be an IPv4 or IPv6 address")
    from ..dispatcher import pairing_decide

    port = _port(args.agent_port) if args.agent_port is not None else None
    settings, queue = settings_and_queue(ctx)
    result = pairing_decide.approve(
        queue,
        settings,
        args.reqid,
        lookup_by=args.lookup_by,
        ip=args.ip,
        agent_port=port,
        replace=args.replace,
    )
    if ctx.json:
        ctx.emit_json(dict(result.record, ok=1, cert_serial=result.cert_serial.hex()))
        return 0
    for line in approval_lines(result):
        ctx.out(line)
    return 0


def deny(ctx: Context) -> int:
    from ..dispatcher import pairing_decide

    _, queue = settings_and_queue(ctx)
    request = pairing_decide.deny(queue, ctx.args.reqid)
    if ctx.json:
        ctx.emit_json({"ok": 1, "reqid": ctx.args.reqid, "hostname": request.get("hostname")})
        return 0
    ctx.out(f"Denied request '{ctx.args.reqid}' from '{request.get('hostname', '?')}'.")
    return 0


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "list-requests",
        list_requests,
        "show pending pairing requests",
        description="Pending pairing requests, oldest first, with the 6-digit code to compare "
        "with the agent's, the source address and its reverse DNS. Requests "
        "older than 10 minutes are dropped first.",
        epilog="--json prints an array of objects: reqid, hostname, ip, source_ip, code, "
        "received, reverse_dns, reverse_confirmed, lookup_by, port.",
    )
    parser = add_command(
        subparsers,
        "approve",
        approve,
        "approve a pairing request",
        description="Sign the agent's CSR, register the agent and hand the certificate to "
        "its waiting connection. The registry record takes the options first, "
        "then what the agent reported, then the defaults.",
    )
    parser.add_argument("reqid", help="request id from list-requests")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="approve although the hostname is already registered (replaces its record)",
    )
    parser.add_argument(
        "--lookup-by",
        choices=wire.LOOKUP_CHOICES,
        help="address the agent by its registered ip or by its hostname "
        "(default: the agent's hint, else hostname)",
    )
    parser.add_argument(
        "--ip",
        help="address to register (default: what the agent reported, else the connection's source)",
    )
    parser.add_argument(
        "--agent-port",
        metavar="PORT",
        help="the agent's port (default: what it reported, else 7443)",
    )
    parser = add_command(
        subparsers,
        "deny",
        deny,
        "deny a pairing request",
        description="Refuse a pairing request; the agent is told 'rejected by operator'.",
    )
    parser.add_argument("reqid", help="request id from list-requests")
