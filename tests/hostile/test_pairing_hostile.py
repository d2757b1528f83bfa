"""The pairing port under hostile input: more than a thousand malformed,
oversized, truncated or otherwise wrong requests, silent connections and a
thousand simultaneous connections, against a listener whose queue is full
of real waiting agents. Every one gets 0.12's error body or a closed
connection and a log line; the listener keeps serving; the CA, queue and
registry files do not change."""

from __future__ import annotations

import random
import socket
import ssl
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import openssl
from tests.support.agentproc import wait_for
from tests.support.pairing import (
    CLOSED,
    RawPairing,
    exchange,
    frame,
    pair_body,
    setup_dispatcher,
    start_listener,
)

TOO_LARGE = "request too large"
INVALID = "invalid request"
HOSTNAME = "invalid hostname"
FULL = "pairing queue full"
ERRORS = {TOO_LARGE, INVALID, HOSTNAME, FULL}


def snapshot(root: Path) -> dict:
    """Every file under the dispatcher's directories: mode and content."""
    files = {}
    for base in ("etc/ctrl-exec", "var/lib/ctrl-exec"):
        for path in sorted((root / base).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(root))] = (
                    stat.S_IMODE(path.stat().st_mode),
                    path.read_bytes(),
                )
    return files


@pytest.fixture(scope="module")
def csrs(tmp_path_factory):
    d = tmp_path_factory.mktemp("csrs")
    rsa = openssl.rsa_key(d / "rsa.pem")
    good = openssl.csr(rsa, "intruder")
    body = "".join(good.splitlines()[1:-1])
    broken = body[:-12] + ("B" if body[-12] == "A" else "A") + body[-11:]
    ed = d / "ed.pem"
    openssl.run("genpkey", "-algorithm", "ed25519", "-out", str(ed))
    return {
        "good": good,
        "weak key": openssl.csr(openssl.rsa_key(d / "weak.pem", 1024), "intruder"),
        "sha1": openssl.csr(rsa, "intruder", "sha1"),
        "md5": openssl.csr(rsa, "intruder", "md5"),
        "bad signature": "-----BEGIN CERTIFICATE REQUEST-----\n"
        + "\n".join(broken[i : i + 64] for i in range(0, len(broken), 64))
        + "\n-----END CERTIFICATE REQUEST-----\n",
        "other cn": openssl.csr(rsa, "someone-else"),
        "p521": openssl.csr(openssl.ec_key(d / "p521.pem", "secp521r1"), "intruder"),
        "ed25519": openssl.run("req", "-new", "-key", str(ed), "-subj", "/CN=intruder"),
        "huge": good.replace("-----END", "A" * 12_000 + "\n-----END"),
    }


