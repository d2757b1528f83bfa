"""Hostile and broken clients against a real agent: none of them may stop it
from serving the next dispatcher. Plus randomised input for the pure /run
validation and routing."""

from __future__ import annotations

import json
import random
import socket
import ssl
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest

from ctrlexec.core import agent_wire
from tests.support import testpki
from tests.support.agentproc import AgentProcess, DispatcherClient, install_site, wait_for
from tests.support.fuzz import random_body

REQUEST_TIMEOUT = 2


@pytest.fixture(scope="module")
def env(tmp_path_factory, session_ca, pyz_for):
    base = tmp_path_factory.mktemp("hostile")
    dispatcher = testpki.install_dispatcher(session_ca, base / "dispatcher")
    site = install_site(
        session_ca,
        base / "agent",
        dispatcher,
        settings={
            "request_timeout": REQUEST_TIMEOUT,
            "handshake_timeout": REQUEST_TIMEOUT,
            "max_children": 600,
        },
    )
    # Both streams at the output cap: a reply (about 8 MiB) larger than the
    # agent's send buffer (tcp_wmem max 4 MiB) plus what an idle peer takes,
    # so writing it must block until the peer's reset arrives.
    site.add_script(
        "flood",
        "#!/bin/sh\nhead -c 5000000 /dev/zero | tr '\\0' f\n"
        "head -c 5000000 /dev/zero | tr '\\0' e >&2\n",
    )
    site.write_allowlist()
    ctl = pyz_for(base / "agent")
    agent = AgentProcess(ctl, site).start()
    yield {
        "site": site,
        "agent": agent,
        "ctl": ctl,
        "client": DispatcherClient.for_dispatcher(base / "dispatcher"),
        "session_ca": session_ca,
    }
    assert agent.alive(), "the agent died"
    assert "ACTION=connection-error" not in ctl.log_text()
    assert agent.stop() == 0


def serving(env) -> bool:
    assert env["agent"].alive()
    response = env["client"].request(env["site"].port, "POST", "/ping", {"reqid": "alive"})
    return response.status == 200 and response.json()["reqid"] == "alive"


def reset_close(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def log_count(env, text: str) -> int:
    return env["ctl"].log_text().count(text)


def test_aborted_handshake(env):
    port = env["site"].port
    before = log_count(env, "ACTION=tls-failure")
    for cut in (0, 5, 60):
        raw = socket.create_connection(("127.0.0.1", port))
        hello = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = env["client"].context.wrap_bio(*hello)
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        raw.sendall(hello[1].read()[:cut])
        reset_close(raw)
    wait_for(lambda: log_count(env, "ACTION=tls-failure") >= before + 3, what="tls failures")
    assert serving(env)


def test_abort_right_after_the_handshake_and_mid_request(env):
    port = env["site"].port
    conn = env["client"].connect(port)
    reset_close(conn)
    conn = env["client"].connect(port)
    conn.sendall(b'POST /run HTTP/1.1\r\nContent-Length: 500\r\n\r\n{"scr')
    reset_close(conn)
    assert serving(env)


def test_plaintext_and_garbage_instead_of_tls(env):
    port = env["site"].port
    for payload in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)) * 8,
        b"\x16\x03\x01\xff\xff",
    ):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(payload)
            raw.settimeout(10)
            try:
                raw.recv(1024)
            except OSError:
                pass
    assert serving(env)


def test_silent_clients_are_dropped_after_the_request_timeout(env):
    port = env["site"].port
    before = log_count(env, "ACTION=request-timeout")
    silent_tcp = socket.create_connection(("127.0.0.1", port))
    silent_tls = env["client"].connect(port)  # handshake done, then nothing
    try:
        assert serving(env)  # the agent is not waiting on them
        silent_tls.settimeout(REQUEST_TIMEOUT + 10)
        assert silent_tls.recv(100) == b""  # closed by the agent, unanswered
        wait_for(lambda: log_count(env, "ACTION=request-timeout") > before, what="request-timeout")
        silent_tcp.settimeout(10)
        assert silent_tcp.recv(100) == b""
    finally:
        silent_tcp.close()
        silent_tls.close()
    assert "REASON=timeout" in env["ctl"].log_text()


def test_200_simultaneous_connections(env):
    port = env["site"].port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    try:
        assert serving(env)
        with ThreadPoolExecutor(50) as pool:
            results = list(
                pool.map(
                    lambda i: (
                        env["client"]
                        .request(port, "POST", "/ping", {"reqid": f"c{i}"})
                        .json()["reqid"]
                    ),
                    range(200),
                )
            )
        assert results == [f"c{i}" for i in range(200)]
    finally:
        for sock in idle:
            sock.close()
    assert serving(env)


