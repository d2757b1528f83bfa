"""`ced run`/`ced ping` text: under the errors operators meet most, one line
on what to do; the 0.12 error line itself is unchanged, and --json has none."""

from __future__ import annotations

from ctrlexec.core import report
from ctrlexec.core.results import PING, RUN, HostResult


def _run(error: str) -> list[str]:
    wire = {"host": "web-01", "script": "s", "exit": -1, "error": error, "rtt": "2ms", "reqid": "r"}
    return report.run_text([HostResult(RUN, wire)]).splitlines()


def test_a_serial_mismatch_points_at_serial_status_and_pairing():
    lines = _run("forbidden: serial mismatch")
    assert lines[1] == "    ERROR: forbidden: serial mismatch"
    assert lines[2].startswith("    hint: the agent does not trust this dispatcher's certificate")
    assert "ced serial-status" in lines[2] and "pair it again" in lines[2]


def test_a_script_outside_the_allowlist_and_a_failed_handshake_have_hints():
    assert "allowlist" in _run("script not permitted")[2]
    tls = _run("TLS handshake with '10.0.0.5' failed - certificate or trust mismatch")
    assert tls[2].startswith("    hint: DETAIL= in the dispatcher's log line says why")


def test_ping_rows_get_the_same_hint_and_other_errors_none():
    wire = {"host": "web-01", "status": "error", "error": "forbidden: certificate revoked"}
    lines = report.ping_text([HostResult(PING, wire)]).splitlines()
    assert lines[3] == "    ERROR: forbidden: certificate revoked"
    assert lines[4].startswith("    hint: the agent lists this dispatcher's certificate")
    assert len(_run("read timeout after 60s")) == 2  # no hint: the text says it all
