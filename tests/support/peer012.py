"""A stand-in for a ctrl-exec 0.12 agent, for dispatcher wire tests.

It is a test double of the REMOTE peer only: a real TLS server on loopback
(agent certificate from the session CA, client certificate required) that
answers with the bytes a 0.12.3 agent sends (protocol.md Appendix C: HTTP/1.0,
two headers, Perl's key order). Tests use it to check how our dispatcher
client handles 0.12's wire and the failures a real agent cannot be made to
produce on demand (403, 413, garbage, a close without a reply, silence).
Acceptance tests of the product run against our real `agent serve`.

Each received request is recorded (method, path, headers, parsed body);
`arrived` is set when one comes in, and a `hold` behaviour keeps the reply
back until the test sets `release`.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.testpki import Issued, SessionCA

# Appendix C.1 / C.3 response heads, byte for byte.
PHRASE = {
    200: "OK",
    202: "Accepted",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
}


def http_response(status: int, body: bytes) -> bytes:
    return (
        f"HTTP/1.0 {status} {PHRASE.get(status, 'Unknown')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def ping_body(reqid: str, host: str = "vm") -> bytes:
    # Key order as observed in C.1.
    return (
        f'{{"host":"{host}","staged":false,"version":"0.12.3","reqid":"{reqid}","status":"ok",'
        '"expiry":"Feb 24 12:58:55 2029 GMT"}'
    ).encode()


def run_body(request: dict) -> bytes:
    """echo-args of C.1: each argument on its own line."""
    stdout = "".join(arg + "\n" for arg in request.get("args", []))
    return json.dumps(
        {
            "script": request.get("script", ""),
            "stderr": "",
            "stdout": stdout,
            "exit": 0,
            "reqid": request.get("reqid", ""),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


@dataclass
class Received:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    raw_body: bytes
    peer_serial: int | None = None  # serial of the client certificate presented

    @property
    def json(self) -> dict:
        return json.loads(self.raw_body)


Behaviour = Callable[["Received"], bytes | None]

# The certificate each running peer presents, by port: tests register the
# peer under any name with the identity it really has.
ISSUED_BY_PORT: dict[int, Issued] = {}


def issued_at(ca: SessionCA, port: int, name: str) -> Issued:
    """The certificate of the peer on `port`, or a fresh one for `name`
    when no peer runs there."""
    return ISSUED_BY_PORT.get(port) or ca.issue(name)


def default_behaviour(request: Received) -> bytes:
    if request.method == "POST" and request.path == "/ping":
        try:
            reqid = request.json.get("reqid", "")
        except ValueError:
            reqid = ""
        return http_response(200, ping_body(reqid))
    if request.method == "POST" and request.path == "/run":
        return http_response(200, run_body(request.json))
    return http_response(404, b'{"error":"not found"}')


@dataclass
class Peer012:
    """`with Peer012(ca, tmp_path) as peer:` ... `peer.port`."""

    ca: SessionCA
    directory: Path
    behaviour: Behaviour = default_behaviour
    cn: str = "vm"
    client_ca: SessionCA | None = None  # CA that client certs must chain to (default: ca)
    received: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Peer012:
        issued: Issued = self.ca.issue(self.cn)
        self.issued = issued
        self.directory.mkdir(parents=True, exist_ok=True)
        cert, key, ca = (
            self.directory / "peer.crt",
            self.directory / "peer.key",
            self.directory / "ca.crt",
        )
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        ca.write_bytes((self.client_ca or self.ca).cert_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(cafile=ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        ISSUED_BY_PORT[self.port] = issued
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self.release.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                request = _read_request(tls)
                if request is None:
                    return
                request.peer_serial = _peer_serial(tls)
                self.received.append(request)
                self.arrived.set()
                reply = self.behaviour(request)
                if reply is not None:
                    tls.sendall(reply)
        except (OSError, ssl.SSLError, ValueError):
            pass


def _peer_serial(tls: ssl.SSLSocket) -> int | None:
    der = tls.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def _read_request(tls: ssl.SSLSocket) -> Received | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, version = ([*lines[0].split(), "", "", ""])[:3]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            return None
        body += chunk
    return Received(method, path, version, headers, body[:length])


def hold_then(reply: Behaviour, peer: Peer012) -> Behaviour:
    """Answer with `reply` only once the test sets `peer.release`."""

    def behaviour(request: Received) -> bytes | None:
        peer.release.wait(30)
        return reply(request)

    return behaviour


class SerialGate012:
    """A 0.12.3 agent's trusted-dispatcher map and `/rotate-serial` (protocol.md
    §3.7): requests are gated on the client certificate's serial; `add`
    maps the sent serial to the caller's id; `remove` deletes it."""

    def __init__(self, trusted: dict[str, str]):
        self.trusted = dict(trusted)  # serial key -> dispatcher id
        self.lock = threading.Lock()

    def __call__(self, request: Received) -> bytes:
        from ctrlexec.core.serial import Serial, normalise_received

        key = "" if request.peer_serial is None else Serial(request.peer_serial).trust_key()
        with self.lock:
            caller = self.trusted.get(key)
            if caller is None:
                return http_response(403, b'{"status":"forbidden","error":"serial mismatch"}')
            if request.method == "POST" and request.path == "/rotate-serial":
                body = request.json
                serial = normalise_received(body.get("serial", ""))
                action = body.get("action") or "add"
                if action == "add":
                    self.trusted[serial] = caller
                elif self.trusted.get(serial) == caller:
                    del self.trusted[serial]
                reply = {
                    "status": "ok",
                    "action": action,
                    "serial": body.get("serial"),
                    "dispatcher": caller,
                }
                return http_response(200, json.dumps(reply).encode())
        return default_behaviour(request)
