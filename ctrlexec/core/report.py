"""Text output of `ced run`, `ced ping`, `ced list-locks`, `ced status` and
`ced wait`, with no I/O.

The layouts are 0.12's, so people and scripts that read them keep working:

    ==> web-01  [OK  exit:0  35ms  req:78496fa76dc53023]
    <the script's stdout>
        STDERR: <the script's stderr>

and for ping a fixed-width table (HOST 30, STATUS 8, RTT 8, CERT EXPIRY 28).
A script's stdout and stderr are printed as the script wrote them (that is
what the operator asked for); every other value came from an agent and is
printed with control characters made visible, so a hostile agent cannot
drive the operator's terminal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeGuard

from .results import RUN, HostResult, exit_code

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(value: object) -> str:
    """A value from the network, safe to print on a terminal."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def _host_label(result: HostResult) -> str:
    label = visible(result.wire.get("host", "?"))
    if result.has("reported_hostname"):
        label += f" ({visible(result.wire['reported_hostname'])})"
    return label


def _has_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip())


# What to do about the errors an operator meets most, shown under their
# 0.12 text (which stays as it is: scripts match on it).
_HINTS = (
    (
        "forbidden: serial mismatch",
        "the agent does not trust this dispatcher's certificate: 'ced serial-status' "
        "shows whether it confirmed the current serial ('ced maintain' tells pending "
        "agents again); otherwise pair it again",
    ),
    (
        "forbidden: certificate revoked",
        "the agent lists this dispatcher's certificate in its revoked-serials file",
    ),
    (
        "script not permitted",
        "the script is not in that agent's allowlist (scripts.toml; "
        "'ctrl-exec-agent self-check' on the agent lists it)",
    ),
    (
        "TLS handshake with ",
        "DETAIL= in the dispatcher's log line says why (an expired certificate, "
        "another CA); an expired agent certificate needs a new pairing",
    ),
)


def error_hint(error: str | None) -> str | None:
    """The line of advice shown under a host's error, or None."""
    if not error:
        return None
    for start, hint in _HINTS:
        if error.startswith(start):
            return hint
    return None


def _error_lines(lines: list[str], error: str) -> None:
    lines.append(f"    ERROR: {visible(error)}")
    hint = error_hint(error)
    if hint:
        lines.append(f"    hint: {hint}")


def run_text(results: list[HostResult]) -> str:
    lines: list[str] = []
    for result in results:
        code = result.exit_code
        lines.append(
            f"==> {_host_label(result)}  [{'OK' if code == 0 else 'FAIL'}  exit:{code}  "
            f"{visible(result.wire.get('rtt', ''))}  req:{visible(result.wire.get('reqid', ''))}]"
        )
        if result.error:
            _error_lines(lines, result.error)
        _output(lines, result.wire)
    return "".join(line + "\n" for line in lines)


PING_HEADER = ("HOST", "STATUS", "RTT", "CERT EXPIRY", "VERSION")


def _ping_row(cells: tuple[str, ...]) -> str:
    host, status, rtt, expiry, version = cells
    return f"{host:<30}  {status:<8}  {rtt:<8}  {expiry:<28}  {version}"


def ping_text(results: list[HostResult]) -> str:
    """0.12's ping table. Unlike 0.12, a failed host's error is shown under
    its row (0.12 shows only `error` and leaves the operator guessing)."""
    lines = [_ping_row(PING_HEADER), "-" * 85]
    for result in results:
        lines.append(
            _ping_row(
                (
                    _host_label(result),
                    visible(result.wire.get("status", "error")),
                    visible(result.wire.get("rtt", "?")),
                    visible(result.wire.get("expiry", "?")),
                    visible(result.wire.get("version", "?")),
                )
            )
        )
        if result.failed and result.error:
            _error_lines(lines, result.error)
    return "\n".join(lines) + "\n"


def locks_text(locks: list[dict[str, Any]]) -> str:
    """0.12's HOST and SCRIPT columns, then who holds the lock: `held` by a
    running dispatch, or `orphaned` (its holder stopped before the run
    ended; the next run asks the agent)."""
    if not locks:
        return "No locks currently held.\n"

    def row(cells: tuple[str, ...]) -> str:
        host, script, state, pid, user, since, reqid = cells
        return (
            f"{host:<30}  {script:<20}  {state:<8}  {pid:<7}  {user:<10}  {since:<20}  {reqid}"
        ).rstrip()

    lines = [row(("HOST", "SCRIPT", "STATE", "PID", "USER", "SINCE", "REQID")), "-" * 112]
    for lock in locks:
        user = str(lock.get("user", ""))
        if lock.get("username"):
            user += f" ({lock['username']})"
        lines.append(
            row(
                tuple(
                    visible(str(value))
                    for value in (
                        lock["host"],
                        lock["script"],
                        lock.get("state", "held"),
                        lock.get("pid", ""),
                        user,
                        lock.get("since", ""),
                        lock.get("reqid", ""),
                    )
                )
            )
        )
    return "\n".join(lines) + "\n"


