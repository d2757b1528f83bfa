"""The agent's optional metrics listener: Prometheus text on loopback only.

The agent's events are already its ACTION log lines, so the counters are
fed by observing them (log.observe): runs by outcome, denials, rate and
address blocks, TLS failures, overloads. `metrics_port` in agent.toml turns
the listener on; it binds 127.0.0.1 and nothing else (a scraper on the host,
or a local exporter, reads it), answers only `GET /metrics`, one request per
connection, with a short timeout.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import log

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOOPBACK = "127.0.0.1"
REQUEST_TIMEOUT = 10

# ACTION -> (metric, label name, field whose value is the label, help)
_COUNTED = {
    "deny": (
        "ctrl_exec_agent_denials_total", "reason", "REASON",
        "runs refused (not allowlisted, or the hook)",
    ),
    "rate-block": (
        "ctrl_exec_agent_rate_blocks_total", "reason", "REASON",
        "connections refused by the rate limits",
    ),
    "ip-block": (
        "ctrl_exec_agent_ip_blocks_total", None, None, "connections from outside allowed_ips",
    ),
    "tls-failure": ("ctrl_exec_agent_tls_failures_total", None, None, "failed handshakes"),
    "overload": (
        "ctrl_exec_agent_overloads_total", None, None, "connections refused over max_children",
    ),
    "revoked-cert": (
        "ctrl_exec_agent_revoked_peers_total", None, None,
        "connections from revoked dispatchers",
    ),
    "serial-reject": (
        "ctrl_exec_agent_serial_rejects_total", None, None,
        "dispatchers not in the trusted map",
    ),
}  # fmt: skip


class AgentMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = {"ok": 0, "failed": 0}
        self._counts: dict[tuple[str, str], int] = {}
        self.started = time.time()

    def observe(self, action: str, level: str, fields: dict) -> None:
        if action in ("run", "run-async-done") and "EXIT" in fields:
            outcome = "ok" if str(fields["EXIT"]) == "0" else "failed"
            with self._lock:
                self._runs[outcome] += 1
            return
        counted = _COUNTED.get(action)
        if counted is None:
            return
        _, _, field, _ = counted
        label = str(fields.get(field) or "")[:32] if field else ""
        with self._lock:
            self._counts[(action, label)] = self._counts.get((action, label), 0) + 1

    def render(self) -> bytes:
        with self._lock:
            runs = dict(self._runs)
            counts = dict(self._counts)
        out = [
            "# HELP ctrl_exec_agent_runs_total scripts finished on this agent, by outcome",
            "# TYPE ctrl_exec_agent_runs_total counter",
        ]
        out += [f'ctrl_exec_agent_runs_total{{outcome="{k}"}} {v}' for k, v in sorted(runs.items())]
        for action, (name, label_name, _, help_text) in _COUNTED.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            values = {label: n for (act, label), n in counts.items() if act == action}
            if label_name is None:
                out.append(f"{name} {values.get('', 0)}")
            else:
                out += [
                    f'{name}{{{label_name}="{label}"}} {n}' for label, n in sorted(values.items())
                ]
        out += [
            "# HELP ctrl_exec_agent_start_time_seconds when this agent process started",
            "# TYPE ctrl_exec_agent_start_time_seconds gauge",
            f"ctrl_exec_agent_start_time_seconds {int(self.started)}",
        ]
        return ("\n".join(out) + "\n").encode("utf-8")


def start_listener(port: int, metrics: AgentMetrics) -> ThreadingHTTPServer:
    """Serve `GET /metrics` on 127.0.0.1:port from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT

        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            pass  # scrapes are not events worth a log line

    server = ThreadingHTTPServer((LOOPBACK, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.observe(metrics.observe)
    return server
