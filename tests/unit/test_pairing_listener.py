"""The dispatcher's side of one pairing connection, on a socketpair: the
listener's connection handling (read, validate, queue, acknowledge, wait for
the decision, deliver or withdraw) without TLS, ports or processes. The
queue is real files in a temporary directory; the CSRs are real."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from ctrlexec.core import pairing as wire
from ctrlexec.core.http import ResponseReader
from ctrlexec.dispatcher import pairing_decide
from ctrlexec.dispatcher.pairing_server import ListenerSettings, PairingListener
from ctrlexec.pki import csr, keys

WAIT = 10.0  # generous bound on each awaited event; never slept


@pytest.fixture(scope="module")
def csr_pem() -> str:
    return csr.build(keys.generate("ec"), "web-01")


class Harness:
    """A listener whose connections are socketpairs; the test is the agent."""

    def __init__(self, tmp_path, **settings):
        self.queue = pairing_decide.open_queue(tmp_path / "pairing", tmp_path / "agents")
        self.queued: list[dict] = []
        self.queued_event = threading.Event()
        self.listener = PairingListener(
            ListenerSettings(cert="", key="", rate=None, poll_interval=0.01, **settings),
            self.queue,
            on_queued=self._on_queued,
            resolve=lambda ip: ("", False),
            wrap=lambda conn: conn,  # the TLS layer is pki/tls.py's, tested elsewhere
        )

    def _on_queued(self, record: dict) -> None:
        self.queued.append(record)
        self.queued_event.set()

    def connect(self) -> Agent:
        ours, theirs = socket.socketpair()
        self.listener.admit(theirs, "192.0.2.7")
        return Agent(ours)


class Agent:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.buffer = b""

    def send(self, body: bytes) -> None:
        self.sock.sendall(
            b"POST /pair HTTP/1.0\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    def response(self) -> dict | None:
        """The next response's JSON body, or None when the listener hung up."""
        reader = ResponseReader(max_body=1 << 20)
        data, self.buffer = self.buffer, b""
        while True:
            response = reader.feed(data)
            if response is not None:
                self.buffer = reader.remainder
                assert response.status == 200
                return json.loads(response.body)
            data = self.sock.recv(65536)
            if not data:
                return None

    def close(self) -> None:
        self.sock.close()


def body(hostname: str, csr_pem: str, nonce: str = "ab12") -> bytes:
    return wire.request_body(hostname, csr_pem, nonce, "ip", 7443, "198.51.100.9")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", wire.REASON_INVALID),
        (b"[]", wire.REASON_INVALID),
        (b'{"hostname":"web-01"}', wire.REASON_INVALID),
        (b'{"hostname":"bad name","csr":"x"}', wire.REASON_HOSTNAME),
        (b'{"hostname":"web-01","csr":"not a CSR"}', wire.REASON_INVALID),
    ],
)
def test_a_refused_request_gets_one_error_and_queues_nothing(tmp_path, payload, reason):
    harness = Harness(tmp_path)
    agent = harness.connect()
    agent.send(payload)
    assert agent.response() == {"status": "error", "reason": reason}
    assert agent.response() is None
    assert harness.queue.pending() == []


def test_a_csr_for_another_name_is_refused_before_the_queue(tmp_path, csr_pem):
    harness = Harness(tmp_path)
    agent = harness.connect()
    agent.send(body("web-02", csr_pem))
    assert agent.response() == {"status": "error", "reason": wire.REASON_INVALID}
    assert harness.queue.pending() == []


def test_queued_then_denied(tmp_path, csr_pem):
    harness = Harness(tmp_path)
    agent = harness.connect()
    agent.send(body("web-01", csr_pem))
    ack = agent.response()
    assert ack["status"] == "pending"
    assert harness.queued_event.wait(WAIT)
    (record,) = harness.queued
    assert record["id"] == ack["reqid"]
    assert record["source_ip"] == "192.0.2.7" and record["ip"] == "198.51.100.9"
    assert record["code"] == wire.parse_request(body("web-01", csr_pem)).code
    assert [r["id"] for r in harness.queue.pending()] == [ack["reqid"]]

    pairing_decide.deny(harness.queue, ack["reqid"])
    assert agent.response() == {"status": "denied", "reason": wire.REASON_REJECTED}
    assert agent.response() is None
    assert not harness.queue.path(ack["reqid"], ".denied").exists()  # delivered


def test_an_agent_that_hangs_up_withdraws_its_request(tmp_path, csr_pem):
    harness = Harness(tmp_path)
    agent = harness.connect()
    agent.send(body("web-01", csr_pem))
    reqid = agent.response()["reqid"]
    agent.close()
    harness.listener.close(grace=WAIT)
    assert harness.queue.pending() == []
    assert not harness.queue.path(reqid, ".json").exists()


def test_closing_pairing_mode_tells_waiting_agents_approval_timeout(tmp_path, csr_pem):
    harness = Harness(tmp_path)
    agent = harness.connect()
    agent.send(body("web-01", csr_pem))
    assert agent.response()["status"] == "pending"
    harness.listener.close(grace=WAIT)
    assert agent.response() == {"status": "denied", "reason": wire.REASON_TIMEOUT}
    assert harness.queue.pending() == []


def test_the_dispatchers_own_wait_ends_in_approval_timeout(tmp_path, csr_pem):
    harness = Harness(tmp_path, approval_wait=0)
    agent = harness.connect()
    agent.send(body("web-01", csr_pem))
    assert agent.response()["status"] == "pending"
    assert agent.response() == {"status": "denied", "reason": wire.REASON_TIMEOUT}


def test_a_full_queue_is_refused(tmp_path, csr_pem):
    harness = Harness(tmp_path, max_queue=1)
    first = harness.connect()
    first.send(body("web-01", csr_pem))
    assert first.response()["status"] == "pending"
    second = harness.connect()
    second.send(body("web-01", csr_pem))
    assert second.response() == {"status": "error", "reason": wire.REASON_QUEUE_FULL}
    second.close()
    harness.listener.close(grace=WAIT)
    assert first.response() == {"status": "denied", "reason": wire.REASON_TIMEOUT}


def test_a_bare_probe_is_closed_quietly(tmp_path):
    harness = Harness(tmp_path)
    agent = harness.connect()
    agent.sock.shutdown(socket.SHUT_WR)
    assert agent.response() is None
    assert harness.queue.pending() == []


def test_an_oversized_body_is_refused_by_its_length(tmp_path):
    harness = Harness(tmp_path)
    agent = harness.connect()
    agent.sock.sendall(
        b"POST /pair HTTP/1.0\r\nContent-Length: "
        + str(wire.MAX_PAIR_BODY + 1).encode()
        + b"\r\n\r\n"
    )
    assert agent.response() == {"status": "error", "reason": wire.REASON_TOO_LARGE}
