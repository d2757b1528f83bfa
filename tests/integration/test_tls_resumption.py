"""TLS session resumption between the dispatcher and our agent (`agent serve`
from the pyz): the agent issues tickets, a second contact resumes, and the
agent's trusted-dispatcher check still runs on a resumed session."""

from __future__ import annotations

import ssl

import pytest

from ctrlexec.agent import trust
from ctrlexec.core.caller import Caller
from ctrlexec.core.http import ResponseReader, request_bytes
from ctrlexec.dispatcher import agent_client
from ctrlexec.dispatcher.engine import Engine, EngineSettings
from ctrlexec.dispatcher.locks import HostScriptLocks
from ctrlexec.dispatcher.registry import Registry
from ctrlexec.dispatcher.tls_sessions import SessionCache
from tests.support import testpki
from tests.support.fleet import running_fleet


@pytest.fixture
def pair(tmp_path, session_ca, pyz_for):
    with running_fleet(session_ca, pyz_for, tmp_path, ("web-01",)) as fleet:
        layout = fleet.layout
        engine = Engine(
            EngineSettings(
                cert=str(layout.dispatcher_cert),
                key=str(layout.dispatcher_key),
                ca=str(layout.ca_cert),
                read_timeout=20,
            ),
            Registry(layout.registry_dir),
            HostScriptLocks(layout.locks_dir),
        )
        yield engine, fleet.agents["web-01"], fleet.issued


def _ping(engine: Engine, cache: SessionCache) -> tuple[bool, int]:
    """One /ping offering the remembered session: (resumed?, HTTP status)."""
    target = engine.resolve(["web-01"])[0]
    slot = cache.slot(target.name)
    sock = agent_client.open_tls(
        cache.context, target.address, target.port, 20,
        check_peer=engine._peer_check(target), resume=slot,
    )  # fmt: skip
    assert isinstance(sock, ssl.SSLSocket), sock
    try:
        sock.sendall(request_bytes("POST", "/ping", b'{"reqid":"r"}'))
        reader = ResponseReader()
        response = None
        while response is None:
            data = sock.recv(65536)
            response = reader.feed(data) if data else reader.finish()
        slot.keep(sock)
        return sock.session_reused, response.status
    finally:
        sock.close()


def test_a_second_contact_resumes_and_the_agent_still_checks_the_dispatcher(pair):
    engine, (_runner, agent), dispatcher = pair
    cache = SessionCache(engine.tls_context())
    assert _ping(engine, cache) == (False, 200)
    assert _ping(engine, cache) == (True, 200)
    assert _ping(engine, cache) == (True, 200)
    # The agent stops trusting this dispatcher: a resumed session is refused
    # like a full handshake (the identity check reads the session's cert).
    layout = testpki.layout_for(agent.site.root)
    assert trust.remove_dispatcher(
        layout.trusted_dispatchers, dispatcher.serial_key, "test-dispatcher"
    )
    assert _ping(engine, cache) == (True, 403)


def test_the_engine_resumes_on_a_second_contact(pair):
    engine, _, _ = pair
    context = engine.tls_context()
    first = engine.ping(["web-01"], caller=Caller())
    second = engine.ping(["web-01"], caller=Caller())
    assert [r.wire["status"] for r in first + second] == ["ok", "ok"]
    # The engine remembered the agent's session from the first contact.
    target = engine.resolve(["web-01"])[0]
    sessions = engine._sessions
    assert sessions is not None and sessions.context is context and len(sessions) == 1
    assert sessions.get((target.address, target.port, target.expect)) is not None
