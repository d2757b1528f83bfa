"""The agent's pairing workflow (agent/pairing.py) against a dispatcher
played by the test on the other end of a socketpair: the order of the
callbacks, what is stored after an approval and what is not after every
other answer. Real keys, a real CA in a temporary directory, real files;
no TLS, ports or processes."""

from __future__ import annotations

import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from ctrlexec.agent import pairing, pairing_client
from ctrlexec.config.load import load_agent
from ctrlexec.core import pairing as wire
from ctrlexec.core.http import RequestReader, encode_json, response_bytes
from ctrlexec.errors import CtrlExecError, PairingRejected
from ctrlexec.pki import ca
from tests.support.testpki import layout_for

WAIT = 10.0  # bound on each awaited event; never slept
REQID = "0123456789abcdef"


@pytest.fixture(scope="module")
def ca_paths(tmp_path_factory) -> ca.CAPaths:
    paths = ca.CAPaths(tmp_path_factory.mktemp("ca"))
    ca.create_ca(paths, key_type="ec")
    return paths


class Dispatcher:
    """Reads the request, acknowledges it, then answers as `decide` says."""

    def __init__(self, sock, ca_paths: ca.CAPaths, decide, ack: dict | None = None):
        self.sock = sock
        self.ca_paths = ca_paths
        self.decide = decide
        self.ack = ack or wire.pending_body(REQID)
        self.request: wire.PairRequest | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(WAIT)
        reader = RequestReader(max_body=wire.MAX_PAIR_BODY)
        request = None
        while request is None:
            request = reader.feed(self.sock.recv(65536))
        self.request = wire.parse_request(request.body)
        self.sock.sendall(response_bytes(200, encode_json(self.ack)))
        answer = self.decide(self)
        if answer is not None:
            self.sock.sendall(response_bytes(200, encode_json(answer)))
        self.sock.close()

    def approval(self, nonce: str | None = None) -> dict:
        issued = ca.sign_csr(self.ca_paths, self.request.csr, expected_cn=self.request.hostname)
        return wire.approved_body(
            issued.cert_pem,
            ca.read_ca_pem(self.ca_paths),
            self.request.nonce if nonce is None else nonce,
            "1a2b",
            "dispatcher-1",
        )


def run(tmp_path: Path, ca_paths, decide, ack=None, **request_fields):
    """Run the workflow; returns (outcome, events, dispatcher, config)."""
    config = load_agent(layout_for(tmp_path))
    agent_end, dispatcher_end = socket.socketpair()
    dispatcher = Dispatcher(dispatcher_end, ca_paths, decide, ack)
    events: list[tuple] = []
    fields = {"dispatcher": "dispatcher.example", "port": 7444, "hostname": "web-01"}
    fields.update(key_type="ec", **request_fields)

    def connect(host: str, port: int) -> pairing_client.PairingConnection:
        events.append(("connect", host, port))
        return pairing_client.PairingConnection(agent_end, local_ip="198.51.100.9")

    outcome = pairing.request_pairing(
        config,
        pairing.Request(**fields),
        on_code=lambda code: events.append(("code", code)),
        on_pending=lambda reqid: events.append(("pending", reqid)),
        probe=lambda host, port: events.append(("probe", host, port)),
        connect=connect,
    )
    dispatcher.thread.join(WAIT)
    return outcome, events, dispatcher, config


def identity_files(config) -> list[Path]:
    return [Path(p) for p in (config.cert, config.key, config.ca) if Path(p).exists()]


