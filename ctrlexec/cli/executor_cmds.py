"""`executor serve` and `executor resolve`."""

from __future__ import annotations

from pathlib import Path

from ..errors import EXIT_OK
from .common import Context, add_command

DEFAULT_AGENT_USER = "ctrl-exec-agent"

SERVE_DESCRIPTION = """Run the privileged executor (as root) on a Unix socket for the local agent.

The agent (with executor_socket set in agent.toml) sends every run here,
synchronous and async. Only the agent's user and root may connect
(SO_PEERCRED; the socket is 0600 and owned by the agent's user). For each
request the executor re-reads agent.toml and scripts.toml, resolves the
script itself, and runs it with its profile applied: run_as (user, groups),
caps (bounding, permitted, effective, inheritable and ambient sets),
writable (a private mount namespace, everything else read-only, a private
/tmp), no_new_privileges. The agent's configuration and state directories
are read-only to every script. A profile the kernel cannot apply is not
run. SIGTERM stops it; SIGHUP is accepted (configuration is read per
request). Exit 78 when it cannot serve safely (not root, bad config)."""

SERVE_EPILOG = """default socket: executor_socket from agent.toml, else
/run/ctrl-exec-agent/exec.sock (docs/executor.md)."""

RESOLVE_DESCRIPTION = """Show what the executor would do for SCRIPT, from these files alone:
`OK path=P|profile=N|run_as=U|nnp=0/1|caps=A,B|writable=/a:/b` (0.12's
line) followed by the user's ids and groups and the read-only directories,
or `DENY <reason>`. Exit 0 for either answer, 2 when a file cannot be read."""


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "serve",
        serve,
        "run the privileged executor on its Unix socket (root)",
        SERVE_DESCRIPTION,
        SERVE_EPILOG,
    )
    parser.add_argument("--socket", metavar="PATH", help="Unix socket to listen on")
    parser.add_argument(
        "--agent-user",
        default=DEFAULT_AGENT_USER,
        metavar="USER",
        help=f"the agent's user: it and root may connect (default {DEFAULT_AGENT_USER})",
    )
    parser.add_argument(
        "--allowlist", metavar="PATH", help="allowlist to read instead of the default scripts.toml"
    )
    parser = add_command(
        subparsers,
        "resolve",
        resolve,
        "show the executor's decision for one script",
        RESOLVE_DESCRIPTION,
    )
    parser.add_argument("agent_toml", metavar="AGENT_TOML")
    parser.add_argument("scripts_toml", metavar="SCRIPTS_TOML")
    parser.add_argument("script", metavar="SCRIPT")
    parser.add_argument(
        "--agent-user",
        default=None,
        metavar="USER",
        help="who scripts run as when their profile has no run_as "
        f"(default {DEFAULT_AGENT_USER} if it exists, else the current user)",
    )


def serve(ctx: Context) -> int:
    from ..executor import server

    server.run(
        ctx.layout,
        ctx.config_path,
        Path(ctx.args.allowlist) if ctx.args.allowlist else None,
        Path(ctx.args.socket) if ctx.args.socket else None,
        ctx.args.agent_user,
        lambda config: ctx.configure_logging(config.log_target, config.log_format),
    )
    return EXIT_OK


def resolve(ctx: Context) -> int:
    from ..executor import decision

    outcome = decision.resolve(
        ctx.layout,
        Path(ctx.args.agent_toml),
        Path(ctx.args.scripts_toml),
        ctx.args.script,
        ctx.args.agent_user,
    )
    if ctx.json:
        ctx.emit_json(outcome.as_dict())
    else:
        for line in outcome.lines():
            ctx.out(line)
    return outcome.exit_code
