"""Fan-out benchmarks against the fleet simulator. Prints figures; asserts nothing.

    .venv/bin/python bench/fleet_bench.py                   # 100, 1000 and 5000 agents
    .venv/bin/python bench/fleet_bench.py --sizes 1000 --json

The simulator (bench/fleet_sim.py) runs as its own process with one address
and one certificate per agent (cached under --work between runs). Then, in
this order, each in the same run:

  floor   the best a bare Python client does against the same simulator:
          mTLS handshake plus one /ping per connection, on --parallel threads
          (the same count ced uses), in exchanges per second; then the same
          client offering each agent the session of its previous exchange
          (resumed handshakes, as `dispatcher serve` makes them);
  ping    `ced ping` of N simulated agents through the built pyz: wall time,
          the ced process's CPU (user + system), its peak RSS and its peak
          thread count (sampled from /proc every few milliseconds);
  api     runs per second through `dispatcher serve` (plain HTTP, no hook):
          --clients concurrent clients each POSTing /run of one agent, and
          how many of those runs resumed their agent's TLS session; then a
          POST /ping of the largest fleet, twice (the second resumes); the
          server's peak RSS (VmHWM) and threads over all of it.

The load average of the machine is printed beside each figure: the
simulator shares the machine's cores with the dispatcher, and other work
on the machine moves every number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import fleet_sim  # noqa: E402  (this directory is on sys.path)

from ctrlexec.config.paths import system_layout  # noqa: E402
from ctrlexec.core import http  # noqa: E402
from ctrlexec.pki.tls import agent_server_context, dispatcher_client_context  # noqa: E402


def load() -> float:
    return round(os.getloadavg()[0], 2)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def openssl_ceiling(root: Path, work: Path, seconds: int) -> dict:
    """What OpenSSL's own C programs cost per mutual-TLS handshake with the
    same certificates and the agent's ticket setting: `openssl s_time`
    (one connection at a time, the dispatcher's certificate) against
    `openssl s_server` (a simulated agent's certificate). The sum of both
    sides' CPU per handshake bounds the handshakes per second that this
    machine's cores can do when they play both ends, whatever the language."""
    if shutil.which("openssl") is None:
        return {"skipped": "no openssl binary"}
    layout = system_layout(root)
    agent_pem = str(work / "agents" / f"{fleet_sim.agent_name(0)}.pem")
    tickets = agent_server_context(agent_pem, agent_pem, str(work / "ca.pem")).num_tickets
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["openssl", "s_server", "-quiet", "-num_tickets", str(tickets), "-cert", agent_pem,
         "-key", agent_pem, "-CAfile", str(work / "ca.pem"), "-Verify", "1",
         "-accept", f"127.0.0.1:{port}", "-naccept", "1000000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    return {"skipped": "openssl s_server did not start"}
                time.sleep(0.05)
        server_cpu = process_cpu(server.pid)
        client = subprocess.Popen(
            ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds),
             "-cert", str(layout.dispatcher_cert), "-key", str(layout.dispatcher_key),
             "-CAfile", str(layout.ca_cert)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert client.stdout is not None
        out = client.stdout.read()  # s_time stops by itself after `seconds`
        _, _, usage = os.wait4(client.pid, 0)
        client.returncode = 0
        server_cpu = process_cpu(server.pid) - server_cpu
    finally:
        server.terminate()
        server.wait(10)
    counts = re.findall(r"^(\d+) connections in [\d.]+ real seconds", out, re.M)
    if not counts:
        return {"skipped": "openssl s_time gave no count"}
    handshakes = int(counts[-1])
    client_ms = (usage.ru_utime + usage.ru_stime) * 1000 / handshakes
    server_ms = server_cpu * 1000 / handshakes
    cpus = os.cpu_count() or 1
    return {
        "handshakes": handshakes,
        "tickets_per_handshake": tickets,
        "client_cpu_ms_each": round(client_ms, 2),
        "server_cpu_ms_each": round(server_ms, 2),
        "both_ends_per_second_max": round(cpus * 1000 / (client_ms + server_ms), 1),
        "load": load(),
    }


class Simulator:
    """bench/fleet_sim.py as a child process."""

    def __init__(self, work: Path, agents: int, workers: int):
        self.work = work
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / "fleet_sim.py"),
                "--agents",
                str(agents),
                "--work",
                str(work),
                "--workers",
                str(workers),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if " agents on port " not in line:
            raise SystemExit(f"the simulator did not start: {line!r}")
        self.port = int(line.split(" agents on port ")[1].split()[0])

    def cpu(self) -> float:
        """CPU seconds (user + system) the simulator has used so far."""
        return process_cpu(self.process.pid)

    def stats(self) -> dict:
        """The simulator's counters, asked for with SIGUSR1."""
        assert self.process.stdout is not None
        self.process.send_signal(signal.SIGUSR1)
        return json.loads(self.process.stdout.readline())

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGINT)
        try:
            out, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()  # the figures measured so far still get printed
            out, _ = self.process.communicate()
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}


