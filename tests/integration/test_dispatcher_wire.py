"""The dispatcher engine on the wire: real mTLS on loopback against a
stand-in for a ctrl-exec 0.12 agent (tests/support/peer012.py), checking
what we send, how 0.12's replies are read, and every failure string."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from ctrlexec import log
from ctrlexec.core.caller import Caller
from ctrlexec.dispatcher.engine import Engine, EngineSettings
from ctrlexec.dispatcher.locks import HostScriptLocks
from ctrlexec.dispatcher.registry import Registry
from ctrlexec.errors import BadRequest, Locked, PolicyDenied, UnknownAgents
from tests.support import testpki
from tests.support.peer012 import (
    Peer012,
    default_behaviour,
    hold_then,
    http_response,
    issued_at,
    ping_body,
)

TOKEN = "s3cret-token-value"


class Dispatcher:
    def __init__(self, ca: testpki.SessionCA, root: Path):
        self.ca = ca
        self.root = root
        self.layout = testpki.layout_for(root)
        self.issued = testpki.install_dispatcher(ca, root)
        self.log_path = root / "dispatcher.log"
        log.configure(log.IDENT_DISPATCHER, str(self.log_path), "kv")

    def register(self, name: str, port: int, address: str = "127.0.0.1", agent=None) -> None:
        agent = agent or issued_at(self.ca, port, name)
        testpki.register_agent(self.root, name, port, agent, self.issued, ip=address)

    def engine(self, **overrides) -> Engine:
        values = dict(
            cert=str(self.layout.dispatcher_cert),
            key=str(self.layout.dispatcher_key),
            ca=str(self.layout.ca_cert),
            read_timeout=5,
        )
        values.update(overrides)
        return Engine(
            EngineSettings(**values),
            Registry(self.layout.registry_dir),
            HostScriptLocks(self.layout.locks_dir),
        )

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def dispatcher(session_ca, tmp_path):
    yield Dispatcher(session_ca, tmp_path / "dispatcher")
    log.configure(log.IDENT_DISPATCHER, "stderr", "kv")


@pytest.fixture
def peer(session_ca, tmp_path):
    with Peer012(session_ca, tmp_path / "peer") as running:
        yield running


def run(engine: Engine, hosts, script="echo-args", args=(), **kwargs):
    return engine.run(hosts, script, list(args), caller=Caller("alice", TOKEN), **kwargs)


def test_ping_request_and_result_match_0_12(dispatcher, peer):
    dispatcher.register("vm", peer.port)
    [result] = dispatcher.engine().ping(["vm"], caller=Caller())
    [request] = peer.received
    assert (request.method, request.path) == ("POST", "/ping")
    assert len(request.headers) <= 32 and request.headers["content-length"] == str(
        len(request.raw_body)
    )
    assert set(request.json) == {"reqid"} and re.fullmatch(r"[0-9a-f]{16}", request.json["reqid"])
    # C.4: the agent's fields plus host and rtt
    assert set(result.wire) == {"host", "rtt", "reqid", "staged", "expiry", "status", "version"}
    assert result.wire["reqid"] == request.json["reqid"] and result.wire["host"] == "vm"
    assert re.fullmatch(r"\d+ms", result.wire["rtt"]) and result.wire["staged"] is False
    assert re.search(r"ACTION=ping REQID=[0-9a-f]{16} RESULT=ok RTT=\d+ms", dispatcher.log_text())
    assert f"TARGET=127.0.0.1:{peer.port}" in dispatcher.log_text()


@pytest.mark.parametrize(
    "args",
    [
        ["hello", "two words"],
        [
            "line one\nline two",
            "",
            "tab\there",
            "ünïcødé ✓",
            "'quoted' \"double\"",
            "--flag",
            "$HOME;ls",
        ],
    ],
)
def test_run_sends_the_0_12_body_and_forwards_the_token(dispatcher, peer, args):
    dispatcher.register("vm", peer.port)
    [result] = run(dispatcher.engine(), ["vm"], args=args)
    [request] = peer.received
    assert (request.method, request.path) == ("POST", "/run")
    assert request.headers["content-type"] == "application/json"
    body = request.json
    assert set(body) == {"script", "args", "reqid", "username", "token"}
    assert body["args"] == args and body["token"] == TOKEN and body["username"] == "alice"
    assert result.to_wire() == {
        "script": "echo-args",
        "stderr": "",
        "stdout": "".join(a + "\n" for a in args),
        "exit": 0,
        "reqid": body["reqid"],
        "host": "vm",
        "rtt": result.wire["rtt"],
    }
    assert TOKEN not in dispatcher.log_text()
    assert f"ACTION=dispatch HOSTS=vm MODE=sync REQID={body['reqid']}" in dispatcher.log_text()


def test_one_reqid_for_every_host_and_results_in_the_order_given(dispatcher, session_ca, tmp_path):
    with (
        Peer012(session_ca, tmp_path / "a") as first,
        Peer012(session_ca, tmp_path / "b") as second,
    ):
        dispatcher.register("db-02", first.port)
        dispatcher.register("web-01", second.port)
        results = run(dispatcher.engine(max_parallel=2), ["web-01", "db-02"], args=["x"])
        assert [r.host for r in results] == ["web-01", "db-02"]
        reqids = {first.received[0].json["reqid"], second.received[0].json["reqid"]}
        assert len(reqids) == 1 and {r.reqid for r in results} == reqids


def test_host_port_overrides_the_registered_port(dispatcher, peer):
    dispatcher.register("vm", 1, agent=peer.issued)  # nothing listens there
    [result] = dispatcher.engine().ping([f"vm:{peer.port}"], caller=Caller())
    assert result.wire["status"] == "ok" and result.wire["host"] == "vm"


def test_agent_registered_on_the_default_port_uses_the_port_option(dispatcher, peer):
    dispatcher.register("vm", 7443, agent=peer.issued)
    [result] = dispatcher.engine().ping(["vm"], caller=Caller(), port=peer.port)
    assert result.wire["status"] == "ok"


def test_reply_read_to_eof_without_content_length(dispatcher, session_ca, tmp_path):
    def no_length(request):
        return (
            b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"exit":0,"stdout":"eof\\n"}'
        )

    with Peer012(session_ca, tmp_path / "p", behaviour=no_length) as peer:
        dispatcher.register("vm", peer.port)
        [result] = run(dispatcher.engine(), ["vm"])
    assert result.wire["exit"] == 0 and result.wire["stdout"] == "eof\n"


def test_large_output_arrives_whole(dispatcher, session_ca, tmp_path):
    big = "x" * (3 * 1024 * 1024)

    def large(request):
        return http_response(
            200,
            json.dumps(
                {
                    "exit": 0,
                    "stdout": big,
                    "stderr": "",
                    "script": "s",
                    "reqid": request.json["reqid"],
                }
            ).encode(),
        )

    with Peer012(session_ca, tmp_path / "p", behaviour=large) as peer:
        dispatcher.register("vm", peer.port)
        [result] = run(dispatcher.engine(), ["vm"])
    assert result.wire["stdout"] == big


@pytest.mark.parametrize(
    "status, body, error",
    [
        (403, b'{"error":"serial mismatch","status":"forbidden"}', "forbidden: serial mismatch"),
        (403, b'{"error":"certificate revoked"}', "forbidden: certificate revoked"),
        (413, b'{"error":"request too large"}', "request too large"),
        (404, b'{"error":"not found"}', "404 Not Found"),
        (200, b"not json at all", "invalid JSON response"),
    ],
)
def test_agent_refusals_become_0_12_errors(dispatcher, session_ca, tmp_path, status, body, error):
    with Peer012(
        session_ca, tmp_path / "p", behaviour=lambda r: http_response(status, body)
    ) as peer:
        dispatcher.register("vm", peer.port)
        [result] = run(dispatcher.engine(), ["vm"], script="fail")
    assert result.wire["exit"] == -1 and result.wire["error"] == error
    assert result.wire["host"] == "vm" and result.wire["script"] == "fail"
    logged = "ACTION=run EXIT=-1 " if status == 200 else "ACTION=run ERROR="
    assert logged in dispatcher.log_text()


def test_an_answer_to_another_request_is_that_hosts_error(dispatcher, session_ca, tmp_path):
    """An agent echoing a reqid we did not send: the host fails and the
    answer is not passed on as ours."""

    def confused(request):
        if request.path == "/ping":
            return http_response(200, ping_body("0123456789abcdef"))
        body = {"script": "s", "exit": 0, "stdout": "other run", "stderr": "", "reqid": "x1"}
        return http_response(200, json.dumps(body).encode())

    with Peer012(session_ca, tmp_path / "p", behaviour=confused) as peer:
        dispatcher.register("vm", peer.port)
        [ran] = run(dispatcher.engine(), ["vm"])
        [pinged] = dispatcher.engine().ping(["vm"], caller=Caller())
    error = "reqid mismatch: the agent answered another request"
    assert ran.to_wire() == {
        "host": "vm",
        "script": "echo-args",
        "exit": -1,
        "error": error,
        "rtt": ran.wire["rtt"],
        "reqid": ran.wire["reqid"],
    }
    assert ran.wire["reqid"] != "x1" and "other run" not in json.dumps(ran.to_wire())
    assert pinged.to_wire() == {
        "host": "vm",
        "status": "error",
        "error": error,
        "rtt": pinged.wire["rtt"],
    }
    lines = dispatcher.log_text().splitlines()
    for action in ("run", "ping"):
        [line] = [line for line in lines if f": ACTION={action} " in line]
        assert f'ERROR="{error}"' in line, line


def test_close_without_reply(dispatcher, session_ca, tmp_path):
    with Peer012(session_ca, tmp_path / "p", behaviour=lambda r: None) as peer:
        dispatcher.register("vm", peer.port)
        [result] = dispatcher.engine().ping(["vm"], caller=Caller())
    assert result.to_wire() == {
        "host": "vm",
        "status": "error",
        "rtt": result.wire["rtt"],
        "error": "host '127.0.0.1' closed the connection without a response",
    }


def test_garbage_reply_is_a_protocol_error(dispatcher, session_ca, tmp_path):
    with Peer012(session_ca, tmp_path / "p", behaviour=lambda r: b"SSH-2.0-nope\r\n\r\n") as peer:
        dispatcher.register("vm", peer.port)
        [result] = run(dispatcher.engine(), ["vm"])
    assert result.wire["exit"] == -1 and "sent an invalid response" in result.wire["error"]


def test_silence_is_a_read_timeout_for_run(dispatcher, session_ca, tmp_path):
    with Peer012(session_ca, tmp_path / "p") as peer:
        peer.behaviour = hold_then(default_behaviour, peer)
        dispatcher.register("vm", peer.port)
        [result] = run(dispatcher.engine(read_timeout=1), ["vm"])
        peer.release.set()
    assert result.wire["exit"] == -1 and result.wire["error"] == "read timeout after 1s"


def test_connection_refused(dispatcher):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dispatcher.register("vm", port)
    [result] = dispatcher.engine().ping(["vm"], caller=Caller())
    assert result.wire["error"] == (
        f"host '127.0.0.1' did not respond on port {port} - connection "
        "refused (agent not running, or wrong port?)"
    )


def test_unresolvable_name(dispatcher):
    dispatcher.register("vm", 7443, address="no-such-host.invalid")
    [result] = dispatcher.engine().ping(["vm"], caller=Caller())
    assert result.wire["error"] == (
        "host 'no-such-host.invalid' did not resolve - check the name or use an IP address"
    )


def test_agent_from_another_ca_fails_the_handshake(dispatcher, tmp_path):
    stranger = testpki.SessionCA("someone else's CA")
    with Peer012(stranger, tmp_path / "p") as peer:
        dispatcher.register("vm", peer.port)
        [result] = run(dispatcher.engine(), ["vm"])
    assert (
        result.wire["error"]
        == "TLS handshake with '127.0.0.1' failed - certificate or trust mismatch"
    )
    assert peer.received == []


def test_agent_that_refuses_our_certificate(dispatcher, session_ca, tmp_path):
    # The agent is ours (same CA) but trusts client certs of another CA only:
    # under TLS 1.3 the refusal arrives after our handshake has completed.
    stranger = testpki.SessionCA("someone else's CA")
    with Peer012(session_ca, tmp_path / "p", client_ca=stranger) as peer:
        dispatcher.register("vm", peer.port)
        [result] = dispatcher.engine().ping(["vm"], caller=Caller())
    assert (
        result.wire["error"]
        == "TLS handshake with '127.0.0.1' failed - certificate or trust mismatch"
    )
    assert peer.received == []


CLOSED_BEFORE_TLS = (
    "host '127.0.0.1': closed by the agent before the TLS handshake "
    "(allowed_ips, rate limit or overload: see the agent's log)"
)


@pytest.mark.parametrize("reads_hello", [False, True], ids=["at-once", "after-the-hello"])
def test_an_agent_that_closes_before_the_handshake_is_not_called_a_cert_problem(
    dispatcher, reads_hello
):
    """What our agent does for allowed_ips, a rate block or overload: accept
    and close with no TLS word (a FIN, or a reset when the hello is unread)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def refuse() -> None:
        conn, _ = listener.accept()
        if reads_hello:
            conn.recv(1)  # the rest stays unread: the close is a reset
        conn.close()

    server = threading.Thread(target=refuse, daemon=True)
    server.start()
    try:
        dispatcher.register("vm", port)
        [result] = dispatcher.engine().ping(["vm"], caller=Caller())
    finally:
        server.join(10)
        listener.close()
    assert result.wire["error"] == CLOSED_BEFORE_TLS


