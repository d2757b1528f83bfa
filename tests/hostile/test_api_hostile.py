"""Hostile and broken clients against a real `dispatcher serve`: none of them
may stop it from answering the next client, every answer it gives must be
one the OpenAPI document describes, and a silent client is dropped after
`api_request_timeout`. Plus randomised bodies for the pure validation."""

from __future__ import annotations

import json
import random
import socket
import time

import pytest

from ctrlexec.core import api_wire
from tests.support import agentproc, apiproc
from tests.support.fleet import running_fleet
from tests.support.fuzz import random_body

REQUEST_TIMEOUT = 1
KEYS = ["hosts", "script", "args", "username", "token", "async", "x"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, session_ca, pyz_for):
    base = tmp_path_factory.mktemp("api-hostile")
    scripts = {"echo-args": agentproc.APPENDIX_C_SCRIPTS["echo-args"]}
    with running_fleet(session_ca, pyz_for, base, ("agent-01",), scripts) as fleet:
        process = apiproc.ApiProcess(
            fleet.dispatcher, api_auth_default="allow", api_request_timeout=REQUEST_TIMEOUT
        ).start()
        try:
            yield {"process": process, "client": process.client(), "ctl": fleet.dispatcher}
            assert process.proc.poll() is None, "the API died"
            log = fleet.dispatcher.log_text()
            assert "ACTION=connection-error" not in log and "ACTION=api-error" not in log
        finally:
            assert process.stop() == 0


def serving(env) -> bool:
    response = env["client"].get("/health")
    return response.status == 200 and response.json["ok"] is True


def test_random_bodies_get_documented_answers(env):
    rng = random.Random(5)
    client = env["client"]
    for _n in range(60):
        path = rng.choice(["/run", "/ping", "/discovery"])
        value, body = random_body(rng, KEYS)
        if isinstance(value, dict) and rng.random() < 0.5:
            value = dict(value, hosts=["agent-01"], script="echo-args")
            body = json.dumps(value).encode()
        response = client.post(path, body)  # checked against the document
        assert response.status in (200, 202, 400, 404, 409), (path, body, response.json)
    assert serving(env)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET " + b"/" * 20_000 + b" HTTP/1.0\r\n\r\n",
        b"GET /health HTTP/1.0\r\nX: " + b"v" * 20_000 + b"\r\n\r\n",
        b"POST /run HTTP/1.0\r\nContent-Length: -1\r\n\r\n",
        b"POST /run HTTP/1.0\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"\x00\xff\r\n\r\n",
    ],
)
def test_malformed_requests(env, raw):
    response = env["client"].raw(raw, "", "")  # no operation: the ErrorResponse schema
    assert response.status in (400, 404, 413, 431)
    assert response.json["ok"] is False and response.json["error"]
    assert serving(env)


def test_truncated_request_and_early_close(env):
    for raw in (b'POST /run HTTP/1.0\r\nContent-Length: 100\r\n\r\n{"hosts"', b"GET /hea"):
        with socket.create_connection(("127.0.0.1", env["process"].port)) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b""  # nobody to answer: closed without a word
    assert serving(env)


def test_tls_hello_on_plain_http_is_dropped(env):
    """No line end ever comes: dropped at the request timeout, unanswered."""
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64)
    assert env["client"].exchange(hello) == b""
    assert serving(env)


def test_silent_client_is_dropped_and_blocks_nobody(env):
    before = env["ctl"].log_text().count("ACTION=request-timeout")
    with socket.create_connection(("127.0.0.1", env["process"].port)) as silent:
        assert serving(env)  # answered while the silent one waits
        silent.settimeout(REQUEST_TIMEOUT + 30)
        started = time.monotonic()
        assert silent.recv(100) == b""
        assert time.monotonic() - started < REQUEST_TIMEOUT + 30
    agentproc.wait_for(
        lambda: env["ctl"].log_text().count("ACTION=request-timeout") > before,
        30,
        "the request-timeout line",
    )


def test_many_connections_at_once(env):
    """More clients than threads: every one is answered, 200 or 503."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        return env["client"].get("/health").status

    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = list(pool.map(one, range(200)))
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert serving(env)


def test_random_bodies_never_crash_validation():
    rng = random.Random(11)
    for _ in range(3000):
        _, body = random_body(rng, KEYS)
        for parse in (api_wire.parse_run, api_wire.parse_ping, api_wire.parse_discovery):
            try:
                parse(body)
            except api_wire.ApiError as exc:
                reply = api_wire.error_reply(exc)
                assert reply.status == 400 and reply.body["detail"]
        api_wire.gate_token(body)
