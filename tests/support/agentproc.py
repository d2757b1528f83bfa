"""A real agent for tests: its files under a `--root`, `agent serve` started
through the pyz, and a dispatcher-side TLS client built from the standard
library only (independent of the code under test).

Readiness is awaited by polling the pidfile and the port with a deadline;
nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import testpki

# The allowlist of the observed 0.12.3 deployment (protocol.md Appendix C.0).
APPENDIX_C_SCRIPTS = {
    "echo-args": '#!/bin/sh\nfor a in "$@"; do printf \'%s\\n\' "$a"; done\n',
    "show-context": "#!/bin/sh\ncat\n",
    "fail": "#!/bin/sh\necho about to fail\necho something went wrong >&2\nexit ${1:-3}\n",
    "sleep": "#!/bin/sh\nsleep ${1:-2}\necho done\n",
}


# Waits until the test lets it go: `block DIR` creates DIR/started, then
# returns once DIR/go exists (polled by the script itself, not by the test).
BLOCK = '#!/bin/sh\n: > "$1/started"\nwhile [ ! -e "$1/go" ]; do sleep 0.02; done\necho released\n'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(type(value))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_script(path: Path, text: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


@dataclass
class AgentSite:
    """One agent's files under `root`."""

    root: Path
    name: str
    port: int
    settings: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    allowlist: dict[str, Any] = field(default_factory=dict)
    issued: Any = None  # the agent's testpki.Issued certificate

    @property
    def layout(self):
        return testpki.layout_for(self.root)

    @property
    def scripts_dir(self) -> Path:
        return self.root / "opt" / "ctrl-exec-scripts"

    @property
    def pidfile(self) -> Path:
        return self.layout.agent_pidfile

    def write_config(self) -> None:
        values = {"port": self.port, "bind": "127.0.0.1", "rate_limit_disable": True}
        values.update(self.settings)
        lines = [f"{key} = {toml_value(value)}" for key, value in values.items()]
        if self.tags:
            lines += ["", "[tags]"] + [
                f"{json.dumps(k)} = {toml_value(v)}" for k, v in self.tags.items()
            ]
        lines += ["", "[profile.default]", ""]
        self.layout.agent_config.parent.mkdir(parents=True, exist_ok=True)
        self.layout.agent_config.write_text("\n".join(lines))

    def write_allowlist(self) -> None:
        lines = [
            f"{json.dumps(name)} = {toml_value(value)}" for name, value in self.allowlist.items()
        ]
        self.layout.allowlist.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.layout.allowlist.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.layout.allowlist)

    def add_script(self, name: str, text: str, **entry: Any) -> Path:
        path = write_script(self.scripts_dir / f"{name}.sh", text)
        self.allowlist[name] = {"path": str(path), **entry} if entry else str(path)
        return path


def install_site(
    ca: testpki.SessionCA,
    root: Path,
    dispatcher: testpki.Issued | None,
    name: str = "agent-01",
    scripts: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
    dispatcher_id: str = "test-dispatcher",
    agent_days: int = 825,
) -> AgentSite:
    issued = testpki.install_agent(ca, root, name, dispatcher, dispatcher_id, days=agent_days)
    site = AgentSite(root, name, free_port(), dict(settings or {}), issued=issued)
    site.settings.setdefault("script_dirs", [str(site.scripts_dir)])
    for script, text in (APPENDIX_C_SCRIPTS if scripts is None else scripts).items():
        site.add_script(script, text)
    site.write_config()
    site.write_allowlist()
    return site


class AgentProcess:
    """`agent serve` for a site, run through the pyz runner `ctl`."""

    def __init__(
        self, ctl, site: AgentSite, extra_args: tuple[str, ...] = (), pidfile: Path | None = None
    ):
        self.ctl = ctl
        self.site = site
        self.extra_args = extra_args
        self.pidfile = pidfile or site.pidfile
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, deadline_seconds: float = 30.0, attempts: int = 3) -> AgentProcess:
        for _ in range(attempts):
            self.pidfile.unlink(missing_ok=True)
            self.proc = self.ctl.popen(
                "agent", "serve", *self.extra_args, stdout=subprocess.DEVNULL
            )
            if self._await_ready(deadline_seconds):
                return self
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            if "cannot listen" not in stderr:
                raise AssertionError(f"agent serve exited {self.proc.returncode}: {stderr}")
            self.site.port = free_port()  # someone else took the port: try another
            self.site.write_config()
        raise AssertionError("agent serve could not find a free port")

    def _await_ready(self, seconds: float) -> bool:
        # The agent writes its pidfile once it listens (a TCP probe would
        # count as a failed handshake).
        assert self.proc is not None
        return await_pidfile(self.proc, self.pidfile, seconds, "agent")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        return stop_process(self.proc, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def stop_process(proc: subprocess.Popen | None, timeout: float = 30.0) -> int:
    """SIGTERM a server (if still running), wait, close its pipes; its exit status."""
    if proc is None:
        return 0
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def await_pidfile(proc: subprocess.Popen, pidfile: Path, seconds: float, what: str) -> bool:
    """True once a server wrote its pidfile (it does so once listening);
    False when it exited first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if pidfile.exists():
            return True
        time.sleep(0.01)
    raise AssertionError(f"{what} not ready within {seconds} s")


def wait_for(predicate, seconds: float = 20.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy (and return that),
    failing after `seconds`. For conditions no event announces: a file
    appearing, a log line written by another process."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def in_thread(call):
    """Start `call` on a thread; the returned function waits for it (at most
    `timeout` seconds) and returns its value or raises its exception."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result(timeout: float = 60.0):
        thread.join(timeout)
        assert not thread.is_alive(), "the call did not finish"
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


@dataclass
class RawResponse:
    status: int
    phrase: str
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(data: bytes) -> RawResponse:
    """An HTTP/1.0 response as 0.12 writes it, parsed strictly by hand."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, phrase = lines[0].split(" ", 2)
    assert version == "HTTP/1.0", lines[0]
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    return RawResponse(int(status), phrase, headers, body)  # type: ignore[arg-type]


class DispatcherClient:
    """Talks to an agent as a dispatcher does: mTLS with a client cert, one
    request per connection, read to EOF. Standard library only."""

    def __init__(self, cert: Path | None, key: Path | None, ca: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(cafile=str(ca))
        if cert is not None:
            self.context.load_cert_chain(str(cert), str(key))

    @classmethod
    def for_dispatcher(cls, root: Path) -> DispatcherClient:
        layout = testpki.layout_for(root)
        return cls(layout.dispatcher_cert, layout.dispatcher_key, layout.ca_cert)

    def connect(self, port: int, timeout: float = 30.0) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        return self.context.wrap_socket(raw)

    def exchange(self, port: int, raw_request: bytes, timeout: float = 30.0) -> bytes:
        with self.connect(port, timeout) as conn:
            conn.sendall(raw_request)
            chunks = []
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def request(
        self, port: int, method: str, path: str, body: Any = None, timeout: float = 30.0
    ) -> RawResponse:
        payload = b""
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        if method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        raw = head.encode() + b"\r\n" + payload
        return parse_response(self.exchange(port, raw, timeout))

    def run(self, port: int, script: str, args: list[str] | None = None, **fields: Any) -> dict:
        body = {"script": script, "args": args or [], "reqid": fields.pop("reqid", "r1"), **fields}
        response = self.request(port, "POST", "/run", body)
        assert response.status == 200, (response.status, response.body)
        return response.json()
