"""`ced db migrate|status|accept`: the PostgreSQL state database's schema,
and the database cluster this host accepts."""

from __future__ import annotations

from ..config.load import load_dispatcher
from .common import Context, add_command

DESCRIPTION = """The schema of the PostgreSQL state database (state_backend =
"postgresql://..." in ctrl-exec.toml).

  migrate   apply every migration this build has that the database lacks;
            safe to run on several dispatchers at once (they take turns) and
            to run again (nothing left to do is not an error)
  status    the schema version of the database and of this build, and the
            cluster and timeline this host last used
  accept    record the cluster the host list now leads to as the one this
            host uses (after rebuilding or restoring the database on
            purpose, or a major upgrade of PostgreSQL): every listed server
            is looked at and the writable one on the highest timeline is
            recorded. Run it on every dispatcher host, then restart
            `dispatcher serve` there.

A dispatcher refuses to start on an older schema: run `ced db migrate` once
after installing or upgrading, from any dispatcher of the fleet.

Each host remembers the PostgreSQL cluster (system identifier) and timeline
it last used, in postgresql-lineage.json beside rotation.json, and never
uses a server of another cluster or on a lower timeline (an old primary
that came back writable after a failover): requests that need the state
fail until the promoted server is back, or until `ced db accept` records
another cluster. With the file backend there is no database and every
action fails with exit 78."""


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "db",
        cmd_db,
        "state database: migrate the schema, show its version, accept a rebuilt cluster",
        DESCRIPTION,
    )
    parser.add_argument("action", choices=("migrate", "status", "accept"), help="what to do")


def cmd_db(ctx: Context) -> int:
    from ..state import admin

    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    if ctx.args.action == "migrate":
        result = admin.migrate(settings)
        if ctx.json:
            ctx.emit_json({"ok": 1, **result})
        elif result["applied"]:
            done = ", ".join(str(v) for v in result["applied"])
            ctx.out(
                f"{result['database']}: applied migration(s) {done}; schema version now "
                f"{result['version']}"
            )
        else:
            ctx.out(f"{result['database']}: schema version {result['version']}, up to date")
        return 0
    if ctx.args.action == "accept":
        return _accept(ctx, admin.accept(settings))
    result = admin.status(settings)
    if ctx.json:
        ctx.emit_json({"ok": 1, **result})
    else:
        state = "up to date" if result["up_to_date"] else "run 'ced db migrate'"
        ctx.out(
            f"{result['database']}: schema version {result['version']} "
            f"(this build: {result['latest']}) - {state}"
        )
        lineage = result["lineage"]
        if lineage is not None:
            ctx.out(f"  cluster {lineage['system']}, timeline {lineage['timeline']} (last used)")
        for migration in result["migrations"]:
            ctx.out(
                f"  {migration['version']:>3}  {migration['applied']}  {migration['description']}"
            )
    return 0


def _accept(ctx: Context, result: dict) -> int:
    if ctx.json:
        ctx.emit_json({"ok": 1, **result})
        return 0
    previous = result["previous"]
    was = (
        f"cluster {previous['system']}, timeline {previous['timeline']}"
        if previous
        else "nothing recorded"
    )
    ctx.out(
        f"{result['database']}: accepted {result['server']}, cluster {result['system']}, "
        f"timeline {result['timeline']} (was: {was}); recorded in {result['record']}"
    )
    for entry in result["servers"]:
        state = f"timeline {entry['timeline']}" if entry["writable"] else entry["error"]
        ctx.out(f"  {entry['server']}: {state}")
    ctx.out("restart dispatcher serve on this host for it to take effect")
    return 0
