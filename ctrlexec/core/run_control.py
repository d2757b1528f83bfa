"""No I/O: the run-control additions of our agent, `GET /running` and
`POST /cancel`, both sides of the wire.

0.12's agent forgets a synchronous run the moment its dispatcher stops
listening, so a dispatcher that crashed (or gave up waiting) cannot tell
whether the script still runs. Our agent knows which scripts it is running
for which dispatcher, and says so:

    GET /running  -> 200 {"status":"ok","running":[{"reqid","script","mode",
                                                   "started","timeout"}, ...]}
    POST /cancel {"reqid": R}
                  -> 200 {"status":"ok","reqid":R,"cancelled":[{"script","mode"}]}
                  -> 404 {"status":"unknown","reqid":R}    (nothing of the caller's runs under R)
                  -> 400 {"status":"error","error":...}    (no usable reqid)

Both answer only about the calling dispatcher's own runs (the owner is the
dispatcher id its certificate serial maps to). A 0.12 agent answers both
with 404 `{"error":"not found"}`, which a dispatcher reads as "this agent
cannot say" (`UNSUPPORTED`). A 0.12 dispatcher never calls them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import CancelRejected
from .ids import RUN_REQID

RUNNING_PATH = "/running"
CANCEL_PATH = "/cancel"

SYNC = "sync"
ASYNC = "async"

# At most this many runs are listed (an agent runs at most max_children
# synchronous and a bounded number of async scripts at once).
MAX_LISTED = 4096


@dataclass(frozen=True)
class RunningEntry:
    reqid: str
    script: str
    mode: str  # SYNC or ASYNC
    started: str  # UTC YYYY-MM-DDTHH:MM:SSZ
    timeout: float  # seconds the agent lets the script run

    def to_wire(self) -> dict[str, Any]:
        return {
            "reqid": self.reqid,
            "script": self.script,
            "mode": self.mode,
            "started": self.started,
            "timeout": int(self.timeout) if float(self.timeout).is_integer() else self.timeout,
        }


def running_body(entries: list[RunningEntry]) -> dict[str, Any]:
    return {"status": "ok", "running": [entry.to_wire() for entry in entries[:MAX_LISTED]]}


def parse_cancel(body: bytes) -> str:
    """The reqid to cancel; CancelRejected (400) when there is none."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CancelRejected("invalid JSON") from None
    if not isinstance(data, dict):
        raise CancelRejected("invalid JSON")
    reqid = data.get("reqid")
    if not RUN_REQID.shaped(reqid):
        raise CancelRejected("reqid must be letters, digits, '_' and '-'")
    return reqid


def cancel_body(reqid: str, cancelled: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "status": "ok",
        "reqid": reqid,
        "cancelled": [{"script": script, "mode": mode} for script, mode in cancelled],
    }


def cancel_unknown(reqid: str) -> dict[str, Any]:
    return {"status": "unknown", "reqid": reqid}


# --- the dispatcher's reading of the answers ------------------------------------

UNSUPPORTED = "unsupported"  # a 0.12 agent: 404 {"error":"not found"}


def read_running(status: int, body: bytes) -> list[dict[str, Any]] | str:
    """The agent's list of our running runs, or UNSUPPORTED, or an error text."""
    data = _object(body)
    if status == 404 and data is not None and "running" not in data:
        return UNSUPPORTED
    if status != 200 or data is None or data.get("status") != "ok":
        return f"unexpected answer to GET {RUNNING_PATH} (HTTP {status})"
    listed = data.get("running")
    if not isinstance(listed, list):
        return f"unexpected answer to GET {RUNNING_PATH} (no list)"
    return [entry for entry in listed[:MAX_LISTED] if isinstance(entry, dict)]


def running_reqids(entries: list[dict[str, Any]]) -> set[str]:
    return {entry["reqid"] for entry in entries if isinstance(entry.get("reqid"), str)}


CANCELLED = "cancelled"
NOT_RUNNING = "not-running"
CANNOT = "cannot-cancel"


def read_cancel(status: int, body: bytes) -> tuple[str, str]:
    """(outcome, detail) of a POST /cancel: CANCELLED, NOT_RUNNING (our agent
    has no such run of ours), CANNOT (a 0.12 agent), or an error text."""
    data = _object(body)
    if status == 200 and data is not None and data.get("status") == "ok":
        scripts = [
            entry.get("script", "")
            for entry in data.get("cancelled") or []
            if isinstance(entry, dict)
        ]
        return CANCELLED, ",".join(str(script) for script in scripts)
    if status == 404 and data is not None and data.get("status") == "unknown":
        return NOT_RUNNING, "no run of this dispatcher with that reqid is running there"
    if status == 404:
        return CANNOT, "the agent cannot cancel runs (ctrl-exec 0.12)"
    error = (data or {}).get("error")
    return "error", f"HTTP {status}" + (f": {error}" if isinstance(error, str) else "")


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
