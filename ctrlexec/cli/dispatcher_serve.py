"""`dispatcher serve`: the HTTP API on port 7445."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import EXIT_OK, CtrlExecError
from .common import Context, add_command

DESCRIPTION = """Serve the dispatcher's HTTP API (default 127.0.0.1:7445), the API of
ctrl-exec 0.12's ctrl-exec-api: /ping, /run (sync and async), /discovery,
/status/<reqid>, /health, /openapi.json and /openapi-live.json.

Plain HTTP unless api_cert and api_key are set (then TLS, no client
certificate). Every request passes the auth hook as action `api`, then as the
endpoint's action; with no hook, api_auth_default decides (default: deny
everything). At most api_max_children requests are served at once; more get
503.

The maintenance pass of `ced maintain` (agent certificate renewal,
dispatcher certificate rotation, serial broadcast, stale expiry, run-record
purge) runs at start and then every cert_check_interval seconds, unless
--no-maintenance (for hosts that run `ced maintain` from a timer instead).

Runs in the foreground until SIGTERM or SIGINT: the listener closes and
requests in progress finish (a second signal stops at once). A configuration
error stops it before it listens, with exit code 78."""

EPILOG = """files (defaults; --root DIR re-bases them):
  /etc/ctrl-exec/ctrl-exec.toml      settings (docs/configuration.md)
  /var/lib/ctrl-exec/runs/           run records for /status (kept 24 hours)
  /var/lib/ctrl-exec/api.pid         written once the API is listening"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "serve", serve, "serve the HTTP API (port 7445)", DESCRIPTION, EPILOG
    )
    parser.add_argument(
        "--pidfile",
        metavar="PATH",
        help="where to write the pid once listening (default: api.pid in "
        "the dispatcher state directory)",
    )
    parser.add_argument(
        "--no-maintenance",
        action="store_true",
        help="do not run the maintenance pass every cert_check_interval seconds",
    )


def _openapi_document() -> bytes:
    from importlib import resources

    return resources.files("ctrlexec.dispatcher").joinpath("openapi.json").read_bytes()


def serve(ctx: Context) -> int:
    from .. import __version__
    from ..config.load import load_dispatcher
    from ..dispatcher.api import Api
    from ..dispatcher.api_server import ApiServer
    from ..dispatcher.api_tls import api_tls_context
    from ..dispatcher.engine import Engine
    from ..dispatcher.fanout import limit_threads
    from ..store import sweep_leftovers

    settings = load_dispatcher(ctx.layout, ctx.config_path)
    tls = api_tls_context(settings)
    ctx.configure_logging(settings.log_target, settings.log_format, daemon=True)
    engine = Engine.from_config(settings, ctx.layout, resume_sessions=True)
    engine.tls_context()  # the dispatcher cert, key and CA must be usable before we listen
    # Concurrent API operations share max_parallel fan-out threads between them.
    limit_threads(settings.max_parallel)
    store = engine.state.runs
    sweep_leftovers((settings.registry_dir, ctx.layout.runs_dir, ctx.layout.dispatcher_state))
    api = Api(
        engine,
        store,
        _openapi_document(),
        __version__,
        deny_generic=settings.auth_deny_generic,
        health_open=settings.health_open,
        metrics_open=settings.metrics_open,
        pairing_dir=ctx.layout.pairing_dir,
    )
    server = ApiServer(
        api,
        settings.api_bind,
        settings.api_port,
        settings.api_max_children,
        settings.api_request_timeout,
        tls,
        purge=store.purge,
        max_pending=settings.api_max_pending,
        max_pending_per_address=settings.api_max_pending_per_address,
    )
    where = f"{settings.api_bind}:{settings.api_port}"
    try:
        server.listen()
    except OSError as exc:
        raise CtrlExecError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    ctx.out(f"ctrl-exec API listening on {where} ({'TLS' if tls else 'plain HTTP'})")
    sys.stdout.flush()
    pidfile = (
        Path(ctx.args.pidfile) if getattr(ctx.args, "pidfile", None) else ctx.layout.api_pidfile
    )
    fleet = None
    if engine.state.kind != "files":
        from ..dispatcher.fleet import FleetLoop

        fleet = FleetLoop(engine, settings).start()
    loop = None
    if not getattr(ctx.args, "no_maintenance", False):
        from ..dispatcher.maintenance import MaintenanceLoop

        loop = MaintenanceLoop(engine, settings, ctx.layout.runs_dir).start()
    try:
        server.serve(pidfile)
    finally:
        if loop is not None:
            loop.stop()
        if fleet is not None:
            fleet.stop()
    return EXIT_OK
