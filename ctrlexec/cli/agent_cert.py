"""`agent promote-cert` and `agent cert-staged`: a renewed certificate."""

from __future__ import annotations

from ..errors import EXIT_FAILURE, EXIT_OK, CtrlExecError
from .common import Context, add_command

PROMOTE_DESCRIPTION = """Install a renewed certificate waiting at cert_staging_path into the
agent's `cert` path, after checking it again (signed by the agent's CA, for
the agent's key, same CN, valid now). An invalid staged certificate is
deleted. A running agent already presents a staged certificate to new
connections; `agent serve` promotes it itself at start.

Exit status: always 0 (as 0.12, so a unit's ExecStartPre never stops the
agent); --json reports what happened."""

STAGED_DESCRIPTION = """Exit 0 when a renewed certificate is staged, 1 when none is (or the
configuration cannot be read): a guard for timers and cron jobs."""


def register(subparsers) -> None:
    add_command(
        subparsers,
        "promote-cert",
        promote_cert,
        "install a staged renewed certificate",
        PROMOTE_DESCRIPTION,
    )
    add_command(
        subparsers,
        "cert-staged",
        cert_staged,
        "exit 0 when a renewed certificate is staged",
        STAGED_DESCRIPTION,
    )


def promote_cert(ctx: Context) -> int:
    from ..agent import service
    from ..config.load import load_agent

    try:
        config = load_agent(ctx.layout, ctx.config_path)
    except CtrlExecError as exc:
        ctx.err(f"{ctx.prog}: {exc}")
        if ctx.json:  # 0.12: promote-cert never fails its ExecStartPre; it says why
            ctx.emit_json({"ok": 0, "error": str(exc), "status": "failed"})
        return EXIT_OK
    ctx.configure_logging(config.log_target, config.log_format)
    outcome = service.promote_cert(config)
    if ctx.json:
        done = outcome.status in ("installed", "none")
        ctx.emit_json(
            {"ok": 1 if done else 0, "status": outcome.status, "detail": outcome.detail}
            | ({} if done else {"error": f"staged certificate {outcome.status}: {outcome.detail}"})
        )
    elif outcome.status == "installed":
        ctx.out(f"Installed the renewed certificate (serial {outcome.detail}) at {config.cert}.")
    elif outcome.status == "none":
        ctx.out("No staged certificate; nothing to promote.")
    else:
        ctx.out(f"Staged certificate not installed ({outcome.status}): {outcome.detail}")
    return EXIT_OK


def cert_staged(ctx: Context) -> int:
    from ..agent import service
    from ..config.load import load_agent

    try:
        config = load_agent(ctx.layout, ctx.config_path)
    except CtrlExecError as exc:
        if ctx.json:
            ctx.emit_json({"ok": 0, "error": str(exc)})
        return EXIT_FAILURE
    staged = service.cert_staged(config)
    if ctx.json:
        ctx.emit_json(
            {"ok": 1 if staged else 0, "staged": staged, "path": config.cert_staging_path}
            | ({} if staged else {"error": "no staged certificate"})
        )
    return EXIT_OK if staged else EXIT_FAILURE
