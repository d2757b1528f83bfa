"""`agent serve`, `agent self-check`, `agent self-ping`."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EXIT_FAILURE, EXIT_OK, CtrlExecError
from .common import Context, add_command

SERVE_DESCRIPTION = """Serve allowlisted scripts to paired dispatchers over mutual TLS (port 7443).

Runs in the foreground until SIGTERM or SIGINT (running requests get a few
seconds to finish). SIGHUP reloads scripts.toml, the schema sidecars, the
trusted-dispatcher map and the revocation list; agent.toml is read at start
only. A configuration error stops it before it listens, with exit code 78
and one line naming the file, key and line."""

SERVE_EPILOG = """files (defaults; --root DIR re-bases them):
  /etc/ctrl-exec-agent/agent.toml       settings (docs/configuration.md)
  /etc/ctrl-exec-agent/scripts.toml     the allowlist: name = "/abs/path"
  /var/lib/ctrl-exec-agent/agent.pid    written once the agent is listening"""

CHECK_DESCRIPTION = """Check, without the network, that this agent can serve: configuration,
allowlist (every script executable and inside script_dirs), certificate,
key and CA, trusted dispatchers, revocation list, auth hook.
Exits 1 when any check fails."""

PING_DESCRIPTION = """Connect to the running agent on this host with its own certificate and
send POST /ping. The agent's certificate is not a trusted dispatcher, so the
expected answer is 403 serial mismatch: the agent is up and enforcing its
policy. Exits 1 when the agent cannot be reached or answers otherwise."""


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "serve",
        serve,
        "run the agent (mTLS server on port 7443)",
        SERVE_DESCRIPTION,
        SERVE_EPILOG,
    )
    parser.add_argument(
        "--allowlist", metavar="PATH", help="allowlist to read instead of the default scripts.toml"
    )
    parser.add_argument(
        "--pidfile",
        metavar="PATH",
        help="where to write the pid once listening (default: agent.pid in "
        "the agent state directory)",
    )
    parser = add_command(
        subparsers,
        "self-check",
        self_check,
        "check offline that this agent can serve",
        CHECK_DESCRIPTION,
    )
    parser.add_argument(
        "--allowlist", metavar="PATH", help="allowlist to read instead of the default scripts.toml"
    )
    parser = add_command(
        subparsers,
        "self-ping",
        self_ping,
        "ping the running agent on this host over mTLS",
        PING_DESCRIPTION,
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up after this many seconds (default 5)",
    )


def _allowlist_path(ctx: Context) -> Path | None:
    value = getattr(ctx.args, "allowlist", None)
    return Path(value) if value else None


def serve(ctx: Context) -> int:
    from ..agent import selfcheck
    from ..agent.async_runs import AsyncRuns
    from ..agent.exec_client import ExecutorClient
    from ..agent.handlers import Endpoints
    from ..agent.identity import AgentIdentity
    from ..agent.output_budget import OutputBudget
    from ..agent.runner import Runner, ScriptExecutor
    from ..agent.server import AgentServer
    from ..agent.service import promote_at_start
    from ..agent.state import AgentRuntime
    from ..config.load import load_agent

    config = load_agent(ctx.layout, ctx.config_path)
    ctx.configure_logging(config.log_target, config.log_format, daemon=True)
    promote_at_start(config)  # a certificate renewed before a restart
    context = selfcheck.serving_context(config)
    identity = AgentIdentity(config)
    identity.context()
    runtime = AgentRuntime(config, ctx.layout, _allowlist_path(ctx), identity=identity)
    budget = OutputBudget(config.output_memory)
    # With an executor every run, synchronous or async, goes through it.
    runner: ScriptExecutor
    if config.executor_socket:
        runner = ExecutorClient(config.executor_socket, budget=budget)
    else:
        runner = Runner(budget=budget)
    async_runs = AsyncRuns(config.async_runs_dir, runner.run, release=runner.release)
    async_runs.recover()  # jobs of an agent that did not stop cleanly: interrupted
    endpoints = Endpoints(runner, async_runs=async_runs, trust_changed=runtime.trust_changed)
    server = AgentServer(runtime, context, endpoints)
    try:
        server.listen()
    except OSError as exc:
        where = f"{config.bind or '*'}:{config.port}"
        raise CtrlExecError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    if config.metrics_port:
        from ..agent import metrics

        try:
            metrics.start_listener(config.metrics_port, metrics.AgentMetrics())
        except OSError as exc:
            raise CtrlExecError(
                f"cannot listen on 127.0.0.1:{config.metrics_port} (metrics_port): "
                f"{exc.strerror or exc}"
            ) from None
    pidfile = (
        Path(ctx.args.pidfile) if getattr(ctx.args, "pidfile", None) else ctx.layout.agent_pidfile
    )
    if ctx.json:  # for a supervisor that reads stdout: where it listens, then nothing more
        ctx.emit_json(
            {"ok": 1, "pid": os.getpid(), "port": config.port, "bind": config.bind or "*"}
        )
    server.serve(pidfile)
    return EXIT_OK


def self_check(ctx: Context) -> int:
    from ..agent import selfcheck

    results = selfcheck.checks(ctx.layout, ctx.config_path, _allowlist_path(ctx))
    ok = all(check.ok for check in results)
    if ctx.json:
        report: dict = {"ok": ok, "checks": [check.as_dict() for check in results]}
        if not ok:
            failed = [check.name for check in results if not check.ok]
            report["error"] = "failed: " + ", ".join(failed)
        ctx.emit_json(report)
    else:
        for check in results:
            mark = "WARN" if check.warning else ("ok" if check.ok else "FAIL")
            if check.name.startswith("script "):
                ctx.out(f"  {check.detail}")
            else:
                ctx.out(f"{check.name + ':':<21} {check.detail}  [{mark}]")
        ctx.out("Self-check passed." if ok else "Self-check FAILED.")
    return EXIT_OK if ok else EXIT_FAILURE


def self_ping(ctx: Context) -> int:
    from ..agent import selfcheck
    from ..config.load import load_agent
    from ..errors import ConfigError

    try:
        config = load_agent(ctx.layout, ctx.config_path)
    except ConfigError as exc:  # 0.12: a config problem is a failed ping (1), not 78
        ctx.err(f"{ctx.prog}: {exc}")
        if ctx.json:
            ctx.emit_json({"ok": False, "stage": "config", "error": str(exc)})
        return EXIT_FAILURE
    host = selfcheck.loopback_address(config)
    absent = selfcheck.missing_identity(config)
    if absent:
        outcome = selfcheck.PingOutcome(False, "config", f"not paired: {absent[1]} is missing")
    else:
        outcome = selfcheck.self_ping(config, ctx.args.timeout)
    if ctx.json:
        ctx.emit_json(
            {
                "ok": outcome.ok,
                "stage": outcome.stage,
                "detail": outcome.detail,
                "host": host,
                "port": config.port,
                "status": outcome.status,
                "reply": outcome.body,
                **({} if outcome.ok else {"error": outcome.detail}),
            }
        )
        return EXIT_OK if outcome.ok else EXIT_FAILURE
    ctx.out("Checking config...")
    ctx.out(f"  Config OK (port {config.port})")
    if outcome.stage == "config":
        ctx.out(f"  {outcome.detail}")
        return EXIT_FAILURE
    from ..agent.state import cert_expiry

    ctx.out(f"  Paired: yes (cert expires {cert_expiry(config.cert)})")
    ctx.out(f"Connecting to {host}:{config.port}...")
    if outcome.stage == "connect":
        ctx.out(f"  Port {config.port}: not listening ({outcome.detail})")
        return EXIT_FAILURE
    ctx.out(f"  Port {config.port}: listening")
    if outcome.stage == "handshake":
        ctx.out(f"  mTLS handshake: FAILED ({outcome.detail})")
        return EXIT_FAILURE
    ctx.out("  mTLS handshake: OK")
    ctx.out(f"  Ping response: {outcome.detail}")
    ctx.out("Self-ping complete." if outcome.ok else "Self-ping FAILED.")
    return EXIT_OK if outcome.ok else EXIT_FAILURE
