"""`ced list-agents`, `ced edit-agent`, `ced unpair`: the registry of paired
agents (one JSON record per agent, operations.md §3.8)."""

from __future__ import annotations

import time

from .. import log
from ..config.load import load_dispatcher
from ..core import pairing as wire
from ..core.names import TAG_KEY, is_agent_name
from ..core.report import visible
from ..core.results import HostResult
from ..core.timefmt import parse_openssl_notafter
from ..dispatcher.registry import DEFAULT_AGENT_PORT, Registry, UnknownAgents
from ..errors import CtrlExecError
from .common import Context, add_command, table


def _registry(ctx: Context) -> Registry:
    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    from ..state import for_layout

    return for_layout(settings, ctx.layout).registry  # type: ignore[return-value]


def parse_tags(text: str) -> dict[str, str]:
    """`k=v[,k=v]`: every pair must match (exact values, no commas in them)."""
    wanted = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not TAG_KEY.fullmatch(key):
            raise CtrlExecError(f"invalid --tags filter: {part.strip()!r} is not key=value")
        wanted[key] = value
    return wanted


def tags_match(record: dict, wanted: dict[str, str]) -> bool:
    tags = record.get("tags")
    tags = tags if isinstance(tags, dict) else {}
    return all(key in tags and str(tags[key]) == value for key, value in wanted.items())


