"""Counters of the API process and a scrape in Prometheus text format.

Counters and histograms live in memory for the life of the process (they
start at zero on restart, as Prometheus expects of counters). Gauges are
read from the state files at scrape time: the registry (certificate days
left, serial status), the pairing queue and the run store, each bounded by
the size of its directory. Label values come from fixed sets (route names,
outcomes, statuses), never from request text, so the number of series is
bounded.

Exposition format: https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..core.results import HostResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; fan-out runs wait for scripts, so the top buckets are long.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Days of certificate validity left, as bands an alert can name.
CERT_BANDS = ((0, "expired"), (7, "lt7"), (30, "lt30"), (90, "lt90"), (math.inf, "ge90"))
SERIAL_STATUSES = ("current", "pending", "stale", "unknown")
RUN_OUTCOMES = ("ok", "failed", "error", "accepted", "busy")
# At most this many files are counted per directory at one scrape.
MAX_SCAN = 100_000


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(str(value))}"' for key, value in sorted(labels.items()))
    return "{" + inner + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return (
        repr(float(value))
        if isinstance(value, float) and not value.is_integer()
        else str(int(value))
    )


def run_outcome(result: HostResult) -> str:
    """ok / failed / error for a synchronous per-host result, accepted /
    busy / error for an async submission."""
    status = result.status
    if status in ("accepted", "busy"):
        return status
    if result.error:
        return "error"
    exit_code = result.wire.get("exit")
    if exit_code == 0:
        return "ok"
    return "error" if exit_code in (None, -1) else "failed"


class Metrics:
    """The API process's counters; thread-safe (one handler thread per request)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._runs: dict[str, int] = dict.fromkeys(RUN_OUTCOMES, 0)
        self._denials: dict[str, int] = {}
        self._latency: dict[str, list[float]] = {}  # route -> bucket counts + [sum, count]

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            counts = self._latency.setdefault(route, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for index, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[index] += 1
            counts[-2] += seconds
            counts[-1] += 1

    def runs(self, results: Iterable[HostResult]) -> None:
        with self._lock:
            for result in results:
                outcome = run_outcome(result)
                self._runs[outcome] = self._runs.get(outcome, 0) + 1

    def denial(self, reason: str) -> None:
        reason = reason if len(reason) <= 64 else reason[:64]
        with self._lock:
            self._denials[reason] = self._denials.get(reason, 0) + 1

    def render(self, gauges: Callable[[], list[str]] | None = None) -> bytes:
        with self._lock:
            requests = dict(self._requests)
            runs = dict(self._runs)
            denials = dict(self._denials)
            latency = {route: list(counts) for route, counts in self._latency.items()}
        out: list[str] = []
        _family(
            out,
            "ctrl_exec_api_requests_total",
            "counter",
            "API requests answered, by route and status",
        )
        for (method, route, status), value in sorted(requests.items()):
            labels = _labels({"method": method, "route": route, "status": str(status)})
            out.append(f"ctrl_exec_api_requests_total{labels} {value}")
        _family(
            out,
            "ctrl_exec_runs_total",
            "counter",
            "per-host results of runs through the API, by outcome",
        )
        for outcome, value in sorted(runs.items()):
            out.append(f"ctrl_exec_runs_total{_labels({'outcome': outcome})} {value}")
        _family(
            out,
            "ctrl_exec_auth_denials_total",
            "counter",
            "requests the auth hook (or api_auth_default) refused, by reason",
        )
        for reason, value in sorted(denials.items()):
            out.append(f"ctrl_exec_auth_denials_total{_labels({'reason': reason})} {value}")
        name = "ctrl_exec_api_request_duration_seconds"
        _family(out, name, "histogram", "time to answer an API request, by route")
        for route, counts in sorted(latency.items()):
            for index, bound in enumerate(LATENCY_BUCKETS):
                labels = _labels({"route": route, "le": _number(bound)})
                out.append(f"{name}_bucket{labels} {int(counts[index])}")
            out.append(f"{name}_bucket{_labels({'route': route, 'le': '+Inf'})} {int(counts[-1])}")
            out.append(f"{name}_sum{_labels({'route': route})} {counts[-2]!r}")
            out.append(f"{name}_count{_labels({'route': route})} {int(counts[-1])}")
        if gauges is not None:
            out += gauges()
        return ("\n".join(out) + "\n").encode("utf-8")


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


# ---------------------------------------------------------------- state gauges


def _json_files(directory: Path) -> list[Path]:
    try:
        names = []
        for count, entry in enumerate(directory.iterdir()):
            if count >= MAX_SCAN:
                break
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                names.append(entry)
        return names
    except OSError:
        return []


def cert_band(days_left: float) -> str:
    if days_left < 0:
        return "expired"
    for bound, name in CERT_BANDS[1:]:
        if days_left < bound:
            return name
    return "ge90"


def state_gauges(
    records: Iterable[dict],
    pairing_dir: Path | None,
    runs_dir: Path,
    now: float,
    parse_expiry: Callable[[str], float | None],
    counts: dict[str, int] | None = None,
) -> list[str]:
    """Registry, pairing-queue and run-store gauges: from the files, or from
    `counts` (`pairing_pending`, `run_records`) when the state backend
    gives them."""
    counts = counts or {}
    bands = {name: 0 for _, name in CERT_BANDS}
    bands["unknown"] = 0
    statuses = dict.fromkeys(SERIAL_STATUSES, 0)
    for record in records:
        expiry = parse_expiry(str(record.get("expiry") or ""))
        if expiry is None:
            bands["unknown"] += 1
        else:
            bands[cert_band((expiry - now) / 86400)] += 1
        status = record.get("serial_status")
        statuses[status if status in statuses else "unknown"] += 1
    out: list[str] = []
    _family(
        out,
        "ctrl_exec_agents_by_cert_days_left",
        "gauge",
        "registered agents by days of certificate validity left",
    )
    for band, value in bands.items():
        out.append(f"ctrl_exec_agents_by_cert_days_left{_labels({'days_left': band})} {value}")
    _family(
        out,
        "ctrl_exec_agents_by_serial_status",
        "gauge",
        "registered agents by the status of the dispatcher serial they trust",
    )
    for status, value in statuses.items():
        out.append(f"ctrl_exec_agents_by_serial_status{_labels({'serial_status': status})} {value}")
    pending = [
        path
        for path in (_json_files(pairing_dir) if pairing_dir else [])
        if not path.with_suffix(".approved").exists() and not path.with_suffix(".denied").exists()
    ]
    queued = counts.get("pairing_pending", len(pending))
    _family(out, "ctrl_exec_pairing_queue_length", "gauge", "pairing requests waiting for approval")
    out.append(f"ctrl_exec_pairing_queue_length {queued}")
    runs = counts["run_records"] if "run_records" in counts else len(_json_files(runs_dir))
    _family(out, "ctrl_exec_run_store_records", "gauge", "run records in the run store")
    out.append(f"ctrl_exec_run_store_records {runs}")
    _family(out, "ctrl_exec_scrape_timestamp_seconds", "gauge", "when this scrape was made")
    out.append(f"ctrl_exec_scrape_timestamp_seconds {int(now)}")
    return out


def now() -> float:
    return time.time()