def cases(csrs: dict, rng: random.Random) -> list[tuple[str, bytes, set, dict]]:
    """(label, bytes, acceptable outcomes, exchange options) - over a thousand."""
    good = pair_body("intruder", csrs["good"])
    out = []

    def add(label, data, allowed, **options):
        out.append((label, data, allowed, options))

    for label in (
        "weak key",
        "sha1",
        "md5",
        "bad signature",
        "other cn",
        "p521",
        "ed25519",
        "huge",
    ):
        for _ in range(10):
            add(f"csr {label}", frame(pair_body("intruder", csrs[label])), {INVALID})
    for text in (
        b"not json",
        b"{",
        b"[]",
        b"null",
        b'"csr"',
        b"123",
        b"",
        b"\xff\xfe\x00",
        b"[" * 5000 + b"]" * 5000,
        b'{"hostname":"x"}',
        b'{"csr":"y"}',
        b'{"hostname":"","csr":"y"}',
        b'{"hostname":"x","csr":7}',
        b'{"hostname":["x"],"csr":"y"}',
        b'{"hostname":"x","csr":"y","nonce":5}',
        b'{"hostname":"x","csr":"not a pem"}',
    ):
        for _ in range(8):
            add(f"json {text[:20]!r}", frame(text), {INVALID})
    for name in (
        "../../etc/passwd",
        "a/b",
        "..",
        ".",
        "-lead",
        "web 01",
        "web\x00x",
        "wéb",
        "x" * 300,
        "a\\b",
        "a:b",
        "$(id)",
        "web\n01",
    ):
        for _ in range(6):
            add(f"hostname {name[:12]!r}", frame(pair_body(name, csrs["good"])), {HOSTNAME})
    for _ in range(20):
        add("declared too large", frame(b"", length=65_537), {TOO_LARGE})
        add("sent too large", frame(b"x" * 70_000), {TOO_LARGE})
        add("bad length", b"POST /pair HTTP/1.0\r\nContent-Length: -5\r\n\r\n", {INVALID})
        add("text length", b"POST /pair HTTP/1.0\r\nContent-Length: 1e3\r\n\r\n", {INVALID})
        add("no length", b"POST /pair HTTP/1.0\r\n\r\n" + good, {INVALID})
        add("headers", b"POST /pair HTTP/1.0\r\n" + b"X-A: b\r\n" * 40 + b"\r\n", {INVALID})
        add("long line", b"POST /pair HTTP/1.0\r\nX: " + b"a" * 10_000 + b"\r\n\r\n", {INVALID})
        add("empty request line", b"\r\n\r\n", {INVALID})
        add("bare LF", frame(b"[]").replace(b"\r\n", b"\n"), {INVALID})
        add("truncated body", frame(good[:100], length=len(good)), {CLOSED}, close_early=True)
        add("truncated head", b"POST /pair HTTP/1.0\r\nContent-Le", {CLOSED}, close_early=True)
        add("not TLS", frame(good), {CLOSED}, tls=False)
        add("binary", bytes(rng.getrandbits(8) for _ in range(200)), {CLOSED}, tls=False)
        add("the 11th request", frame(good), {FULL})
    for _ in range(450):  # mutants of a valid request: an error either way
        data = bytearray(good)
        mode = rng.randrange(3)
        if mode == 0:
            data = data[: rng.randrange(1, len(data))]
        elif mode == 1:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
        else:
            position = rng.randrange(len(data))
            data[position:position] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 40)))
        add("mutant", frame(bytes(data)), ERRORS)
    return out


def test_hostile_pairing_requests(ctl, csrs):
    # the volume limit would block this one address after ten connections
    # (tested on its own in test_pki_cli); silent clients are cut off at 2 s
    setup_dispatcher(ctl, "pairing_rate_limit_disable = true\npairing_request_timeout = 2\n")
    listener = start_listener(ctl, timeout=300)
    port = listener.port
    waiting = []
    try:
        key = openssl.ec_key(ctl.root / "fill.pem")
        for index in range(10):  # a full queue of real, waiting requests
            client = RawPairing(port)
            client.send(pair_body(f"fill-{index}", openssl.csr(key, f"fill-{index}")))
            assert client.response()["status"] == "pending"
            waiting.append(client)
        before = snapshot(ctl.root)

        # connections that never send a byte (plain and after the handshake)
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        silent_tls = [
            context.wrap_socket(socket.create_connection(("127.0.0.1", port))) for _ in range(3)
        ]
        started = time.monotonic()

        plan = cases(csrs, random.Random(1234))
        assert len(plan) >= 1000
        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(lambda case: exchange(port, case[1], **case[3]), plan))
        wrong = [
            (label, got, allowed)
            for (label, _, allowed, _), got in zip(plan, results, strict=True)
            if got not in allowed
        ]
        assert not wrong, wrong[:10]

        for sock in silent + silent_tls:
            sock.settimeout(10)
            assert sock.recv(1) == b""  # the listener hung up on them
            sock.close()
        assert time.monotonic() - started < 30

        # a thousand connections at once
        crowd = []
        for _ in range(1000):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            crowd.append(sock)
        time.sleep(0.5)
        for sock in crowd:
            sock.close()

        assert listener.proc.poll() is None
        assert wait_for(
            lambda: exchange(port, frame(b"[]")) == INVALID,
            timeout=30,
            what="the listener to answer after the crowd",
        )
        assert snapshot(ctl.root) == before
        rejects = ctl.log_text().count("ACTION=pair-reject")
        assert rejects >= len(plan) - 40  # every request that arrived, minus hung-up ones
        assert ctl.log_text().count("REASON=timeout") >= 6
    finally:
        listener.stop()
        for client in waiting:
            client.close()