def test_approved_stores_the_identity_and_trusts_the_dispatcher(tmp_path, ca_paths):
    outcome, events, dispatcher, config = run(tmp_path, ca_paths, Dispatcher.approval)
    assert outcome.status == pairing.APPROVED and outcome.exit_code == 0
    assert events == [
        ("probe", "dispatcher.example", 7444),
        ("code", outcome.code),
        ("connect", "dispatcher.example", 7444),
        ("pending", REQID),
    ]
    request = dispatcher.request
    assert (request.hostname, request.lookup_by, request.port, request.ip) == (
        "web-01",
        None,
        7443,
        "198.51.100.9",
    )
    assert outcome.code == request.code  # the code both sides show
    modes = {Path(p).name: stat.S_IMODE(Path(p).stat().st_mode) for p in identity_files(config)}
    assert modes == {"agent.crt": 0o640, "agent.key": 0o640, "ca.crt": 0o644}
    assert outcome.stored.trusted and outcome.stored.dispatcher_id == "dispatcher-1"
    assert outcome.stored.subject == "web-01"
    assert "1a2b dispatcher-1" in Path(config.trusted_dispatchers_path).read_text()


@pytest.mark.parametrize(
    ("answer", "status", "reason"),
    [
        (wire.denied_body(wire.REASON_REJECTED), pairing.DENIED, wire.REASON_REJECTED),
        (wire.denied_body(wire.REASON_TIMEOUT), pairing.TIMEOUT, wire.REASON_TIMEOUT),
        (None, pairing.DENIED, "the dispatcher closed the connection before sending the result"),
        ({"status": "approved"}, pairing.DENIED, "nonce mismatch in pairing result"),
    ],
)
def test_anything_but_an_approval_stores_nothing(tmp_path, ca_paths, answer, status, reason):
    outcome, _, _, config = run(tmp_path, ca_paths, lambda d: answer)
    assert (outcome.status, outcome.reason) == (status, reason)
    assert outcome.exit_code == (2 if status == pairing.TIMEOUT else 3)
    assert identity_files(config) == []


def test_an_approval_for_another_nonce_stores_nothing(tmp_path, ca_paths):
    outcome, _, _, config = run(tmp_path, ca_paths, lambda d: d.approval(nonce="ffff"))
    assert (outcome.status, outcome.reason) == (pairing.DENIED, "nonce mismatch in pairing result")
    assert identity_files(config) == []


def test_a_ca_that_is_not_the_pinned_one_stores_nothing(tmp_path, ca_paths):
    pin = ":".join(["AB"] * 32)
    outcome, _, _, config = run(tmp_path, ca_paths, Dispatcher.approval, pin=pin)
    assert outcome.status == pairing.DENIED
    assert "does not match the pinned" in outcome.reason
    assert identity_files(config) == []


def test_the_agents_own_deadline(tmp_path, ca_paths):
    answered = threading.Event()
    config = load_agent(layout_for(tmp_path))
    agent_end, dispatcher_end = socket.socketpair()
    dispatcher = Dispatcher(dispatcher_end, ca_paths, lambda d: answered.wait(WAIT) and None)
    # The wait is measured from a clock that says the window has already passed.
    outcome = pairing.request_pairing(
        config,
        pairing.Request("d", 7444, "web-01", key_type="ec", timeout=5),
        probe=lambda host, port: None,
        connect=lambda host, port: pairing_client.PairingConnection(agent_end),
        clock=lambda: time.monotonic() - 3600,
    )
    answered.set()
    dispatcher.thread.join(WAIT)
    assert (outcome.status, outcome.exit_code) == (pairing.TIMEOUT, 2)
    assert identity_files(config) == []


def test_a_refused_request_raises_with_the_dispatchers_reason(tmp_path, ca_paths):
    with pytest.raises(PairingRejected, match=wire.REASON_QUEUE_FULL):
        run(tmp_path, ca_paths, lambda d: None, ack=wire.error_body(wire.REASON_QUEUE_FULL))


def test_nothing_is_sent_for_a_name_that_cannot_be_an_agent(tmp_path, ca_paths):
    config = load_agent(layout_for(tmp_path))
    with pytest.raises(CtrlExecError, match="cannot be an agent name"):
        pairing.request_pairing(
            config,
            pairing.Request("d", 7444, "bad name", key_type="ec"),
            probe=lambda host, port: pytest.fail("probed"),
            connect=lambda host, port: pytest.fail("connected"),
        )
