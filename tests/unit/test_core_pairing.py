"""The pairing messages and their validation (core/pairing.py), as tables."""

from __future__ import annotations

import json

import pytest

from ctrlexec.core import pairing as wire
from ctrlexec.errors import PairingRejected, ProtocolError
from tests.support.tables import each_case

CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
NONCE = "9fb2e5da0af54bd6943d62b666c61e0d"


def body(**fields) -> bytes:
    base = {"hostname": "vm", "csr": CSR, "nonce": NONCE}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_observed_request_parses():
    # Appendix C.2: port arrives as a string
    request = wire.parse_request(body(lookup_by="ip", ip="127.0.0.1", port="17443"))
    assert (request.hostname, request.lookup_by, request.port, request.ip, request.nonce) == (
        "vm",
        "ip",
        17443,
        "127.0.0.1",
        NONCE,
    )


REFUSALS_IN_0_12_ORDER_CASES = [
    (b"not json", wire.REASON_INVALID, "invalid-request"),
    (b"\xff\xfe", wire.REASON_INVALID, "invalid-request"),
    (b"[]", wire.REASON_INVALID, "invalid-request"),
    (b'"text"', wire.REASON_INVALID, "invalid-request"),
    (b"", wire.REASON_INVALID, "invalid-request"),
    (b"[" * 100000, wire.REASON_INVALID, "invalid-request"),
    (body(csr=...), wire.REASON_INVALID, "invalid-request"),
    (body(hostname=...), wire.REASON_INVALID, "invalid-request"),
    (body(csr=""), wire.REASON_INVALID, "invalid-request"),
    (body(csr=5), wire.REASON_INVALID, "invalid-request"),
    (body(hostname=["vm"]), wire.REASON_INVALID, "invalid-request"),
    (body(hostname="../etc/passwd"), wire.REASON_HOSTNAME, "invalid-hostname"),
    (body(hostname="a/b"), wire.REASON_HOSTNAME, "invalid-hostname"),
    (body(hostname=".hidden"), wire.REASON_HOSTNAME, "invalid-hostname"),
    (body(hostname="-x"), wire.REASON_HOSTNAME, "invalid-hostname"),
    (body(hostname="a b"), wire.REASON_HOSTNAME, "invalid-hostname"),
    (body(hostname="web\x00"), wire.REASON_HOSTNAME, "invalid-hostname"),
    (body(hostname="wéb"), wire.REASON_HOSTNAME, "invalid-hostname"),
    (body(hostname="a" * 254), wire.REASON_HOSTNAME, "invalid-hostname"),
    (body(nonce=12), wire.REASON_INVALID, "invalid-request"),
    (body(nonce="has space"), wire.REASON_INVALID, "invalid-request"),
    (body(nonce="x" * 129), wire.REASON_INVALID, "invalid-request"),
    (body(csr="not a pem"), wire.REASON_INVALID, "invalid-csr"),
    (body(csr=CSR + "A" * 10_240), wire.REASON_INVALID, "invalid-csr"),
]


def test_refusals_in_0_12_order():
    def check(raw, reason, log_reason):
        with pytest.raises(wire.PairRequestError) as info:
            wire.parse_request(raw)
        assert (info.value.reason, info.value.log_reason) == (reason, log_reason)

    each_case(REFUSALS_IN_0_12_ORDER_CASES, check)


def test_missing_nonce_is_empty_as_in_0_12():
    assert wire.parse_request(body(nonce=...)).nonce == ""


VALID_PORT_CASES = [
    ("17443", 17443),
    (17443, 17443),
    ("1", 1),
    (65535, 65535),
    ("65536", None),
    (0, None),
    ("0", None),
    ("-1", None),
    (True, None),
    ("７４４３", None),
    ("12a", None),
    (None, None),
    (7443.0, None),
    ("000080", None),
]


def test_valid_port():
    def check(value, port):
        assert wire.valid_port(value) == port

    each_case(VALID_PORT_CASES, check)


VALID_IP_CASES = [
    ("127.0.0.1", "127.0.0.1"),
    ("::1", "::1"),
    ("2001:DB8::1", "2001:db8::1"),
    ("999.1.1.1", None),
    ("unknown", None),
    ("", None),
    (None, None),
    (7, None),
    ("10.0.0.1/8", None),
]


