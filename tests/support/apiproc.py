"""`dispatcher serve` for tests, and an HTTP client for it that knows nothing
of our code: raw sockets (optionally TLS), HTTP/1.0 responses parsed
strictly by hand, and every response body checked against the OpenAPI
document the API ships (tests/support/openapi_check.py).

Readiness is awaited on the pidfile the server writes once it listens;
nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

from tests.support import agentproc, openapi_check, testpki


def write_config(root: Path, **keys: Any) -> Path:
    layout = testpki.layout_for(root)
    layout.dispatcher_config.parent.mkdir(parents=True, exist_ok=True)
    layout.dispatcher_config.write_text(
        "".join(f"{key} = {agentproc.toml_value(value)}\n" for key, value in keys.items())
    )
    return layout.dispatcher_config


class ApiProcess:
    """`dispatcher serve` under a dispatcher root, on a free port. The
    config file exists only while the server starts, so `ced` commands run
    meanwhile under the same root see the defaults."""

    _count = 0

    def __init__(self, ctl, **config: Any):
        self.ctl = ctl
        self.config = dict(config)
        self.config.setdefault("api_bind", "127.0.0.1")
        self.port = 0
        self.proc: subprocess.Popen | None = None
        ApiProcess._count += 1
        self.pidfile = Path(ctl.root) / f"api-{ApiProcess._count}.pid"

    def start(self, attempts: int = 3, seconds: float = 30.0) -> ApiProcess:
        for _ in range(attempts):
            self.port = agentproc.free_port()
            config = write_config(self.ctl.root, api_port=self.port, **self.config)
            self.pidfile.unlink(missing_ok=True)
            self.proc = self.ctl.popen(
                "dispatcher", "serve", "--pidfile", str(self.pidfile), stdout=subprocess.PIPE
            )
            try:
                if self._await_ready(seconds):
                    return self
            finally:
                config.unlink()
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            if "cannot listen" not in stderr:
                raise AssertionError(f"dispatcher serve exited {self.proc.returncode}: {stderr}")
        raise AssertionError("dispatcher serve could not find a free port")

    def _await_ready(self, seconds: float) -> bool:
        assert self.proc is not None
        return agentproc.await_pidfile(self.proc, self.pidfile, seconds, "dispatcher serve")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 60.0) -> int:
        return agentproc.stop_process(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything."""
        assert self.proc is not None
        self.proc.kill()
        agentproc.stop_process(self.proc)

    def client(self, tls_ca: Path | None = None) -> ApiClient:
        return ApiClient(self.port, tls_ca)


class ApiResponse:
    def __init__(self, raw: agentproc.RawResponse):
        self.status = raw.status
        self.phrase = raw.phrase
        self.headers = raw.headers
        self.body = raw.body
        self.json = json.loads(raw.body)


class ApiClient:
    """One request per connection, as 0.12's API expects."""

    def __init__(self, port: int, tls_ca: Path | None = None, host: str = "127.0.0.1"):
        self.port = port
        self.host = host
        self.context = None
        if tls_ca is not None:
            self.context = ssl.create_default_context(cafile=str(tls_ca))
            self.context.check_hostname = False

    def connect(self, timeout: float = 60.0) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        return self.context.wrap_socket(sock) if self.context else sock

    def exchange(self, raw_request: bytes, timeout: float = 60.0) -> bytes:
        with self.connect(timeout) as conn:
            conn.sendall(raw_request)
            chunks = []
            while True:
                try:
                    chunk = conn.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def raw(self, raw_request: bytes, method: str, path: str, timeout: float = 60.0) -> ApiResponse:
        """Send bytes as given; the answer is checked against the document."""
        response = ApiResponse(agentproc.parse_response(self.exchange(raw_request, timeout)))
        assert [name for name, _ in response.headers] == ["Content-Type", "Content-Length"], (
            response.headers
        )
        assert int(dict(response.headers)["Content-Length"]) == len(response.body)
        openapi_check.check_response(method, path, response.status, response.json)
        return response

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> ApiResponse:
        payload = b""
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        return self.raw(head.encode() + b"\r\n" + payload, method, path, timeout)

    def get(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> ApiResponse:
        return self.request("POST", path, body, **kwargs)
