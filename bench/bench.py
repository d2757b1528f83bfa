"""Benchmarks of the execution path. Prints figures; asserts nothing.

    .venv/bin/python bench/bench.py                 # everything, default sizes
    .venv/bin/python bench/bench.py --only agent    # agent /run and /ping latency, RSS
    .venv/bin/python bench/bench.py --json          # one JSON object for tooling

What it measures (each request on a new TLS connection, as ced does):
  agent   /run of a trivial script and /ping: p50/p90/p99 in ms, measured by
          a client in this process with the dispatcher's certificate.
  ced     wall time of `ced run` and `ced ping` on one host, interpreter
          start included (the way an operator or a cron job runs them).
  fanout  `ced ping` of N agents (default 100), each its own `agent serve`.
  memory  the agent's RSS when idle, and after M more requests (default 5000).
  api     `dispatcher serve` (plain HTTP, no hook): GET /health and a
          synchronous POST /run of the trivial script through it, p50/p90/p99.

Everything runs on loopback under a throwaway root, with the same built
archive users run (dist/ctrl-exec.pyz; build it first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ctrlexec.core import http  # noqa: E402
from tests.support import testpki  # noqa: E402

TRIVIAL_SCRIPT = "#!/bin/sh\necho ok\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_pidfile(pidfile: Path, process: subprocess.Popen, timeout: float = 30) -> None:
    """An agent writes its pidfile once it listens (a bare port probe would
    count as a failed handshake towards its probe limit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"agent exited {process.returncode} before listening")
        if pidfile.exists():
            return
        time.sleep(0.02)
    raise SystemExit(f"agent did not start within {timeout}s")


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)

    def pick(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)

    return {
        "n": len(ordered),
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "mean": round(statistics.fmean(ordered), 2),
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Bench:
    def __init__(self, pyz: Path, base: Path, isolated: bool = False):
        self.pyz = pyz
        # `python3 -I -S`: no site-packages, no PYTHON* variables (how the
        # shipped service units start ctrl-exec).
        self.python = [sys.executable, "-I", "-S"] if isolated else [sys.executable]
        self.base = base
        self.ca = testpki.SessionCA()
        self.dispatcher_root = base / "dispatcher"
        self.dispatcher = testpki.install_dispatcher(self.ca, self.dispatcher_root)
        self.processes: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CTRL_EXEC_")}
        self.env["CTRL_EXEC_LOG_TARGET"] = str(base / "bench.log")
        layout = testpki.layout_for(self.dispatcher_root)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client.check_hostname = False
        self.client.load_verify_locations(str(layout.ca_cert))
        self.client.load_cert_chain(str(layout.dispatcher_cert), str(layout.dispatcher_key))

    def ctl(self, root: Path, role: str, *args: str) -> list[str]:
        return [*self.python, str(self.pyz), role, "--root", str(root), *args]

    def start_agent(self, name: str) -> tuple[int, subprocess.Popen]:
        root = self.base / name
        agent = testpki.install_agent(self.ca, root, name, self.dispatcher)
        layout = testpki.layout_for(root)
        scripts = root / "scripts"
        scripts.mkdir()
        (scripts / "trivial").write_text(TRIVIAL_SCRIPT)
        (scripts / "trivial").chmod(0o755)
        port = free_port()
        layout.agent_config.write_text(
            f'bind = "127.0.0.1"\nport = {port}\nscript_dirs = ["{scripts}"]\n'
            "rate_limit_disable = true\n\n[profile.default]\n"
        )
        layout.allowlist.write_text(f'trivial = "{scripts}/trivial"\n')
        process = subprocess.Popen(
            self.ctl(root, "agent", "serve"),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        wait_for_pidfile(layout.agent_pidfile, process)
        testpki.register_agent(self.dispatcher_root, name, port, agent, self.dispatcher)
        return port, process

    def request(self, port: int, path: str, body: dict) -> float:
        """One mTLS request to an agent, as the dispatcher sends it."""
        return self._timed(port, "POST", path, body, self.client)

    @staticmethod
    def _timed(
        port: int, method: str, path: str, body: dict | None, tls: ssl.SSLContext | None
    ) -> float:
        """Milliseconds for one request on a new connection, reply read to EOF."""
        payload = None if body is None else json.dumps(body).encode()
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            conn = tls.wrap_socket(raw) if tls else raw
            with conn:
                conn.sendall(http.request_bytes(method, path, payload, host=f"127.0.0.1:{port}"))
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
        elapsed = (time.perf_counter() - started) * 1000
        if not b"".join(chunks).startswith(b"HTTP/1.0 200"):
            raise SystemExit(f"{path} failed: {b''.join(chunks)[:200]!r}")
        return elapsed

    def agent_latency(self, port: int, count: int) -> dict:
        for _ in range(20):  # warm-up: page cache, first-use imports
            self.request(port, "/run", {"script": "trivial", "args": [], "reqid": "warm"})
        run = [
            self.request(port, "/run", {"script": "trivial", "args": [], "reqid": f"r{i}"})
            for i in range(count)
        ]
        ping = [self.request(port, "/ping", {"reqid": f"p{i}"}) for i in range(count)]
        return {"run_ms": percentiles(run), "ping_ms": percentiles(ping)}

    def ced_wall(self, agent: str, count: int) -> dict:
        results = {}
        for label, args in (
            ("ced_run_ms", ("ced", "run", agent, "trivial")),
            ("ced_ping_ms", ("ced", "ping", agent)),
        ):
            samples = []
            for _ in range(count):
                started = time.perf_counter()
                done = subprocess.run(
                    self.ctl(self.dispatcher_root, *args), env=self.env, capture_output=True
                )
                samples.append((time.perf_counter() - started) * 1000)
                if done.returncode != 0:
                    raise SystemExit(
                        f"{' '.join(args)} exited {done.returncode}: {done.stderr[-300:]!r}"
                    )
            results[label] = percentiles(samples)
        return results

    def fanout(self, agents: int, rounds: int) -> dict:
        names = [f"fan-{i:03d}" for i in range(agents)]
        for name in names:
            self.start_agent(name)
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            done = subprocess.run(
                self.ctl(self.dispatcher_root, "ced", "ping", *names, "--json"),
                env=self.env,
                capture_output=True,
                text=True,
            )
            samples.append((time.perf_counter() - started) * 1000)
            ok = json.loads(done.stdout).get("ok") if done.stdout.strip() else None
            if done.returncode != 0:
                raise SystemExit(
                    f"fan-out ping exited {done.returncode} (ok={ok}): {done.stderr[-300:]}"
                )
        return {"agents": agents, "ced_ping_all_ms": percentiles(samples)}

    def memory(self, port: int, process: subprocess.Popen, count: int) -> dict:
        idle = rss_kib(process.pid)
        for i in range(count):
            path, body = (
                ("/run", {"script": "trivial", "args": [], "reqid": f"m{i}"})
                if i % 2
                else ("/ping", {"reqid": f"m{i}"})
            )
            self.request(port, path, body)
        after = rss_kib(process.pid)
        return {
            "idle_rss_mib": round(idle / 1024, 1),
            "requests": count,
            "rss_after_mib": round(after / 1024, 1),
            "growth_mib": round((after - idle) / 1024, 1),
        }

    def start_api(self) -> int:
        layout = testpki.layout_for(self.dispatcher_root)
        port = free_port()
        layout.dispatcher_config.write_text(
            f'api_port = {port}\napi_auth_default = "allow"\napi_max_children = 256\n'
        )
        pidfile = self.base / "api.pid"
        process = subprocess.Popen(
            self.ctl(self.dispatcher_root, "dispatcher", "serve", "--pidfile", str(pidfile)),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        wait_for_pidfile(pidfile, process)
        layout.dispatcher_config.unlink()
        return port

    def api_request(self, port: int, method: str, path: str, body: dict | None) -> float:
        """One plain-HTTP request to the dispatcher API."""
        return self._timed(port, method, path, body, None)

    def api_latency(self, agent: str, count: int) -> dict:
        port = self.start_api()
        run = {"hosts": [agent], "script": "trivial"}
        for _ in range(10):
            self.api_request(port, "POST", "/run", run)
        health = [self.api_request(port, "GET", "/health", None) for _ in range(count)]
        runs = [self.api_request(port, "POST", "/run", run) for _ in range(count)]
        return {"health_ms": percentiles(health), "run_ms": percentiles(runs)}

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pyz", type=Path, default=REPO / "dist/ctrl-exec.pyz")
    parser.add_argument(
        "--only", choices=("agent", "ced", "fanout", "memory", "api"), action="append"
    )
    parser.add_argument("--requests", type=int, default=500, help="latency samples per endpoint")
    parser.add_argument("--wall-runs", type=int, default=20, help="ced invocations per command")
    parser.add_argument("--agents", type=int, default=100, help="agents for the fan-out")
    parser.add_argument("--memory-requests", type=int, default=5000)
    parser.add_argument(
        "--isolated", action="store_true", help="start every ctrl-exec process as `python3 -I -S`"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.pyz.exists():
        parser.error(f"{args.pyz} is missing: run python3 build_zipapp.py first")
    wanted = set(args.only or ("agent", "ced", "fanout", "memory", "api"))
    base = Path(tempfile.mkdtemp(prefix="ctrl-exec-bench-"))
    bench = Bench(args.pyz.resolve(), base, args.isolated)
    report: dict = {"machine": machine(), "isolated": args.isolated}
    try:
        port, process = bench.start_agent("bench-01")
        if "memory" in wanted:
            report["agent_idle_rss_mib"] = round(rss_kib(process.pid) / 1024, 1)
        if "agent" in wanted:
            report["agent"] = bench.agent_latency(port, args.requests)
        if "ced" in wanted:
            report["ced"] = bench.ced_wall("bench-01", args.wall_runs)
        if "memory" in wanted:
            report["memory"] = bench.memory(port, process, args.memory_requests)
        if "api" in wanted:
            report["api"] = bench.api_latency("bench-01", args.requests)
        if "fanout" in wanted:
            report["fanout"] = bench.fanout(args.agents, max(3, args.wall_runs // 4))
    finally:
        bench.close()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