def test_unknown_agents_are_named_and_nothing_is_contacted(dispatcher, peer):
    dispatcher.register("vm", peer.port)
    with pytest.raises(UnknownAgents) as unknown:
        dispatcher.engine().ping(["vm", "nosuch", "other:7443"], caller=Caller())
    assert unknown.value.names == ["nosuch", "other:7443"]
    assert peer.received == []


@pytest.mark.parametrize(
    "hosts, script, args, message",
    [
        ([], "s", [], "at least one host"),
        (["vm"] * 501, "s", [], "too many hosts"),
        (["vm", "vm"], "s", [], "given more than once"),
        (["vm"], "../etc", [], "invalid script name"),
        (["vm"], "s", ["a\x00b"], "NUL"),
        (["vm"], "s", ["\udcff"], "not valid UTF-8"),
    ],
)
def test_malformed_requests(dispatcher, peer, hosts, script, args, message):
    dispatcher.register("vm", peer.port)
    with pytest.raises(BadRequest, match=message):
        run(dispatcher.engine(), hosts, script=script, args=args)
    assert peer.received == []


def test_denied_by_the_api_default_before_any_connection(dispatcher, peer):
    dispatcher.register("vm", peer.port)
    with pytest.raises(PolicyDenied) as denied:
        dispatcher.engine().run(["vm"], "echo-args", [], caller=Caller.api("10.1.2.3"))
    assert (denied.value.reason, denied.value.code) == ("no auth hook configured", 1)
    assert peer.received == []
    assert (
        "ACTION=auth AUTHACTION=run IP=10.1.2.3 REASON=no-hook-deny RESULT=deny"
        in dispatcher.log_text()
    )


def test_locks_are_held_for_the_whole_run(dispatcher, peer):
    peer.behaviour = hold_then(default_behaviour, peer)
    dispatcher.register("vm", peer.port)
    engine = dispatcher.engine()
    outcome: list = []
    first = threading.Thread(target=lambda: outcome.append(run(engine, ["vm"], script="sleep")))
    first.start()
    assert peer.arrived.wait(10)
    [held] = engine.locks.held()
    assert (held["host"], held["script"], held["state"]) == ("vm", "sleep", "held")
    assert held["pid"] == os.getpid() and held["caller"] == "cli"
    with pytest.raises(Locked) as locked:
        run(dispatcher.engine(), [f"vm:{peer.port}"], script="sleep")
    assert locked.value.conflicts == ["vm:sleep"]
    peer.release.set()
    first.join(10)
    assert outcome and outcome[0][0].exit_code == 0
    assert engine.locks.held() == []
    text = dispatcher.log_text()
    assert "ACTION=lock-acquire HOST=vm SCRIPT=sleep" in text
    assert "ACTION=lock-conflict CONFLICTS=vm:sleep" in text
    assert "ACTION=lock-release HOSTS=vm SCRIPT=sleep" in text
