"""`ced import-config` and `agent import-config`: 0.12 `.conf` files to TOML."""

from __future__ import annotations

from ..config.importer import import_config
from .common import Context, add_command

EPILOG = """Reads ctrl-exec 0.12's files from the configuration directory
(ctrl-exec.conf for ced; agent.conf and scripts.conf for the agent), converts
them to TOML with their comments, checks that the result loads, and writes
ctrl-exec.toml / agent.toml / scripts.toml beside them with the same mode and
owner. Existing TOML files are kept unless --force. Until converted, the
0.12 files are read directly (docs/upgrade.md)."""


def _handler(role: str):
    def handler(ctx: Context) -> int:
        results = import_config(ctx.layout, role, write=not ctx.args.dry_run, force=ctx.args.force)
        if ctx.json:
            files = [
                {
                    "source": str(r.source),
                    "target": str(r.target),
                    "written": r.written,
                    "skipped": r.skipped_reason or None,
                    **({"toml": r.toml} if ctx.args.dry_run else {}),
                }
                for r in results
            ]
            ctx.emit_json({"ok": 1, "files": files})
            return 0
        for result in results:
            if ctx.args.dry_run:
                ctx.out(f"# ---- {result.target} (from {result.source})")
                ctx.out(result.toml.rstrip("\n"))
            elif result.written:
                ctx.out(f"wrote {result.target} (from {result.source})")
            else:
                ctx.out(f"kept {result.target}: {result.skipped_reason}")
        return 0

    return handler


def register_for(subparsers, role: str) -> None:
    parser = add_command(
        subparsers,
        "import-config",
        _handler(role),
        "convert ctrl-exec 0.12 .conf files to TOML, keeping comments",
        description="Convert ctrl-exec 0.12's .conf files to TOML, keeping their comments.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the TOML instead of writing it"
    )
    parser.add_argument("--force", action="store_true", help="replace existing TOML files")