def progress_text(done: int, total: int, failed: int, elapsed: float | None = None) -> str:
    """The live line shown on a terminal while a fan-out runs."""
    width = len(str(total))
    text = f"[{done:>{width}}/{total}] hosts done, {failed} failed"
    if elapsed is not None:
        text += f", {total - done} running, {elapsed:.1f} s"
    return text


# The start of 0.12's error strings for a host that could not be reached
# (core/results.failure_text); anything else that failed did answer.
_UNREACHED = ("host '", "TLS handshake with '", "read timeout after ")


def unreachable(result: HostResult) -> bool:
    error = result.wire.get("error")
    return isinstance(error, str) and error.startswith(_UNREACHED)


def summary_text(results: list[HostResult], elapsed: float) -> str:
    """`12 ok, 1 failed, 1 unreachable in 5.2 s` (a terminal only)."""
    unreached = sum(1 for result in results if result.failed and unreachable(result))
    bad = sum(1 for result in results if result.failed) - unreached
    ok = len(results) - bad - unreached
    return f"{ok} ok, {bad} failed, {unreached} unreachable in {elapsed:.1f} s"


def async_submit_text(reqid: str, results: list[HostResult], status_command: str) -> str:
    """What `ced run --async` prints: one line per host, then how to follow up."""
    lines = [f"Submitted async run  req:{visible(reqid)}"]
    for result in results:
        status = result.status
        if status == "accepted":
            lines.append(
                f"==> {_host_label(result)}  [accepted  {visible(result.wire.get('rtt', ''))}]"
            )
        elif status == "busy":
            lines.append(
                f"==> {_host_label(result)}  [BUSY: {visible(result.error or 'already running')}]"
            )
        else:
            lines.append(
                f"==> {_host_label(result)}  [ERROR: {visible(result.error or 'submit failed')}]"
            )
    lines.append(f"Check progress with: {status_command} {visible(reqid)}")
    return "".join(line + "\n" for line in lines)


def status_text(record: dict[str, Any]) -> str:
    """`ced status`/`ced wait`: a header, then a sync run as `run` shows it,
    or one block per host of an async run (sorted by name)."""
    state = "COMPLETE" if record.get("complete") else "PENDING"
    head = (
        f"Request {visible(record.get('reqid', '?'))}  "
        f"(script: {visible(record.get('script', '?'))})  [{state}]\n"
    )
    hosts = record.get("hosts")
    if record.get("mode") != "async" or not isinstance(hosts, dict):
        results = record.get("results")
        listed = results if isinstance(results, list) else []
        return head + run_text([HostResult.from_wire(RUN, result) for result in listed])
    lines: list[str] = []
    for name in sorted(hosts):
        entry = hosts[name] if isinstance(hosts[name], dict) else {}
        status = str(entry.get("status") or "unknown")
        label = visible(name)
        if status == "done":
            lines.append(f"==> {label}  [done  exit:{exit_code(entry.get('exit'))}]")
            if entry.get("error"):
                lines.append(f"    ERROR: {visible(entry['error'])}")
            _output(lines, entry)
        elif status in ("accepted", "running"):
            lines.append(f"==> {label}  [{status}]")
            if entry.get("fetch_error") is not None:
                lines.append(f"    (fetch pending: {visible(entry['fetch_error'])})")
        else:
            lines.append(f"==> {label}  [{visible(status.upper())}]")
            if entry.get("error") is not None:
                lines.append(f"    {visible(entry['error'])}")
    return head + "".join(line + "\n" for line in lines)


def _output(lines: list[str], result: Mapping[str, Any]) -> None:
    """A script's stdout as written, then its stderr after `STDERR:`."""
    stdout = result.get("stdout")
    if _has_text(stdout):
        lines.append(stdout[:-1] if stdout.endswith("\n") else stdout)
    stderr = result.get("stderr")
    if _has_text(stderr):
        lines.append("    STDERR: " + (stderr[:-1] if stderr.endswith("\n") else stderr))
