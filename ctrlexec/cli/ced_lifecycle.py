"""`ced rotate-cert`, `ced serial-status`, `ced maintain`: the dispatcher
certificate's rotation and the periodic maintenance pass."""

from __future__ import annotations

from ..config.load import load_dispatcher
from ..core.report import visible
from ..errors import EXIT_FAILURE
from .common import Context, add_command, table

ROTATE_DESCRIPTION = """Replace the dispatcher's key and certificate now, keeping the old ones
for an overlap of cert_overlap_days. Every registered agent is marked
pending, then told the new serial (POST /rotate-serial, presenting the old
certificate, which it still trusts). Agents that cannot be reached now are
retried by `ced maintain` (and by `dispatcher serve`); those still pending
when the overlap ends become stale and must pair again. After the overlap
the old serial is removed from every agent's trusted map.

Needs the CA key (root). Refuses while a previous rotation's overlap is
still running, unless --force.

Exit status: 0 when every agent confirmed; 1 when any did not (they stay
pending and are retried) or the rotation failed."""

STATUS_DESCRIPTION = """Show the last rotation (current and previous serial, overlap end) and each
agent's serial status: unknown, pending (not yet confirmed), current, stale."""

MAINTAIN_DESCRIPTION = """One maintenance pass, as a timer or `dispatcher serve` runs it: ping
every agent (renewing certificates past half-life), rotate the dispatcher
certificate when at most cert_renewal_days remain, retry the serial
broadcast, mark agents stale and retire the old serial after the overlap,
purge expired run records. Each phase runs even when an earlier one fails.

Exit status: 0 when every phase ran and no renewal or broadcast failed;
1 otherwise (the --json summary and the log say what). Unreachable agents
alone do not fail the pass."""


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "rotate-cert",
        rotate_cert,
        "rotate the dispatcher certificate (with an overlap)",
        ROTATE_DESCRIPTION,
    )
    parser.add_argument(
        "--force", action="store_true", help="rotate even while an overlap is running"
    )
    add_command(
        subparsers,
        "serial-status",
        serial_status,
        "show rotation state and each agent's serial status",
        STATUS_DESCRIPTION,
    )
    add_command(subparsers, "maintain", maintain, "one maintenance pass", MAINTAIN_DESCRIPTION)


def _engine(ctx: Context):
    from ..dispatcher.engine import Engine

    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    return settings, Engine.from_config(settings, ctx.layout)


def rotate_cert(ctx: Context) -> int:
    from ..dispatcher import rotation

    settings, engine = _engine(ctx)
    rotated, sent = rotation.rotate_and_broadcast(engine, settings, force=ctx.args.force)
    if ctx.json:
        ctx.emit_json(
            {
                "ok": 1 if not sent.failed else 0,
                "new_serial": rotated.new_serial,
                "old_serial": rotated.old_serial,
                "overlap_expires": rotated.overlap_expires,
                "agents": rotated.agents,
                "updated": sent.confirmed,
                "failed": sent.failed,
                **(
                    {"error": "serial not confirmed by " + ", ".join(sorted(sent.failed))}
                    if sent.failed
                    else {}
                ),
            }
        )
    else:
        ctx.out(f"New serial:      {rotated.new_serial}")
        ctx.out(f"Old serial:      {rotated.old_serial}")
        ctx.out(f"Overlap expires: {rotated.overlap_expires}")
        ctx.out(f"Agents pending:  {rotated.agents}")
        ctx.out(f"Updated: {len(sent.confirmed)}")
        ctx.out(f"Failed:  {len(sent.failed)}")
        for name, error in sorted(sent.failed.items()):
            ctx.out(f"  {name}: {visible(error)}")
        if sent.failed:
            ctx.out(
                "Failed agents stay pending; 'ced maintain' retries them until the overlap ends."
            )
    return EXIT_FAILURE if sent.failed else 0


def serial_status(ctx: Context) -> int:
    from ..dispatcher import rotation
    from ..state import for_layout

    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    status = rotation.serial_status(settings, for_layout(settings, ctx.layout).registry)
    if ctx.json:
        ctx.emit_json(status)
        return 0
    state = status["state"]
    if state is None:
        ctx.out("No rotation has been performed.")
    else:
        ctx.out(f"Current serial:  {state['current_serial']}")
        ctx.out(f"Previous serial: {state.get('previous_serial') or '(retired)'}")
        ctx.out(f"Rotated at:      {state['rotated_at']}")
        ctx.out(f"Overlap expires: {state['overlap_expires']}")
    ctx.out("")
    rows = [("HOSTNAME", "STATUS", "CONFIRMED", "SERIAL")]
    for agent in status["agents"]:
        serial = str(agent["dispatcher_serial"])
        if len(serial) > 16:
            serial = serial[:16] + "..."
        rows.append(
            (
                str(agent["hostname"]),
                str(agent["serial_status"]),
                str(agent["serial_confirmed"] or "-"),
                serial,
            )
        )
    for line in table(rows, [30, 10, 22]):
        ctx.out(line)
    return 0


def maintain(ctx: Context) -> int:
    from ..dispatcher.maintenance import maintain_once as one_pass

    settings, engine = _engine(ctx)
    summary = one_pass(engine, settings, ctx.layout.runs_dir)
    if ctx.json:
        report = summary.to_json()
        if not summary.ok:
            report["error"] = "; ".join(
                [f"phase {phase}: {error}" for phase, error in summary.errors.items()]
                + [f"renewal failed: {name}" for name in sorted(summary.renew_failed)]
                + [f"serial broadcast failed: {name}" for name in sorted(summary.broadcast_failed)]
            )
        ctx.emit_json(report)
    else:
        ctx.out(
            f"Maintenance run: {summary.pinged}/{summary.agents} agents pinged, "
            "dispatcher cert checked."
        )
        for name in summary.renewed:
            ctx.out(f"  renewed: {name}")
        for name, error in sorted(summary.renew_failed.items()):
            ctx.out(f"  renewal failed: {name}: {visible(error)}")
        if summary.rotated:
            ctx.out(f"  rotated: new serial {summary.rotated['new_serial']}")
        for name in summary.confirmed:
            ctx.out(f"  serial confirmed: {name}")
        for name, error in sorted(summary.broadcast_failed.items()):
            ctx.out(f"  serial broadcast failed: {name}: {visible(error)}")
        for name in summary.stale:
            ctx.out(f"  stale (must pair again): {name}")
        if summary.retired:
            ctx.out(f"  retired serial {summary.retired['serial']}")
        for phase, error in summary.errors.items():
            ctx.out(f"  phase {phase} failed: {visible(error)}")
    return 0 if summary.ok else EXIT_FAILURE
