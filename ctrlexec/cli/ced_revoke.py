"""`ced revoke`: revoke an agent's (or any) certificate serial."""

from __future__ import annotations

from ..config.load import load_dispatcher
from ..errors import EXIT_FAILURE
from .common import Context, add_command, usage_error

DESCRIPTION = """Revoke a certificate: `ced revoke --agent NAME` (the serial recorded when the
agent was approved or last renewed) or `ced revoke SERIAL` (hex, colon or
decimal form, as in revoked-serials files).

The serial is added to the dispatcher's list, ca_dir/revoked-serials: from
the next connection on, no dispatch (ced or the running API) goes to an
agent presenting it. --push also sends it to every registered agent, which
adds it to its own revocation list and refuses that certificate from its
next connection on (use it to cut off a lost dispatcher). Agents that could
not be told are listed: edit their revoked-serials by hand.

Exit status: 0 when recorded (and, with --push, every agent was told);
1 otherwise."""


def register(subparsers) -> None:
    parser = add_command(subparsers, "revoke", revoke, "revoke a certificate serial", DESCRIPTION)
    parser.add_argument("serial", nargs="?", metavar="SERIAL", help="certificate serial")
    parser.add_argument("--agent", metavar="NAME", help="the registered agent's certificate")
    parser.add_argument(
        "--push", action="store_true", help="also add it to every registered agent's list"
    )
    parser.add_argument(
        "--force", action="store_true", help="allow revoking this dispatcher's own serial"
    )


def revoke(ctx: Context) -> int:
    from ..dispatcher.engine import Engine
    from ..dispatcher.revoke import revoke as do_revoke

    if bool(ctx.args.agent) == bool(ctx.args.serial):
        return usage_error(ctx, "give either --agent NAME or a SERIAL")
    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    engine = Engine.from_config(settings, ctx.layout)
    done = do_revoke(
        engine,
        settings,
        agent=ctx.args.agent,
        serial=ctx.args.serial,
        push=ctx.args.push,
        force=ctx.args.force,
    )
    ok = not done.not_pushed
    if ctx.json:
        ctx.emit_json(
            {
                "ok": 1 if ok else 0,
                "serials": done.serials,
                "pushed": done.pushed,
                "not_pushed": done.not_pushed,
                **({} if ok else {"error": "not pushed to " + ", ".join(sorted(done.not_pushed))}),
            }
        )
    else:
        for serial in done.serials:
            ctx.out(f"Revoked serial {serial} (dispatcher list: {settings.ca_dir}/revoked-serials)")
        if ctx.args.push:
            ctx.out(f"Pushed to {len(done.pushed)} agent(s).")
            for name, error in sorted(done.not_pushed.items()):
                ctx.out(f"  NOT pushed to {name}: {error}")
    return 0 if ok else EXIT_FAILURE