def floor(
    root: Path, port: int, agents: int, parallel: int, count: int, sim_cpu, resume: bool = False
) -> dict:
    """A bare Python client: `count` exchanges (handshake and one /ping) on
    `parallel` threads. With `resume`, a first pass over at most `count`
    agents (not measured) keeps each agent's session, and the measured pass
    offers it: what a client that can keep sessions (`dispatcher serve`)
    pays per exchange."""
    layout = system_layout(root)
    context = dispatcher_client_context(
        str(layout.dispatcher_cert), str(layout.dispatcher_key), str(layout.ca_cert)
    )
    lock = threading.Lock()
    failures = [0]
    resumed = [0]
    sessions: dict[str, ssl.SSLSession] = {}
    if resume:
        agents = min(agents, count)

    def exchange(address: str) -> None:
        with (
            socket.create_connection((address, port), timeout=30) as raw,
            context.wrap_socket(raw, session=sessions.get(address)) as tls,
        ):
            tls.sendall(http.request_bytes("POST", "/ping", b"{}"))
            while tls.recv(65536):
                pass
            if resume and tls.session is not None:
                sessions[address] = tls.session
            if tls.session_reused:
                with lock:
                    resumed[0] += 1

    def loop(cursor) -> None:
        while True:
            with lock:
                n = next(cursor, None)
            if n is None:
                return
            try:
                exchange(fleet_sim.agent_address(n % agents))
            except OSError:
                with lock:
                    failures[0] += 1

    def run(total: int) -> None:
        cursor = iter(range(total))
        threads = [threading.Thread(target=loop, args=(cursor,)) for _ in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    if resume:
        run(agents)  # the sessions the measured pass offers
        failures[0] = resumed[0] = 0
    before = load()
    started = time.perf_counter()
    cpu = time.process_time()
    sim_before = sim_cpu()
    run(count)
    wall = time.perf_counter() - started
    return {
        "exchanges": count,
        "threads": parallel,
        "resumed": resumed[0],
        "per_second": round(count / wall, 1),
        "client_cpu_ms_each": round((time.process_time() - cpu) * 1000 / count, 2),
        "simulator_cpu_ms_each": round((sim_cpu() - sim_before) * 1000 / count, 2),
        "failures": failures[0],
        "load": [before, load()],
    }


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS", "VmHWM"):
                values[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return values


class Peak:
    """Peak thread count and RSS of a process, sampled every few ms."""

    def __init__(self, pid: int):
        self.pid = pid
        self.values = {"Threads": 0, "VmRSS": 0, "VmHWM": 0}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            for key, value in _status(self.pid).items():
                # VmHWM is already a peak: the latest one is that of the
                # program the process runs now (a child reads as its parent
                # until its exec).
                self.values[key] = value if key == "VmHWM" else max(self.values[key], value)
            self._done.wait(0.002)

    def stop(self) -> dict[str, int]:
        self._done.set()
        self._thread.join()
        return self.values


def ced_ping(pyz: Path, root: Path, agents: int, env: dict, sim_cpu) -> dict:
    names = [fleet_sim.agent_name(n) for n in range(agents)]
    argv = [sys.executable, str(pyz), "ced", "--root", str(root), "--json", "ping", *names]
    before = load()
    sim_before = sim_cpu()
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sampler = Peak(process.pid)
    assert process.stdout is not None
    out = process.stdout.read()
    peak = sampler.stop()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    answers = json.loads(out)["results"] if out.strip() else []
    return {
        "agents": agents,
        "exit": process.returncode,
        "ok": sum(1 for answer in answers if answer.get("status") == "ok"),
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "simulator_cpu_s": round(sim_cpu() - sim_before, 2),
        # VmHWM of ced's own image: the child's ru_maxrss also counts this
        # process's memory at the moment it was spawned (before the exec).
        "peak_rss_mib": round(peak["VmHWM"] / 1024, 1),
        "peak_threads": peak["Threads"],
        "load": [before, load()],
    }


def api_ping(port: int, agents: int, sim_resumed) -> dict:
    """One POST /ping of `agents` hosts through the API: the second one
    resumes the agents' sessions from the first."""
    hosts = [fleet_sim.agent_name(n) for n in range(agents)]
    body = json.dumps({"hosts": hosts}).encode()
    resumed_before = sim_resumed()
    before = load()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as conn:
        conn.sendall(http.request_bytes("POST", "/ping", body))
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    wall = time.perf_counter() - started
    answer = json.loads(reply.split(b"\r\n\r\n", 1)[1] or b"{}")
    return {
        "agents": agents,
        "ok": sum(1 for r in answer.get("results", []) if r.get("status") == "ok"),
        "wall_s": round(wall, 2),
        "resumed": sim_resumed() - resumed_before,
        "load": [before, load()],
    }


def api_throughput(
    pyz: Path,
    root: Path,
    agents: int,
    clients: int,
    runs: int,
    env: dict,
    sim_resumed,
    fan_out_agents: int,
) -> dict:
    layout = system_layout(root)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = layout.dispatcher_config
    saved = config.read_text()
    config.write_text(
        saved + f'api_port = {port}\napi_auth_default = "allow"\napi_max_children = 256\n'
    )
    pidfile = root / "api.pid"
    pidfile.unlink(missing_ok=True)
    server = subprocess.Popen(
        [sys.executable, str(pyz), "dispatcher", "--root", str(root), "serve", "--pidfile",
         str(pidfile), "--no-maintenance"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("dispatcher serve did not start")
            time.sleep(0.02)
        cursor = iter(range(runs))
        lock = threading.Lock()
        failures = [0]

        def client() -> None:
            while True:
                with lock:
                    n = next(cursor, None)
                if n is None:
                    return
                body = json.dumps(
                    {"hosts": [fleet_sim.agent_name(n % agents)], "script": "trivial"}
                ).encode()
                with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
                    conn.sendall(http.request_bytes("POST", "/run", body))
                    reply = b""
                    while chunk := conn.recv(65536):
                        reply += chunk
                if not reply.startswith(b"HTTP/1.0 200"):
                    with lock:
                        failures[0] += 1

        resumed_before = sim_resumed()
        before = load()
        sampler = Peak(server.pid)
        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        resumed = sim_resumed() - resumed_before
        fan_out = [api_ping(port, fan_out_agents, sim_resumed) for _ in range(2)]
        peak = sampler.stop()
        return {
            "api_ping": fan_out,
            "runs": runs,
            "clients": clients,
            "agents": agents,
            "runs_per_second": round(runs / wall, 1),
            "failures": failures[0],
            "resumed": resumed,
            "server_peak_rss_mib": round(peak["VmHWM"] / 1024, 1),
            "server_peak_threads": peak["Threads"],
            "load": [before, load()],
        }
    finally:
        server.terminate()
        server.wait(30)
        config.write_text(saved)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pyz", type=Path, default=REPO / "dist/ctrl-exec.pyz")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctrl-exec-fleet-bench"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--parallel", type=int, default=64, help="max_parallel for ced")
    parser.add_argument("--floor-count", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=16, help="simulator worker threads")
    parser.add_argument("--clients", type=int, default=8, help="concurrent API clients")
    parser.add_argument("--api-runs", type=int, default=2000)
    parser.add_argument(
        "--api-ping-agents", type=int, default=0, help="hosts of the API /ping (default: largest)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="ced pings per size")
    parser.add_argument("--no-ping", action="store_true", help="leave out the ced pings")
    parser.add_argument("--no-api", action="store_true", help="leave out dispatcher serve")
    parser.add_argument(
        "--ceiling-seconds", type=int, default=5, help="length of the OpenSSL measurement (0: none)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.pyz.exists():
        parser.error(f"{args.pyz} is missing: run python3 build_zipapp.py first")
    largest = max(args.sizes)
    prepare_started = time.perf_counter()
    simulator = Simulator(args.work, largest, args.workers)
    root = (args.work / "dispatcher").resolve()
    system_layout(root).dispatcher_config.write_text(
        f"max_hosts = {max(largest, 500)}\nmax_parallel = {args.parallel}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRL_EXEC_")}
    env["CTRL_EXEC_LOG_TARGET"] = str(args.work / "bench.log")
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "simulator_ready_s": round(time.perf_counter() - prepare_started, 1),
        "max_parallel": args.parallel,
    }
    try:
        if args.ceiling_seconds:
            report["openssl"] = openssl_ceiling(root, args.work, args.ceiling_seconds)
        report["floor"] = floor(
            root, simulator.port, largest, args.parallel, args.floor_count, simulator.cpu
        )
        report["floor_resumed"] = floor(
            root, simulator.port, largest, args.parallel, args.floor_count, simulator.cpu, True
        )
        report["ping"] = [
            ced_ping(args.pyz, root, size, env, simulator.cpu)
            for size in args.sizes
            for _ in range(0 if args.no_ping else args.rounds)
        ]
        if not args.no_api:
            report["api"] = api_throughput(
                args.pyz,
                root,
                min(largest, 100),
                args.clients,
                args.api_runs,
                env,
                lambda: simulator.stats()["resumed"],
                args.api_ping_agents or largest,
            )
    finally:
        report["simulator"] = simulator.stop()
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
