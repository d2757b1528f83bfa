"""`ced status` and `ced wait`: follow a run recorded in the run store.

A record is written by every API run and by `ced run --async`. For an
async run, each call first asks the agents still pending for their result
(`/result/<reqid>`) and records what they said. Output is 0.12's: text for
people, `{"ok":1,...record...}` with `--json`; an unknown reqid prints
`No such request: <reqid>` (or `{"ok":0,"error":"not found","reqid":...}`)
and exits 1.
"""

from __future__ import annotations

import argparse
import json
import time

from ..core import report, run_record
from ..errors import EXIT_FAILURE
from .ced_run import port_number
from .common import Context, add_command

# 0.12 polls every 2 seconds for at most 300 seconds.
DEFAULT_TIMEOUT = 300
DEFAULT_INTERVAL = 2.0
EXIT_PENDING = 2

STATUS_EPILOG = """Exit status: 0 when the run is known (finished or not); 1 when there is
no such run (never recorded, or older than 24 hours)."""

WAIT_EPILOG = """Exit status: 0 when the run finished and every host exited 0; 1 when it
finished with a failure (busy, error, expired, interrupted or a non-zero
exit) or there is no such run; 2 when it was still running at --timeout."""


def _seconds(minimum: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not minimum <= value <= 86_400:
            raise argparse.ArgumentTypeError(f"must be between {minimum:g} and 86400")
        return value

    return parse


def register(subparsers) -> None:
    status = add_command(
        subparsers,
        "status",
        cmd_status,
        "show the progress and results of a run",
        description="Show a recorded run: a synchronous API run's results, "
        "or an async run's progress (pending agents are asked "
        "for their results first).",
        epilog=STATUS_EPILOG,
    )
    status.add_argument("reqid", metavar="REQID", help="the run's request id")
    _port_option(status)
    wait = add_command(
        subparsers,
        "wait",
        cmd_wait,
        "wait for an async run to finish",
        description="Poll an async run until every agent has finished, then "
        "show it as `status` does.",
        epilog=WAIT_EPILOG,
    )
    wait.add_argument("reqid", metavar="REQID", help="the run's request id")
    _port_option(wait)
    wait.add_argument(
        "--timeout",
        type=_seconds(0),
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"stop waiting after this long (default {DEFAULT_TIMEOUT})",
    )
    wait.add_argument(
        "--interval",
        type=_seconds(0.05),
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"time between polls (default {DEFAULT_INTERVAL:g})",
    )


def _port_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=port_number,
        metavar="N",
        help="port for pending agents registered on the default port "
        "(default: the config's `port`, 7443)",
    )


def _aggregator(ctx: Context):
    from ..config.load import load_dispatcher
    from ..dispatcher.engine import Engine
    from ..dispatcher.runstore import aggregate

    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    engine = Engine.from_config(settings, ctx.layout)
    store = engine.state.runs
    return lambda reqid: aggregate(store, engine, reqid, ctx.args.port)


def _not_found(ctx: Context, reqid: str) -> int:
    if ctx.json:
        ctx.emit_json({"ok": 0, "error": "not found", "reqid": reqid})
    else:
        ctx.err(f"No such request: {report.visible(reqid)}")
    return EXIT_FAILURE


def _show(ctx: Context, record: dict) -> None:
    from .ced_run import write_text

    if ctx.json:
        write_text(json.dumps({"ok": 1, **record}, ensure_ascii=False) + "\n")
    else:
        write_text(report.status_text(record))


def cmd_status(ctx: Context) -> int:
    record = _aggregator(ctx)(ctx.args.reqid)
    if record is None:
        return _not_found(ctx, ctx.args.reqid)
    _show(ctx, record)
    return 0


def cmd_wait(ctx: Context) -> int:
    poll = _aggregator(ctx)
    deadline = time.monotonic() + ctx.args.timeout
    while True:
        record = poll(ctx.args.reqid)
        if record is None:
            return _not_found(ctx, ctx.args.reqid)
        remaining = deadline - time.monotonic()
        if record.get("complete") or remaining <= 0:
            break
        time.sleep(min(ctx.args.interval, remaining))
    _show(ctx, record)
    if not record.get("complete"):
        if not ctx.json:
            reqid = report.visible(ctx.args.reqid)
            ctx.err(
                f"Still running after {ctx.args.timeout:g}s (--timeout): wait again with "
                f"'{ctx.prog} wait {reqid}', or stop it with '{ctx.prog} cancel {reqid}'."
            )
        return EXIT_PENDING
    return EXIT_FAILURE if run_record.any_failed(record) else 0
