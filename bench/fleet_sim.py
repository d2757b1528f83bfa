"""A fleet of simulated agents in one process, for fan-out benchmarks and tests.

    .venv/bin/python bench/fleet_sim.py --agents 1000 --work /tmp/fleet   # serve until Ctrl-C

Each simulated agent has its own loopback address (127.0.x.y, x from 100),
its own listening socket and its own certificate from a private CA, and
speaks the agent's wire with 0.12's JSON shapes: `POST /ping`, `POST /run`
(every script "runs" and answers `exit 0` with the agent's name and then
each argument on a line of stdout; no process is started) and
`GET /capabilities`. Connections use real mutual TLS: a client certificate
from the CA is required, and its serial must be
the dispatcher's (the trusted-dispatcher check a real agent makes); every
agent's context issues TLS 1.3 session tickets, so resumption works as it
does against our agent.

What the simulator is not: an agent. There is no allowlist, no auth hook,
no rate limit, no admission pool; it answers as fast as it can, so a
benchmark measures the dispatcher, not the agent.

The work directory caches what is slow to make (one key and certificate per
agent) and holds a throwaway dispatcher root: `<work>/dispatcher` with the
CA, the dispatcher's certificate and a registry record for every simulated
agent, so `ced --root <work>/dispatcher ping sim-00000 ...` passes its
identity checks against the simulated fleet.

Threads: one accepts on every listener (epoll), `workers` threads do the
handshakes and answers (OpenSSL releases the GIL during handshakes).
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ctrlexec.config.paths import system_layout  # noqa: E402
from ctrlexec.core import agent_wire  # noqa: E402
from ctrlexec.core.http import (  # noqa: E402
    FramingError,
    IncompleteMessage,
    RequestReader,
    response_bytes,
)
from ctrlexec.core.x509 import facts_from_der  # noqa: E402
from ctrlexec.pki.tls import agent_server_context  # noqa: E402

VERSION = "0.12.3-sim"
# Addresses 127.0.<FIRST_OCTET + n // 254>.<1 + n % 254>: 254 agents per /24.
FIRST_OCTET = 100
PER_NET = 254
MAX_AGENTS = PER_NET * (256 - FIRST_OCTET)
# Bounds on a simulated agent's connection (a stalled client cannot hold a
# worker for long).
CONNECTION_TIMEOUT = 10.0
RECV = 65536


def agent_address(index: int) -> str:
    if not 0 <= index < MAX_AGENTS:
        raise ValueError(f"at most {MAX_AGENTS} simulated agents")
    return f"127.0.{FIRST_OCTET + index // PER_NET}.{1 + index % PER_NET}"


def agent_name(index: int) -> str:
    return f"sim-{index:05d}"


@dataclass(frozen=True)
class SimAgent:
    name: str
    address: str
    pem: Path  # certificate and key in one file


class FleetFiles:
    """The CA, the dispatcher and `count` agent certificates under `work`,
    made once and reused by later runs (the CA key stays in memory only;
    asking for more agents than were made starts a new CA)."""

    def __init__(self, work: Path, count: int):
        self.work = Path(work)
        self.count = count
        self.dispatcher_root = self.work / "dispatcher"
        self.agents_dir = self.work / "agents"
        self.manifest = self.work / "fleet.json"

    def agents(self) -> list[SimAgent]:
        return [
            SimAgent(agent_name(n), agent_address(n), self.agents_dir / f"{agent_name(n)}.pem")
            for n in range(self.count)
        ]

    def prepare(self) -> dict:
        """Make (or reuse) the files; the manifest: dispatcher serial, agent count."""
        if self.manifest.exists():
            manifest = json.loads(self.manifest.read_text())
            if manifest.get("agents", 0) >= self.count:
                return manifest
        return self._make()

    def _make(self) -> dict:
        from tests.support import testpki  # cryptography: only when making files

        self.work.mkdir(parents=True, exist_ok=True)
        self.agents_dir.mkdir(exist_ok=True)
        ca = testpki.SessionCA("ctrl-exec fleet simulator CA")
        dispatcher = testpki.install_dispatcher(ca, self.dispatcher_root)
        registry = testpki.layout_for(self.dispatcher_root).registry_dir
        if registry.exists():
            for old in registry.glob("*.json"):
                old.unlink()
        (self.work / "ca.pem").write_bytes(ca.cert_pem)
        for agent in self.agents():
            issued = ca.issue(agent.name)
            agent.pem.write_bytes(issued.cert_pem + issued.key_pem)
            agent.pem.chmod(0o600)
            testpki.register_agent(
                self.dispatcher_root, agent.name, 7443, issued, dispatcher, ip=agent.address
            )
        manifest = {"agents": self.count, "dispatcher_serial": dispatcher.serial}
        self.manifest.write_text(json.dumps(manifest))
        return manifest

    def set_port(self, port: int) -> None:
        """Point every registry record at the simulator's port."""
        registry = system_layout(self.dispatcher_root.resolve()).registry_dir
        for path in registry.glob("sim-*.json"):
            record = json.loads(path.read_text())
            if record.get("port") != port:
                record["port"] = port
                path.write_text(json.dumps(record))


@dataclass
class Counters:
    connections: int = 0  # handshakes completed
    refused: int = 0  # a client certificate that is not the dispatcher's
    failed: int = 0  # handshakes or exchanges that broke off


