"""Helpers for pairing tests: a listener started through the pyz, a raw
pairing client written from the wire description alone (the bytes a 0.12
agent sends), polling with deadlines, and a subreaper that reports the exit
code of request-pairing's detached child."""

from __future__ import annotations

import json
import queue
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SUBREAPER = Path(__file__).with_name("subreaper.py")


class Lines:
    """Lines of a child's output, read by a thread, taken with a deadline
    (select() on a buffered pipe misses lines already buffered)."""

    def __init__(self, stream):
        self._queue: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put("")

    def next(self, timeout: float) -> str:
        """The next line ('' at EOF)."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s; so far: {self.seen}") from None
        self.seen.append(line)
        return line

    def rest(self, timeout: float = 20) -> str:
        """Everything up to EOF."""
        deadline = time.monotonic() + timeout
        while self.next(max(0.01, deadline - time.monotonic())):
            pass
        return "".join(self.seen)


def setup_dispatcher(ctl, config: str = "") -> None:
    """A dispatcher host as an operator sets it up: optional ctrl-exec.toml,
    then `ced setup-ca` and `ced setup-ctrl-exec`."""
    if config:
        etc = ctl.root / "etc/ctrl-exec"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "ctrl-exec.toml").write_text(config)
    ctl.run("ced", "setup-ca", check=True)
    ctl.run("ced", "setup-ctrl-exec", check=True)


@dataclass
class Listener:
    proc: subprocess.Popen
    port: int
    fingerprint: str
    lines: Lines

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_listener(ctl, *extra: str, timeout: int = 60) -> Listener:
    """`ced pairing-mode` without a terminal (as the demo runs it), on a free port."""
    proc = ctl.popen(
        "ced",
        "pairing-mode",
        "--port",
        "0",
        "--timeout",
        str(timeout),
        *extra,
        stdin=subprocess.DEVNULL,
    )
    lines = Lines(proc.stdout)
    while True:
        line = lines.next(30)
        if not line:
            raise AssertionError(f"pairing-mode exited: {lines.seen}{proc.stderr.read()}")
        match = re.match(r"CA fingerprint \(SHA-256\): (\S+)", line)
        if match:
            port = int(re.search(r"port (\d+)", lines.seen[0]).group(1))
            return Listener(proc, port, match.group(1), lines)


def agent_env(ctl, root: Path):
    """A second pyz runner with its own root (another host's files)."""
    root.mkdir(parents=True, exist_ok=True)
    return type(ctl)(ctl.path, ctl.cache, root)


# --- a raw pairing client -------------------------------------------------


def _read_response(tls: ssl.SSLSocket, buffer: bytes, timeout: float) -> tuple[bytes, bytes, bytes]:
    """(head, body, rest): one response read by Content-Length."""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buffer:
        buffer += _recv(tls, deadline)
    head, buffer = buffer.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head).group(1))
    while len(buffer) < length:
        buffer += _recv(tls, deadline)
    return head, buffer[:length], buffer[length:]


def _recv(tls: ssl.SSLSocket, deadline: float) -> bytes:
    tls.settimeout(max(0.01, deadline - time.monotonic()))
    data = tls.recv(65536)
    if not data:
        raise EOFError("connection closed")
    return data


class RawPairing:
    """One connection speaking exactly what a 0.12 agent writes."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.tls = context.wrap_socket(socket.create_connection((host, port), timeout=10))
        self.buffer = b""
        self.heads: list[bytes] = []

    def send(self, body: bytes) -> None:
        self.tls.sendall(
            b"POST /pair HTTP/1.0\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    def response(self, timeout: float = 20.0) -> dict:
        head, body, self.buffer = _read_response(self.tls, self.buffer, timeout)
        self.heads.append(head)
        return json.loads(body)

    def close(self) -> None:
        self.tls.close()


def pair_body(
    hostname: str, csr: str, nonce: str = "9fb2e5da0af54bd6943d62b666c61e0d", **extra
) -> bytes:
    """Field order and types as observed from a 0.12 agent (port as a string)."""
    fields = {"hostname": hostname}
    fields.update(extra)
    fields.update({"nonce": nonce, "csr": csr})
    return json.dumps(fields, separators=(",", ":")).encode()


CLOSED = None  # the listener hung up without an answer


def frame(body: bytes, length: int | None = None, extra: bytes = b"") -> bytes:
    declared = len(body) if length is None else length
    return (
        b"POST /pair HTTP/1.0\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(declared).encode()
        + b"\r\n\r\n"
        + body
    )


def exchange(port: int, data: bytes, close_early: bool = False, tls: bool = True):
    """Send `data`; return the error reason of the one response, or CLOSED."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        if not tls:
            raw.sendall(data)
            return _reason(_read_all(raw))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = context.wrap_socket(raw)
        conn.sendall(data)
        if close_early:
            conn.close()
            return CLOSED
        return _reason(_read_all(conn))
    except (ConnectionError, ssl.SSLError):
        return CLOSED
    finally:
        raw.close()


def _read_all(conn) -> bytes:
    data = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except (ConnectionError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk


def _reason(data: bytes) -> str | None:
    if not data:
        return CLOSED
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.0 200 OK", data[:200]
    reply = json.loads(body)
    assert reply["status"] == "error", reply  # never "pending"
    return reply["reason"]


def probe(port: int, host: str = "127.0.0.1") -> None:
    """0.12's pre-flight: connect and close at once."""
    socket.create_connection((host, port), timeout=5).close()


# --- request-pairing --background under a subreaper -----------------------


class Reaped:
    """Runs a command under tests/support/subreaper.py: `first()` is the
    command's own result, `descendants()` the exit codes of what it left."""

    def __init__(self, ctl, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(SUBREAPER), *ctl.argv(*args)],
            env=ctl.env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines = Lines(self.proc.stdout)

    def first(self, timeout: float = 30) -> dict:
        return json.loads(self.lines.next(timeout))

    def descendants(self, timeout: float = 30) -> list[int]:
        result = json.loads(self.lines.next(timeout))
        self.proc.wait(5)
        return result["exit_codes"]
