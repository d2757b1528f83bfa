"""Pairing across implementations, from the wire description of 0.12
(protocol.md §4, Appendix C.2):

- a 0.12 agent (its exact request: field order, `port` as a string, an RSA
  4096 CSR from openssl, the TCP probe first) pairs with our dispatcher;
- our agent pairs with a 0.12-style dispatcher: openssl CA, a dispatcher cert
  signed with `openssl x509 -req -CAserial` (serial 02, as 0.12's counter
  gives), agent certs signed the same way with no extensions, 0.12's CSR
  rules applied to our agent's CSR.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading

import pytest

from ctrlexec.agent import trust
from ctrlexec.core.x509 import facts_from_pem
from tests.support import openssl
from tests.support.pairing import (
    RawPairing,
    agent_env,
    pair_body,
    probe,
    setup_dispatcher,
    start_listener,
)


def test_a_0_12_agent_pairs_with_our_dispatcher(ctl, tmp_path):
    setup_dispatcher(ctl, 'dispatcher_id = "py-dispatcher"\n')
    listener = start_listener(ctl)
    try:
        key = openssl.rsa_key(tmp_path / "agent.key", 4096)
        csr = openssl.csr(key, "vm")
        (tmp_path / "agent.csr").write_text(csr)
        nonce = "9fb2e5da0af54bd6943d62b666c61e0d"
        probe(listener.port)
        client = RawPairing(listener.port)
        client.send(pair_body("vm", csr, nonce, lookup_by="ip", ip="127.0.0.1", port="17443"))
        ack = client.response()
        assert set(ack) == {"status", "reqid"} and ack["status"] == "pending"
        assert re.fullmatch(r"[0-9a-f]{16}", ack["reqid"])
        [queued] = json.loads(ctl.run("ced", "list-requests", "--json", check=True).stdout)
        assert queued["code"] == openssl.pairing_codes([tmp_path / "agent.csr"])[0]
        ctl.run("ced", "approve", ack["reqid"], check=True)
        result = client.response()
        client.close()
    finally:
        listener.stop()

    assert len(client.heads) == 2
    for head in client.heads:
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.0 200 OK"
        assert lines[1] == b"Content-Type: application/json"
        assert re.fullmatch(rb"Content-Length: \d+", lines[2]) and len(lines) == 3
    assert set(result) == {"status", "cert", "ca", "nonce", "dispatcher_serial", "dispatcher_id"}
    assert (result["status"], result["nonce"], result["dispatcher_id"]) == (
        "approved",
        nonce,
        "py-dispatcher",
    )
    (tmp_path / "agent.crt").write_text(result["cert"])
    (tmp_path / "ca.crt").write_text(result["ca"])
    assert openssl.verify(tmp_path / "ca.crt", tmp_path / "agent.crt")
    assert openssl.run(
        "x509", "-in", str(tmp_path / "agent.crt"), "-noout", "-pubkey"
    ) == openssl.run("req", "-in", str(tmp_path / "agent.csr"), "-noout", "-pubkey")
    dispatcher_crt = ctl.root / "etc/ctrl-exec/dispatcher.crt"
    [expected_serial] = openssl.canonical_serial_keys([openssl.serial_text(dispatcher_crt)])
    assert result["dispatcher_serial"] == expected_serial
    record = json.loads((ctl.root / "var/lib/ctrl-exec/agents/vm.json").read_text())
    assert (record["port"], record["lookup_by"], record["ip"]) == (17443, "ip", "127.0.0.1")


# --- our agent against a 0.12-style dispatcher ------------------------------


class OldDispatcher:
    """Serves one pairing the way 0.12 does, with openssl doing the CA work."""

    def __init__(self, directory, first_serial: str, nonce: str | None = None):
        self.dir = directory
        self.nonce = nonce
        openssl.run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-subj",
            "/CN=ctrl-exec CA",
            "-days",
            "3650",
            "-out",
            "ca.crt",
            cwd=directory,
        )
        (directory / "ca.serial").write_text(first_serial + "\n")
        openssl.run(
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "d.key",
            "-subj",
            "/CN=ctrl-exec-dispatcher",
            "-out",
            "d.csr",
            cwd=directory,
        )
        self._sign("d.csr", "d.crt")
        # K1 = serial_to_hex(openssl x509 -serial), applied once (here by bc)
        [self.serial_key] = openssl.canonical_serial_keys(
            [openssl.serial_text(directory / "d.crt")]
        )
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(directory / "d.crt", directory / "d.key")
        self.request: dict = {}
        self.csr_text = ""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _sign(self, csr: str, out: str) -> None:
        openssl.run(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAserial",
            "ca.serial",
            "-days",
            "825",
            "-out",
            out,
            cwd=self.dir,
        )

    def _serve(self) -> None:
        try:
            probe_conn, _ = self.server.accept()  # the pre-flight probe
            assert probe_conn.recv(1) == b""
            probe_conn.close()
            raw, _ = self.server.accept()
            with self.context.wrap_socket(raw, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += tls.recv(4096)
                head, body = data.split(b"\r\n\r\n", 1)
                assert head.startswith(b"POST /pair HTTP/1.0\r\n")
                length = int(re.search(rb"Content-Length:\s*(\d+)", head, re.I).group(1))
                while len(body) < length:
                    body += tls.recv(4096)
                self.request = json.loads(body)
                self._reply(tls, {"reqid": "41d6061dbd366e74", "status": "pending"})
                (self.dir / "agent.csr").write_text(self.request["csr"])
                self.csr_text = openssl.run(
                    "req", "-in", "agent.csr", "-verify", "-noout", "-text", cwd=self.dir
                )
                self._sign("agent.csr", "agent.crt")
                self._reply(
                    tls,
                    {
                        "dispatcher_serial": self.serial_key,
                        "ca": (self.dir / "ca.crt").read_text(),
                        "dispatcher_id": "perl-ref-dispatcher",
                        "nonce": self.nonce or self.request["nonce"],
                        "status": "approved",
                        "cert": (self.dir / "agent.crt").read_text(),
                    },
                )
        except BaseException as exc:  # reported by the test
            self.error = exc

    @staticmethod
    def _reply(tls, body: dict) -> None:
        payload = json.dumps(body).encode()
        tls.sendall(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )


@pytest.mark.parametrize("counter, key", [("01", "2"), ("1F", "14")])
def test_our_agent_pairs_with_a_0_12_dispatcher(ctl, tmp_path, counter, key):
    """Serial 0x02 is stored as `2`; serial 0x20 as `14` (0.12 agents would
    re-apply the decimal step and store `e`, then refuse the dispatcher)."""
    old = OldDispatcher(tmp_path, counter)
    agent = agent_env(ctl, tmp_path / "agent-host")
    result = agent.run(
        "agent",
        "request-pairing",
        "--dispatcher",
        "127.0.0.1",
        "--port",
        str(old.port),
        "--hostname",
        "vm",
        "--lookup-by",
        "ip",
    )
    old.thread.join(10)
    assert old.error is None, old.error
    assert result.returncode == 0, result.stderr
    assert old.serial_key == key

    # what 0.12 requires of the CSR: `openssl req -verify` passed (the server
    # would have failed otherwise), >= 2048 bits, not MD5/SHA-1
    bits = int(re.search(r"Public-Key: \((\d+) bit\)", old.csr_text).group(1))
    assert bits >= 2048
    assert not re.search(
        r"(?i)(md2|md4|md5|sha1|sha-1)(?![0-9])",
        re.search(r"Signature Algorithm: (\S+)", old.csr_text).group(1),
    )
    assert "Subject: CN = vm" in old.csr_text
    request = old.request
    assert (request["hostname"], request["lookup_by"], request["port"], request["ip"]) == (
        "vm",
        "ip",
        "7443",
        "127.0.0.1",
    )
    assert re.fullmatch(r"[0-9a-f]{32}", request["nonce"])

    state = agent.root / "var/lib/ctrl-exec-agent/ctrl-exec-dispatchers"
    assert state.read_text().splitlines()[2:] == [f"{key} perl-ref-dispatcher"]
    dispatcher_serial = facts_from_pem((tmp_path / "d.crt").read_text()).serial
    # the agent will recognise the dispatcher's certificate by that key
    assert trust.load_map(state) == {dispatcher_serial.trust_key(): "perl-ref-dispatcher"}
    assert (agent.root / "etc/ctrl-exec-agent/ca.crt").read_text() == (
        tmp_path / "ca.crt"
    ).read_text()
    assert openssl.verify(
        tmp_path / "ca.crt", agent.root / "etc/ctrl-exec-agent/agent.crt", strict=False
    )


def test_our_agent_refuses_an_approval_without_its_nonce(ctl, tmp_path):
    old = OldDispatcher(tmp_path, "01", nonce="0" * 32)
    agent = agent_env(ctl, tmp_path / "agent-host")
    result = agent.run(
        "agent",
        "request-pairing",
        "--dispatcher",
        "127.0.0.1",
        "--port",
        str(old.port),
        "--hostname",
        "vm",
    )
    old.thread.join(10)
    assert result.returncode == 3
    assert "Pairing failed: nonce mismatch in pairing result" in result.stderr
    assert not (agent.root / "etc/ctrl-exec-agent/agent.crt").exists()
    assert not (agent.root / "var/lib/ctrl-exec-agent/ctrl-exec-dispatchers").exists()
    assert 'ACTION=pair-denied REASON="nonce mismatch in pairing result"' in agent.log_text()
