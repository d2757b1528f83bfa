"""Pairing that does not end in a certificate: denial, the agent's own
timeout, the dispatcher's approval timeout, and the friendly pre-flight
errors. Bodies are checked on the wire with a raw client, exit codes on the
detached child of request-pairing --background (collected by a subreaper)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.support import openssl
from tests.support.agentproc import wait_for
from tests.support.pairing import (
    RawPairing,
    Reaped,
    agent_env,
    pair_body,
    setup_dispatcher,
    start_listener,
)

DENIED = {"status": "denied", "reason": "rejected by operator"}
TIMED_OUT = {"status": "denied", "reason": "approval timeout"}


def pending(ced) -> dict:
    return {r["hostname"]: r for r in json.loads(ced.run("ced", "list-requests", "--json").stdout)}


def has(ced, *names: str) -> dict | None:
    requests = pending(ced)
    return requests if set(names) <= set(requests) else None


def test_deny_and_the_agents_own_timeout(ctl, tmp_path):
    setup_dispatcher(ctl)
    listener = start_listener(ctl)
    key = openssl.ec_key(tmp_path / "raw.pem")
    agent = agent_env(ctl, tmp_path / "agent-host")
    agent_args = (
        "agent",
        "request-pairing",
        "--dispatcher",
        "127.0.0.1",
        "--port",
        str(listener.port),
        "--background",
    )
    try:
        # a raw 0.12-style client, denied by the operator
        denied_raw = RawPairing(listener.port)
        denied_raw.send(pair_body("raw-deny", openssl.csr(key, "raw-deny")))
        ack = denied_raw.response()
        assert ack["status"] == "pending"
        # our agent in the background, denied: the detached child exits 3
        denied_agent = Reaped(agent, *agent_args, "--hostname", "agent-deny")
        first = denied_agent.first()
        assert first["rc"] == 0, first["stderr"]
        # our agent in the background with a 1 s wait: exits 2 by itself
        slow_agent = Reaped(agent, *agent_args, "--timeout", "1", "--hostname", "agent-slow")

        requests = wait_for(lambda: has(ctl, "raw-deny", "agent-deny"), what="two requests")
        assert first["stdout"].splitlines()[-1] == requests["agent-deny"]["reqid"]
        ctl.run("ced", "deny", ack["reqid"], check=True)
        ctl.run("ced", "deny", requests["agent-deny"]["reqid"], check=True)

        assert denied_raw.response() == DENIED
        assert all(head.startswith(b"HTTP/1.0 200 OK\r\n") for head in denied_raw.heads)
        assert denied_agent.descendants() == [3]
        assert slow_agent.first()["rc"] == 0
        assert slow_agent.descendants() == [2]
        # the agent that gave up withdrew its request
        wait_for(lambda: pending(ctl) == {}, what="agent-slow to leave the queue")
    finally:
        listener.stop()

    dispatcher_log, agent_log = ctl.log_text(), agent.log_text()
    assert "ACTION=pair-deny AGENT=raw-deny" in dispatcher_log
    assert "ACTION=pair-expire AGENT=agent-slow REASON=disconnected" in dispatcher_log
    assert 'ACTION=pair-denied REASON="rejected by operator"' in agent_log
    assert agent_log.count("ACTION=pair-timeout") == 1
    assert not (agent.root / "etc/ctrl-exec-agent/agent.crt").exists()


def test_the_dispatchers_approval_timeout(ctl, tmp_path):
    """Nobody decides before pairing mode times out: the waiting agents are
    told `approval timeout`; ours exits 2."""
    setup_dispatcher(ctl)
    # Long enough for a loaded host to start request-pairing and queue its
    # request before the window closes (checked below, not assumed).
    window = 10
    started = time.monotonic()
    listener = start_listener(ctl, timeout=window)
    agent = agent_env(ctl, tmp_path / "agent-host")
    try:
        waiting_raw = RawPairing(listener.port)
        waiting_raw.send(
            pair_body("raw-wait", openssl.csr(openssl.ec_key(tmp_path / "k.pem"), "raw-wait"))
        )
        assert waiting_raw.response()["status"] == "pending"
        waiting_agent = agent.popen(
            "agent",
            "request-pairing",
            "--dispatcher",
            "127.0.0.1",
            "--port",
            str(listener.port),
            "--hostname",
            "agent-wait",
        )
        wait_for(lambda: has(ctl, "agent-wait"), timeout=window, what="agent-wait queued")
        assert time.monotonic() - started < window, "the window closed before the agent asked"
        assert waiting_raw.response(timeout=window + 10) == TIMED_OUT
        assert time.monotonic() - started >= window - 0.5
        _out, err = waiting_agent.communicate(timeout=20)
        assert waiting_agent.returncode == 2, err
        assert "Pairing failed: approval timeout" in err
        assert f"Pairing mode timed out after {window}s. Stopped." in listener.lines.rest()
        assert listener.proc.wait(10) == 0
    finally:
        listener.stop()
    assert pending(ctl) == {}
    assert "ACTION=pairing-mode-timeout" in ctl.log_text()
    assert "ACTION=pair-timeout" in agent.log_text()


@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_friendly_preflight_errors(ctl, closed_port):
    args = ("agent", "request-pairing", "--port")
    result = ctl.run(*args, "7444", "--dispatcher", "no-such-host.invalid")
    assert result.returncode == 1
    assert "could not resolve the dispatcher host 'no-such-host.invalid'" in result.stderr
    result = ctl.run(*args, str(closed_port), "--dispatcher", "127.0.0.1")
    assert result.returncode == 1
    assert "connection refused" in result.stderr and "ced pairing-mode" in result.stderr
    assert "Traceback" not in result.stderr

    # something that is not a pairing listener (it hangs up on TLS)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def hang_up() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            conn.recv(1)
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    result = ctl.run(*args, str(port), "--dispatcher", "127.0.0.1")
    server.close()
    assert result.returncode == 1
    assert "did not complete a TLS handshake" in result.stderr
    assert not (ctl.root / "etc/ctrl-exec-agent/agent.key").exists()


def test_bad_options(ctl):
    result = ctl.run(
        "agent", "request-pairing", "--dispatcher", "127.0.0.1", "--background", "--timeout", "601"
    )
    assert result.returncode == 1 and "between 1 and 600" in result.stderr
    result = ctl.run(
        "agent", "request-pairing", "--dispatcher", "127.0.0.1", "--ca-fingerprint", "abc"
    )
    assert result.returncode == 1 and "64 hex digits" in result.stderr
    result = ctl.run("agent", "request-pairing", "--dispatcher", "127.0.0.1", "--hostname", "../x")
    assert result.returncode == 1 and "cannot be an agent name" in result.stderr


def test_approving_a_registered_hostname_needs_replace(ctl, tmp_path):
    from ctrlexec.dispatcher.registry import Registry, new_record
    from tests.support.testpki import layout_for

    setup_dispatcher(ctl)
    registry = Registry(layout_for(ctl.root).registry_dir)
    registry.put(
        new_record(
            "web-01", "10.0.0.9", "2026-01-01T00:00:00Z", "", "r0", "ip", 7443, "ab", "current"
        )
    )
    listener = start_listener(ctl)
    key = openssl.ec_key(tmp_path / "raw.pem")
    try:
        raw = RawPairing(listener.port)
        raw.send(pair_body("web-01", openssl.csr(key, "web-01")))
        ack = raw.response()
        refused = ctl.run("ced", "approve", ack["reqid"])
        assert refused.returncode == 1
        assert "'web-01' is already registered" in refused.stderr
        assert f"'approve {ack['reqid']} --replace'" in refused.stderr
        assert registry.get("web-01")["ip"] == "10.0.0.9"
        ctl.run("ced", "approve", ack["reqid"], "--replace", check=True)
        assert raw.response()["status"] == "approved"
        assert registry.get("web-01")["ip"] != "10.0.0.9"
    finally:
        listener.stop()


def test_the_key_of_a_revoked_agent_is_never_certified_again(ctl, tmp_path):
    setup_dispatcher(ctl)
    listener = start_listener(ctl)
    key = openssl.ec_key(tmp_path / "raw.pem")
    try:
        raw = RawPairing(listener.port)
        raw.send(pair_body("web-05", openssl.csr(key, "web-05")))
        ctl.run("ced", "approve", raw.response()["reqid"], check=True)
        assert raw.response()["status"] == "approved"
        ctl.run("ced", "revoke", "--agent", "web-05", check=True)
        # the same key again, under another name: refused on arrival
        again = RawPairing(listener.port)
        again.send(pair_body("web-06", openssl.csr(key, "web-06")))
        refused = again.response()
        assert refused.get("status") != "pending", refused
        assert "invalid request" in json.dumps(refused)
    finally:
        listener.stop()
    assert "REASON=revoked-key" in ctl.log_text()
