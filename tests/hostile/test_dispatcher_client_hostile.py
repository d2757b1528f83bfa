"""Hostile and broken agents against the dispatcher's client: every reply,
however wrong, becomes that host's result with an error, within bounds,
and never an exception. Plus randomised bodies for the result builders."""

from __future__ import annotations

import json
import random

import pytest

from ctrlexec.core import report, results
from ctrlexec.dispatcher import agent_client
from ctrlexec.pki.tls import dispatcher_client_context
from tests.support import testpki
from tests.support.fuzz import random_body
from tests.support.peer012 import Peer012


@pytest.fixture(scope="module")
def context(session_ca, tmp_path_factory):
    root = tmp_path_factory.mktemp("dispatcher")
    testpki.install_dispatcher(session_ca, root)
    layout = testpki.layout_for(root)
    return dispatcher_client_context(
        str(layout.dispatcher_cert), str(layout.dispatcher_key), str(layout.ca_cert)
    )


HOSTILE = {
    "endless content-length": (
        b"HTTP/1.0 200 OK\r\nContent-Length: 99999999999999\r\n\r\n{}",
        "response too large",
    ),
    "header flood": (
        b"HTTP/1.0 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n{}",
        "too many response headers",
    ),
    "endless status line": (b"HTTP/1.0 200 " + b"O" * 20000, "response line too long"),
    "not http": (b"220 smtp.example ESMTP\r\n\r\n", "malformed status line"),
    "truncated body": (
        b'HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n{"exit":0',
        "truncated response",
    ),
    "bad content-length": (
        b"HTTP/1.0 200 OK\r\nContent-Length: -5\r\n\r\n{}",
        "invalid Content-Length in response",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_replies_become_protocol_failures(context, session_ca, tmp_path, name):
    reply, detail = HOSTILE[name]
    with Peer012(session_ca, tmp_path / "p", behaviour=lambda request: reply) as peer:
        outcome = agent_client.exchange(context, "127.0.0.1", peer.port, "POST", "/run", b"{}", 5)
    assert isinstance(outcome, results.Failure)
    assert (outcome.kind, outcome.detail) == (results.PROTOCOL, detail)
    result = results.run_result("vm", "s", "r", "1ms", None, outcome, 5)
    assert result.wire["exit"] == -1 and detail in result.wire["error"]


def test_endless_body_without_length_is_bounded(context, session_ca, tmp_path):
    """Read to EOF, but never past the response cap (set low here so the
    test need not send 64 MiB)."""
    flood = b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 300_000
    with Peer012(session_ca, tmp_path / "p", behaviour=lambda request: flood) as peer:
        outcome = agent_client.exchange(
            context, "127.0.0.1", peer.port, "POST", "/ping", b"{}", 5, max_body=100_000
        )
    assert isinstance(outcome, results.Failure) and outcome.detail == "response too large"


RESULT_KEYS = [
    "exit",
    "stdout",
    "stderr",
    "host",
    "status",
    "reqid",
    "error",
    "rtt",
    "expiry",
    "version",
    "reported_hostname",
    "script",
]


def test_random_bodies_always_give_a_result_that_renders():
    rng = random.Random(20261123)
    for _ in range(3000):
        value, body = random_body(rng, RESULT_KEYS)
        status = rng.choice([200, 200, 202, 403, 404, 413, 500, 599])
        reply = results.AgentReply(status, "Whatever", body)
        run = results.run_result("vm", "s", "r", "1ms", reply, None, 60)
        ping = results.ping_result("vm", "1ms", reply, None, 60)
        assert run.wire["host"] == "vm" and ping.wire["host"] == "vm"
        assert run.host == "vm" and ping.host == "vm"
        assert isinstance(run.exit_code, int)
        if run.failed and not (200 <= status < 300 and isinstance(value, dict)):
            assert run.wire["exit"] == -1 and isinstance(run.wire["error"], str)
        report.run_text([run])
        report.ping_text([ping])
        json.dumps({"ok": 1, "results": [run.to_wire(), ping.to_wire()]})