def days_left(expiry: object, now: float) -> str:
    epoch = parse_openssl_notafter(expiry) if isinstance(expiry, str) else None
    return "?" if epoch is None else str(int((epoch - now) // 86400))


def _refresh_tags(ctx: Context) -> list[HostResult]:
    """Ask every agent for its capabilities (gated as `ping`, as 0.12's
    discovery) so the registry's cached tags are current; the failures."""
    from ..core.caller import Caller
    from ..dispatcher.engine import Engine

    settings = load_dispatcher(ctx.layout, ctx.config_path)
    engine = Engine.from_config(settings, ctx.layout)
    names = engine.registry.names()
    if not names:
        return []
    results = engine.discover(names, caller=Caller())
    return [result for result in results if result.failed]


def list_agents(ctx: Context) -> int:
    registry = _registry(ctx)
    if ctx.args.refresh:
        for failed in _refresh_tags(ctx):
            ctx.err(
                f"warning: {visible(failed.wire.get('host'))}: "
                f"{visible(failed.wire.get('error', 'no answer'))} "
                "(its cached tags are unchanged)"
            )
    records = list(registry.records())
    if ctx.args.tags:
        wanted = parse_tags(ctx.args.tags)
        records = [r for r in records if tags_match(r, wanted)]
    if ctx.json:
        ctx.emit_json(records)
        return 0
    if not records:
        ctx.out(
            "No agents match the tag filter."
            if ctx.args.tags is not None
            else "No registered agents."
        )
        return 0
    now = time.time()
    show_tags = ctx.args.tags is not None
    head = ("HOSTNAME", "IP", "PORT", "LOOKUP", "PAIRED", "CERT EXPIRY", "DAYS LEFT")
    rows = [(*head, "TAGS") if show_tags else head]
    for r in records:
        row = (
            str(r.get("hostname", "?")),
            str(r.get("ip") or "?"),
            str(r.get("port") or DEFAULT_AGENT_PORT),
            str(r.get("lookup_by") or "hostname"),
            str(r.get("paired") or "?"),
            str(r.get("expiry") or "?"),
            days_left(r.get("expiry"), now),
        )
        rows.append((*row, tags_text(r.get("tags"))) if show_tags else row)
    lines = table(rows, [30, 16, 5, 8, 22, 24, 9] if show_tags else [30, 16, 5, 8, 22, 24])
    for line in [lines[0], "-" * (124 if show_tags else 112), *lines[1:]]:
        ctx.out(line)
    return 0


def tags_text(tags: object) -> str:
    if not isinstance(tags, dict) or not tags:
        return "-"
    # tags are what an agent reported: shown, never sent to the terminal
    return ",".join(f"{visible(key)}={visible(value)}" for key, value in sorted(tags.items()))


def edit_agent(ctx: Context) -> int:
    args = ctx.args
    if (
        args.rename is None
        and args.ip is None
        and args.agent_port is None
        and args.lookup_by is None
    ):
        raise CtrlExecError(
            "nothing to change: give at least one of --rename, --ip, --agent-port, --lookup-by"
        )
    if args.rename is not None and not is_agent_name(args.rename):
        raise CtrlExecError(
            f"--rename: {args.rename!r} is not a valid agent name "
            "(letters, digits, '.', '_', '-'; starting with a letter or digit)"
        )
    if args.ip is not None and wire.valid_ip(args.ip) is None:
        raise CtrlExecError("--ip must be an IPv4 or IPv6 address")
    port = None
    if args.agent_port is not None:
        port = wire.valid_port(args.agent_port)
        if port is None:
            raise CtrlExecError("--agent-port must be a port number (1-65535)")
    registry = _registry(ctx)
    with registry.lock():
        record = registry.get(args.name)
        if record is None:
            raise UnknownAgents([args.name])
        if args.ip is not None:
            record["ip"] = wire.valid_ip(args.ip)
        if port is not None:
            record["port"] = port
        if args.lookup_by is not None:
            record["lookup_by"] = args.lookup_by
        if args.rename is not None and args.rename != args.name:
            if registry.get(args.rename) is not None:
                raise CtrlExecError(f"an agent named '{args.rename}' is already registered")
            record["hostname"] = args.rename
            registry.put(record)  # the new name first: a crash leaves both, never neither
            registry.discard(args.name)
        else:
            registry.put(record)
    fields = {"RENAMED_FROM": args.name} if args.rename not in (None, args.name) else {}
    if args.ip is not None:
        fields["IP"] = record["ip"]
    if port is not None:
        fields["PORT"] = record["port"]
    if args.lookup_by is not None:
        fields["LOOKUP_BY"] = record["lookup_by"]
    log.event("edit-agent", AGENT=record["hostname"], **fields)
    if ctx.json:
        ctx.emit_json(record)
        return 0
    ctx.out(f"Updated agent '{record['hostname']}'.")
    if "RENAMED_FROM" in fields:
        ctx.out(f"  renamed from: {args.name}")
    ctx.out(f"  ip:        {record.get('ip') or ''}")
    ctx.out(f"  port:      {record.get('port') or DEFAULT_AGENT_PORT}")
    ctx.out(f"  lookup_by: {record.get('lookup_by') or 'hostname'}")
    return 0


def unpair(ctx: Context) -> int:
    registry = _registry(ctx)
    if not is_agent_name(ctx.args.name):
        raise UnknownAgents([ctx.args.name])
    record = registry.delete(ctx.args.name)
    if record is None:
        raise UnknownAgents([ctx.args.name])
    expiry = record.get("expiry") or "unknown"
    log.event("unpair", AGENT=ctx.args.name, EXPIRY=expiry)
    if ctx.json:
        ctx.emit_json({"ok": 1, "hostname": ctx.args.name, "expiry": expiry})
        return 0
    ctx.out(f"Unregistered '{ctx.args.name}'.")
    ctx.out(f"WARNING: Agent certificate remains valid until: {expiry}")
    ctx.out(
        "Its key still proves membership of this CA until then: decommission the agent "
        "(delete its agent.key and agent.crt) or add the certificate's serial to the "
        "revocation lists."
    )
    return 0


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "list-agents",
        list_agents,
        "list paired agents",
        description="The registry: every paired agent, how the dispatcher reaches it and "
        "when its certificate expires.",
        epilog="--json prints the registry records as an array.",
    )
    parser.add_argument(
        "--tags",
        nargs="?",
        const="",
        metavar="K=V[,K=V]",
        help="show each agent's tags (as its last discovery reported them); with "
        "K=V[,K=V], only agents whose tags have all these exact values",
    )
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="ask every agent for its tags first (GET /capabilities; the auth hook "
        "is asked with action `ping`, as for discovery)",
    )
    parser = add_command(
        subparsers,
        "edit-agent",
        edit_agent,
        "change an agent's registry record",
        description="Change how the dispatcher names or reaches an agent, without pairing it "
        "again (its certificate is not tied to the name).",
    )
    parser.add_argument("name", help="registered agent name")
    parser.add_argument("--rename", metavar="NEW", help="new registry name")
    parser.add_argument("--ip", help="address to connect to when lookup_by is ip")
    parser.add_argument("--agent-port", metavar="PORT", help="the agent's port")
    parser.add_argument(
        "--lookup-by",
        choices=wire.LOOKUP_CHOICES,
        help="connect by the registered ip or by the name",
    )
    parser = add_command(
        subparsers,
        "unpair",
        unpair,
        "remove an agent from the registry",
        description="Forget a paired agent. Its certificate stays valid until it expires.",
    )
    parser.add_argument("name", help="registered agent name")
