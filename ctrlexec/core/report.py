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
from typing import Any, TypeGuard

from .results import exit_code_of

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(value: object) -> str:
    """A value from the network, safe to print on a terminal."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def _host_label(result: dict[str, Any]) -> str:
    label = visible(result.get("host", "?"))
    if result.get("reported_hostname") is not None:
        label += f" ({visible(result['reported_hostname'])})"
    return label


def _has_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip())


def run_text(results: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for result in results:
        code = exit_code_of(result)
        lines.append(
            f"==> {_host_label(result)}  [{'OK' if code == 0 else 'FAIL'}  exit:{code}  "
            f"{visible(result.get('rtt', ''))}  req:{visible(result.get('reqid', ''))}]"
        )
        if result.get("error"):
            lines.append(f"    ERROR: {visible(result['error'])}")
        _output(lines, result)
    return "".join(line + "\n" for line in lines)


PING_HEADER = ("HOST", "STATUS", "RTT", "CERT EXPIRY", "VERSION")


def _ping_row(cells: tuple[str, ...]) -> str:
    host, status, rtt, expiry, version = cells
    return f"{host:<30}  {status:<8}  {rtt:<8}  {expiry:<28}  {version}"


def ping_text(results: list[dict[str, Any]]) -> str:
    """0.12's ping table. Unlike 0.12, a failed host's error is shown under
    its row (0.12 shows only `error` and leaves the operator guessing)."""
    lines = [_ping_row(PING_HEADER), "-" * 85]
    for result in results:
        lines.append(
            _ping_row(
                (
                    _host_label(result),
                    visible(result.get("status", "error")),
                    visible(result.get("rtt", "?")),
                    visible(result.get("expiry", "?")),
                    visible(result.get("version", "?")),
                )
            )
        )
        if result.get("status") != "ok" and result.get("error"):
            lines.append(f"    ERROR: {visible(result['error'])}")
    return "\n".join(lines) + "\n"


def locks_text(locks: list[dict[str, Any]]) -> str:
    if not locks:
        return "No locks currently held.\n"
    lines = [f"{'HOST':<30}  SCRIPT", "-" * 50]
    lines += [f"{visible(lock['host']):<30}  {visible(lock['script'])}" for lock in locks]
    return "\n".join(lines) + "\n"


def progress_text(done: int, total: int, failed: int) -> str:
    """The live line shown on a terminal while a large fan-out runs."""
    width = len(str(total))
    return f"[{done:>{width}}/{total}] hosts done, {failed} failed"


def async_submit_text(reqid: str, results: list[dict[str, Any]], status_command: str) -> str:
    """What `ced run --async` prints: one line per host, then how to follow up."""
    lines = [f"Submitted async run  req:{visible(reqid)}"]
    for result in results:
        status = result.get("status")
        if status == "accepted":
            lines.append(f"==> {_host_label(result)}  [accepted  {visible(result.get('rtt', ''))}]")
        elif status == "busy":
            lines.append(
                f"==> {_host_label(result)}  "
                f"[BUSY: {visible(result.get('error') or 'already running')}]"
            )
        else:
            lines.append(
                f"==> {_host_label(result)}  "
                f"[ERROR: {visible(result.get('error') or 'submit failed')}]"
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
        return head + run_text(results if isinstance(results, list) else [])
    lines: list[str] = []
    for name in sorted(hosts):
        entry = hosts[name] if isinstance(hosts[name], dict) else {}
        status = str(entry.get("status") or "unknown")
        label = visible(name)
        if status == "done":
            lines.append(f"==> {label}  [done  exit:{exit_code_of(entry)}]")
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


def _output(lines: list[str], result: dict[str, Any]) -> None:
    """A script's stdout as written, then its stderr after `STDERR:`."""
    stdout = result.get("stdout")
    if _has_text(stdout):
        lines.append(stdout[:-1] if stdout.endswith("\n") else stdout)
    stderr = result.get("stderr")
    if _has_text(stderr):
        lines.append("    STDERR: " + (stderr[:-1] if stderr.endswith("\n") else stderr))
