"""docs/performance.md's benchmark command runs: `bench/bench.py` with every
part selected and tiny sizes, reporting one JSON object. Nothing is timed or
compared here (figures come from on-demand runs); this only keeps the
documented command working."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_bench_runs_every_part_with_tiny_sizes(pyz):
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench/bench.py"),
            "--pyz",
            str(pyz),
            "--requests",
            "3",
            "--wall-runs",
            "1",
            "--agents",
            "2",
            "--memory-requests",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    # every part ran, with the sizes asked for
    assert report["agent"]["run_ms"]["n"] == 3 and report["agent"]["ping_ms"]["n"] == 3
    assert report["ced"]["ced_run_ms"]["n"] == 1 and report["ced"]["ced_ping_ms"]["n"] == 1
    assert report["memory"]["requests"] == 3
    assert report["api"]["health_ms"]["n"] == 3 and report["api"]["run_ms"]["n"] == 3
    assert report["fanout"]["agents"] == 2


def test_fleet_bench_runs_every_part_with_tiny_sizes(pyz, tmp_path):
    done = subprocess.run(
        [
            *[sys.executable, str(REPO / "bench/fleet_bench.py"), "--pyz", str(pyz)],
            *["--work", str(tmp_path), "--sizes", "3", "--floor-count", "3", "--clients", "2"],
            *["--api-runs", "3", "--api-ping-agents", "3", "--rounds", "1", "--json"],
            *["--ceiling-seconds", "1"],
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["floor"]["failures"] == 0 and report["floor"]["simulator_cpu_ms_each"] > 0
    assert [ping["ok"] for ping in report["ping"]] == [3]
    assert report["api"]["failures"] == 0
    assert [ping["ok"] for ping in report["api"]["api_ping"]] == [3, 3]
    ceiling = report["openssl"]
    assert ceiling["tickets_per_handshake"] == 1 and ceiling["both_ends_per_second_max"] > 0
