"""`ced db migrate|status`: the PostgreSQL state database's schema."""

from __future__ import annotations

from ..config.load import load_dispatcher
from .common import Context, add_command

DESCRIPTION = """The schema of the PostgreSQL state database (state_backend =
"postgresql://..." in ctrl-exec.toml).

  migrate   apply every migration this build has that the database lacks;
            safe to run on several dispatchers at once (they take turns) and
            to run again (nothing left to do is not an error)
  status    the schema version of the database and of this build

A dispatcher refuses to start on an older schema: run `ced db migrate` once
after installing or upgrading, from any dispatcher of the fleet. With the
file backend there is no database and both actions fail with exit 78."""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "db", cmd_db, "state database schema: migrate or show its version", DESCRIPTION
    )
    parser.add_argument("action", choices=("migrate", "status"), help="what to do")


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
    result = admin.status(settings)
    if ctx.json:
        ctx.emit_json({"ok": 1, **result})
    else:
        state = "up to date" if result["up_to_date"] else "run 'ced db migrate'"
        ctx.out(
            f"{result['database']}: schema version {result['version']} "
            f"(this build: {result['latest']}) - {state}"
        )
        for migration in result["migrations"]:
            ctx.out(
                f"  {migration['version']:>3}  {migration['applied']}  {migration['description']}"
            )
    return 0