class FleetSimulator:
    """Serves `agents` on `port` until `stop()`."""

    def __init__(
        self,
        agents: list[SimAgent],
        ca: Path,
        dispatcher_serial: int,
        port: int = 0,
        workers: int = 16,
    ):
        self.agents = agents
        self.dispatcher_serial = int(dispatcher_serial)
        self.port = port
        self.workers = workers
        self.contexts = [agent_server_context(str(a.pem), str(a.pem), str(ca)) for a in agents]
        self.counters = Counters()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FleetSimulator:
        _raise_open_files(len(self.agents) + 4 * self.workers + 256)
        for attempt in range(20):
            port = self.port or random.randint(20000, 40000)
            try:
                self._listen(port)
            except OSError:
                self._close_listeners()
                if self.port or attempt == 19:
                    raise
                continue
            self.port = port
            break
        self._threads = [threading.Thread(target=self._accept_loop, name="sim-accept")]
        self._threads += [
            threading.Thread(target=self._work_loop, name=f"sim-worker-{n}")
            for n in range(self.workers)
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake_w.send(b"x")
        for _ in range(self.workers):
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=15)
        self._close_listeners()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> FleetSimulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def resumed(self) -> int:
        """Handshakes that resumed a session, counted by OpenSSL as each
        ClientHello is accepted (also when the client then hangs up)."""
        return sum(context.session_stats()["hits"] for context in self.contexts)

    def _listen(self, port: int) -> None:
        for agent in self.agents:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listeners.append(sock)
            sock.bind((agent.address, port))
            sock.listen(256)
            sock.setblocking(False)

    def _close_listeners(self) -> None:
        for sock in self._listeners:
            sock.close()
        self._listeners = []

    # -- threads -------------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            for index, sock in enumerate(self._listeners):
                selector.register(sock, selectors.EVENT_READ, index)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.data is None:
                        return
                    while True:
                        try:
                            conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            time.sleep(0.01)  # out of descriptors: let workers close some
                            break
                        self._queue.put((conn, key.data))

    def _work_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            conn, index = item
            try:
                self._serve(conn, index)
            except (OSError, ssl.SSLError, FramingError, IncompleteMessage):
                self._count("failed")
            finally:
                conn.close()

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.counters, what, getattr(self.counters, what) + 1)

    def _serve(self, conn: socket.socket, index: int) -> None:
        conn.setblocking(True)
        conn.settimeout(CONNECTION_TIMEOUT)
        tls = self.contexts[index].wrap_socket(conn, server_side=True)
        try:
            self._count("connections")
            der = tls.getpeercert(binary_form=True)
            if not der or facts_from_der(der).serial != self.dispatcher_serial:
                self._count("refused")
                tls.sendall(response_bytes(403, dict(agent_wire.SERIAL_MISMATCH)))
                return
            reader = RequestReader()
            request = None
            while request is None:
                data = tls.recv(RECV)
                if not data:
                    request = reader.finish()
                    break
                request = reader.feed(data)
            status, body = self._answer(
                self.agents[index], request.method, request.path, request.body
            )
            tls.sendall(response_bytes(status, body))
        finally:
            tls.close()

    @staticmethod
    def _answer(agent: SimAgent, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if (method, path) == ("POST", "/ping"):
            reqid = agent_wire.ping_reqid(body)
            return 200, agent_wire.ping_body(agent.name, VERSION, "", False, reqid)
        if (method, path) == ("POST", "/run"):
            try:
                run = agent_wire.parse_run(body)
            except agent_wire.RunRejected as exc:
                return 200, exc.body
            stdout = "".join(line + "\n" for line in (agent.name, *run.args))
            return 200, agent_wire.run_result(run, 0, stdout, "")
        if (method, path) == ("GET", "/capabilities"):
            return 200, agent_wire.capabilities_body(agent.name, VERSION, {"sim": "yes"}, [])
        return 404, {"error": "not found"}


def _raise_open_files(needed: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            hard = needed  # root only; otherwise setrlimit says why
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def start_fleet(work: Path, count: int, port: int = 0, workers: int = 16) -> FleetSimulator:
    """Files made or reused, registry pointed at the port, simulator serving."""
    files = FleetFiles(work, count)
    manifest = files.prepare()
    simulator = FleetSimulator(
        files.agents(), files.work / "ca.pem", manifest["dispatcher_serial"], port, workers
    ).start()
    files.set_port(simulator.port)
    return simulator


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--work", type=Path, required=True, help="cache and dispatcher root")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    started = time.monotonic()
    simulator = start_fleet(args.work, args.agents, args.port, args.workers)
    print(
        f"{args.agents} agents on port {simulator.port} "
        f"(ready in {time.monotonic() - started:.1f}s); dispatcher root: "
        f"{args.work / 'dispatcher'}",
        flush=True,
    )

    def report(_signum, _frame) -> None:
        print(json.dumps({**simulator.counters.__dict__, "resumed": simulator.resumed()}))
        sys.stdout.flush()

    def interrupt(_signum, _frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGUSR1, report)  # counters on demand, one JSON line
    # Set explicitly: a job started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
        print(json.dumps({**simulator.counters.__dict__, "resumed": simulator.resumed()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