def test_client_vanishing_while_the_reply_is_written(env):
    """A reply of several MB to a peer that reset the connection: SIGPIPE/EPIPE
    must only fail that reply."""
    port = env["site"].port
    before = log_count(env, "ACTION=reply-fail")
    body = json.dumps({"script": "flood", "reqid": "gone"}).encode()
    conn = env["client"].connect(port)
    conn.sendall(b"POST /run HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    conn.recv(100)  # the reply has started
    reset_close(conn)
    wait_for(lambda: log_count(env, "ACTION=reply-fail") > before, what="reply-fail")
    assert serving(env)


def test_random_bytes_after_the_handshake(env):
    rng = random.Random(1234)
    port = env["site"].port
    for _ in range(25):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
        if rng.random() < 0.5:
            junk = rng.choice([b"POST /run HTTP/1.1\r\n", b"GET /capabilities\r\n", b"\r\n"]) + junk
        with env["client"].connect(port) as conn:
            conn.sendall(junk + b"\r\n\r\n")
            conn.settimeout(REQUEST_TIMEOUT + 10)
            data = b""
            try:
                while chunk := conn.recv(65536):
                    data += chunk
            except (ssl.SSLError, OSError):
                pass
        if data:
            assert data.startswith(b"HTTP/1.0 "), data[:100]
    assert serving(env)


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 400),
        (b"POST /ping HTTP/1.1\r\nX: " + b"v" * 9000 + b"\r\n\r\n", 431),
        (b"POST /ping HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /ping HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 413),
    ],
)
def test_oversized_and_malformed_framing(env, raw, status):
    with env["client"].connect(env["site"].port) as conn:
        conn.sendall(raw)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.0 %d " % status)
    assert serving(env)


@pytest.mark.parametrize(
    "raw, status, body",
    [
        # only the request line is framed: the headers after it cannot turn
        # the refusal into a 431 or a 413
        (
            b"POST /run HTTP/1.1\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(40))
            + b"Content-Length: 99999999999\r\n\r\n",
            403,
            {"error": "serial mismatch", "status": "forbidden"},
        ),
        (b"GET /nope HTTP/1.1\r\nX: " + b"v" * 9000 + b"\r\n\r\n", 404, None),
        (b"POST /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 400, None),
        (b"\r\n\r\n", 400, None),
    ],
)
def test_an_untrusted_peer_has_only_its_request_line_framed(env, tmp_path, raw, status, body):
    stranger_root = tmp_path / "stranger"
    testpki.install_dispatcher(env["session_ca"], stranger_root)
    stranger = DispatcherClient.for_dispatcher(stranger_root)
    data = stranger.exchange(env["site"].port, raw)
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 %d " % status), data[:200]
    if body is not None:
        assert json.loads(payload) == body
    assert serving(env)


def test_deeply_nested_and_huge_json_bodies(env):
    port = env["site"].port
    for body in (b"[" * 500_000, b'{"args":' + b"[" * 200_000 + b"]" * 200_000 + b"}"):
        response = env["client"].request(port, "POST", "/run", body)
        assert response.status == 200 and response.json()["exit"] == -1
    many = json.dumps({"script": "echo-args", "args": ["x"] * 100_000}).encode()
    result = env["client"].request(port, "POST", "/run", many).json()
    assert result["exit"] == 0 and result["stdout"] == "x\n" * 100_000
    assert serving(env)


# --- pure validation under random input -------------------------------------------------


RUN_KEYS = ["script", "args", "reqid", "username", "token", "async", "x"]


def test_parse_run_accepts_or_rejects_every_input_cleanly():
    rng = random.Random(99)
    for _ in range(3000):
        _, body = random_body(rng, RUN_KEYS)
        try:
            request = agent_wire.parse_run(body)
        except agent_wire.RunRejected as rejected:
            assert rejected.body["exit"] == -1 and isinstance(rejected.body["error"], str)
            json.dumps(rejected.body)
            continue
        assert all(isinstance(a, str) and "\x00" not in a for a in request.args)
        assert all(
            isinstance(v, str)
            for v in (request.script, request.reqid, request.username, request.token)
        )


def test_route_never_raises():
    rng = random.Random(7)
    alphabet = "/abcrunpigesult-_?.%\x00 \u00e9"
    for _ in range(3000):
        method = rng.choice(["GET", "POST", "get", "", "PUT"])
        path = "".join(rng.choice(alphabet) for _ in range(rng.randrange(20)))
        found = agent_wire.route(method, path)
        assert found.name in {
            agent_wire.RUN,
            agent_wire.PING,
            agent_wire.CAPABILITIES,
            agent_wire.RESULT,
            agent_wire.ROTATE_SERIAL,
            agent_wire.RENEW,
            agent_wire.RENEW_COMPLETE,
            agent_wire.UNKNOWN,
        }
