"""`ced cancel REQID [HOST...]`: stop a run on the agents.

Our agents stop the script's process group (SIGTERM, then SIGKILL) when the
run is this dispatcher's; a ctrl-exec 0.12 agent cannot cancel and says so.
The run's record (if any) then shows the cancelled hosts as `cancelled`.
"""

from __future__ import annotations

import json

from ..core import report
from ..core.run_control import CANCELLED, NOT_RUNNING
from ..errors import EXIT_FAILURE, Locked, PolicyDenied
from .ced_run import _caller, _engine, _identity_options, _stopped, write_text
from .common import Context, add_command

EPILOG = """With no HOST, the hosts of the recorded run that may still be running it
(a `ced run` stopped with Ctrl-C, or a pending async run).

Only runs this dispatcher started can be cancelled. The auth hook is asked
with action `cancel`.

Exit status: 0 when every host cancelled the run or was no longer running
it; 1 when any host could not (a 0.12 agent, an error), or the hook denied;
2 for a malformed command."""

LABELS = {
    CANCELLED: "cancelled",
    NOT_RUNNING: "not running",
    "cannot-cancel": "cannot cancel there",
    "error": "ERROR",
}


def register(subparsers) -> None:
    cancel = add_command(
        subparsers,
        "cancel",
        cmd_cancel,
        "stop a running script on agents",
        description="Stop the scripts of a run (REQID) on our agents: SIGTERM to "
        "the script's process group, SIGKILL 5 s later.",
        epilog=EPILOG,
    )
    cancel.add_argument("reqid", metavar="REQID", help="the run's request id")
    cancel.add_argument("hosts", nargs="*", metavar="HOST", help="agents (default: see below)")
    _identity_options(cancel)


def cancel_text(results: list[dict]) -> str:
    lines = []
    for result in results:
        status = result["status"]
        line = f"==> {report.visible(result['host'])}  [{LABELS.get(status, status)}]"
        if status not in (CANCELLED,):
            line += f"  {report.visible(result.get('detail', ''))}"
        lines.append(line)
    return "".join(line + "\n" for line in lines)


def cmd_cancel(ctx: Context) -> int:
    from ..dispatcher.registry import UnknownAgents
    from ..dispatcher.run_stop import cancel_run

    engine = _engine(ctx)
    try:
        results = cancel_run(
            engine,
            engine.state.runs,
            ctx.args.reqid,
            ctx.args.hosts,
            _caller(ctx),
            ctx.args.port,
        )
    except (PolicyDenied, Locked, UnknownAgents) as exc:
        return _stopped(ctx, exc)
    failed = any(result["status"] not in (CANCELLED, NOT_RUNNING) for result in results)
    if ctx.json:
        report: dict = {"ok": 0 if failed else 1, "results": results}
        if failed:
            report["error"] = "not cancelled on " + ", ".join(
                f"{result['host']} ({result['status']})"
                for result in results
                if result["status"] not in (CANCELLED, NOT_RUNNING)
            )
        write_text(json.dumps(report) + "\n")
    else:
        write_text(cancel_text(results))
    return EXIT_FAILURE if failed else 0