def test_valid_ip():
    def check(value, ip):
        assert wire.valid_ip(value) == ip

    each_case(VALID_IP_CASES, check)


def test_invalid_optional_fields_are_dropped():
    request = wire.parse_request(body(lookup_by="dns", port="http", ip="host.example"))
    assert (request.lookup_by, request.port, request.ip) == (None, None, None)


def test_effective_values_operator_then_agent_then_default():
    assert wire.effective_lookup_by("ip", "hostname") == "ip"
    assert wire.effective_lookup_by(None, "ip") == "ip"
    assert wire.effective_lookup_by(None, None) == "hostname"
    assert wire.effective_port(17000, "17443") == 17000
    assert wire.effective_port(None, "17443") == 17443
    assert wire.effective_port(None, None) == 7443
    assert wire.effective_ip("10.0.0.9", "127.0.0.1") == "10.0.0.9"
    assert wire.effective_ip(None, "127.0.0.1") == "127.0.0.1"
    assert wire.effective_ip(None, None) == ""


def test_queue_record_fields():
    request = wire.parse_request(body(port="17443"))
    record = wire.queue_record(
        request, "41d6061dbd366e74", "10.1.1.1", "2026-01-01T00:00:00Z", "", False
    )
    assert set(record) == {
        "id",
        "hostname",
        "ip",
        "source_ip",
        "csr",
        "nonce",
        "lookup_by",
        "port",
        "received",
        "code",
        "reverse_dns",
        "reverse_confirmed",
    }
    assert record["ip"] == "10.1.1.1" and record["reverse_confirmed"] == 0
    assert record["code"] == request.code


def test_request_body_sends_port_as_string():
    data = json.loads(wire.request_body("vm", CSR, NONCE, "ip", 17443, "127.0.0.1"))
    assert data == {
        "hostname": "vm",
        "csr": CSR,
        "nonce": NONCE,
        "lookup_by": "ip",
        "port": "17443",
        "ip": "127.0.0.1",
    }
    assert wire.parse_request(wire.request_body("vm", CSR, NONCE)).port is None


def test_ack():
    assert wire.parse_ack(b'{"reqid":"41d6061dbd366e74","status":"pending"}') == "41d6061dbd366e74"
    with pytest.raises(PairingRejected, match="pairing queue full"):
        wire.parse_ack(b'{"status":"error","reason":"pairing queue full"}')
    for bad in (
        b'{"status":"pending"}',
        b'{"status":"pending","reqid":"../x"}',
        b'{"status":"pending","reqid":"ABCDEF01"}',
        b'{"status":"pending","reqid":"' + b"a" * 65 + b'"}',
        b"nope",
        b"[]",
    ):
        with pytest.raises(ProtocolError):
            wire.parse_ack(bad)


def approved(**fields) -> bytes:
    data = wire.approved_body("CERT", "CA", NONCE, "2", "perl-ref-dispatcher")
    data.update(fields)
    return json.dumps(data).encode()


def test_result_approved():
    approval = wire.parse_result(approved(), NONCE)
    assert (approval.cert, approval.ca, approval.dispatcher_serial, approval.dispatcher_id) == (
        "CERT",
        "CA",
        "2",
        "perl-ref-dispatcher",
    )
    # 0.12 defaults missing serial/id to ""
    approval = wire.parse_result(
        json.dumps({"status": "approved", "cert": "C", "ca": "A", "nonce": NONCE}).encode(), NONCE
    )
    assert (approval.dispatcher_serial, approval.dispatcher_id) == ("", "")


RESULT_REFUSALS_CASES = [
    (b'{"status":"denied","reason":"rejected by operator"}', "rejected by operator", False),
    (b'{"status":"denied","reason":"approval timeout"}', "approval timeout", True),
    (b'{"status":"denied"}', "denied", False),
    (approved(nonce="0" * 32), "nonce mismatch in pairing result", False),
    (approved(cert=""), "approval without a certificate and CA", False),
    (approved(ca=None), "approval without a certificate and CA", False),
]


def test_result_refusals():
    def check(raw, reason, timed_out):
        with pytest.raises(PairingRejected) as info:
            wire.parse_result(raw, NONCE)
        assert (info.value.reason, info.value.timed_out) == (reason, timed_out)
        assert info.value.exit_code == 3

    each_case(RESULT_REFUSALS_CASES, check)
