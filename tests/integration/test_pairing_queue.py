"""The pairing queue and the operator's decisions, on real files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ctrlexec.config.load import load_dispatcher
from ctrlexec.config.paths import system_layout
from ctrlexec.core import pairing as wire
from ctrlexec.dispatcher import pairing_decide
from ctrlexec.dispatcher.pairing_queue import PairingQueue
from ctrlexec.dispatcher.registry import Registry
from ctrlexec.errors import StateError
from ctrlexec.pki import ca, csr, keys
from ctrlexec.store import atomic_write


@pytest.fixture
def env(tmp_path):
    layout = system_layout(tmp_path)
    settings = load_dispatcher(layout)
    paths = ca.CAPaths(Path(settings.ca_dir))
    ca.create_ca(paths)
    key_pem, issued = ca.issue_key_and_cert(paths, ca.DISPATCHER_COMMON_NAME, "ec")
    atomic_write(settings.key, key_pem, 0o600)
    atomic_write(settings.cert, issued.cert_pem.encode(), 0o644)
    queue = pairing_decide.open_queue(layout.pairing_dir, settings.registry_dir)
    return layout, settings, queue


def queued(queue: PairingQueue, name: str, reqid: str, **fields) -> dict:
    request = wire.PairRequest(
        hostname=name,
        csr=csr.build(keys.generate("ec"), name),
        nonce="ab" * 16,
        lookup_by=fields.get("lookup_by"),
        port=fields.get("port"),
        ip=fields.get("ip"),
    )
    record = wire.queue_record(
        request, reqid, "10.0.0.5", fields.get("received", "2026-01-01T00:00:00Z"), "", False
    )
    assert queue.add(record, 10)
    return record


def test_cap_counts_undecided_requests(env):
    _, _, queue = env
    for index in range(3):
        queued(queue, f"a{index}", f"{index:016x}")
    record = wire.queue_record(
        wire.parse_request(wire.request_body("a9", "-----BEGIN CERTIFICATE REQUEST-----\n", "")),
        "ffff000000000000",
        "10.0.0.5",
        "2026-01-01T00:00:00Z",
        "",
        False,
    )
    assert not queue.add(record, 3)
    pairing_decide.deny(queue, f"{0:016x}")
    assert queue.add(record, 3)
    assert [r["id"] for r in queue.pending()] == [f"{1:016x}", f"{2:016x}", "ffff000000000000"]


def test_stale_requests_expire(env):
    _, _, queue = env
    queued(queue, "old", "00000000000000aa")
    queued(queue, "new", "00000000000000bb")
    ten_minutes_ago = time.time() - 601
    os.utime(queue.path("00000000000000aa", ".json"), (ten_minutes_ago, ten_minutes_ago))
    assert [r["hostname"] for r in queue.pending()] == ["new"]
    assert not queue.path("00000000000000aa", ".json").exists()


def test_approve_writes_the_registry_and_the_approval(env):
    _, settings, queue = env
    queued(queue, "web-01", "1111111111111111", port="17443", lookup_by="ip", ip="10.9.9.9")
    result = pairing_decide.approve(queue, settings, "1111111111111111")
    record = Registry(settings.registry_dir).get("web-01")
    assert record == result.record
    assert (record["port"], record["lookup_by"], record["ip"]) == (17443, "ip", "10.9.9.9")
    assert record["serial_status"] == "current" and record["serial_confirmed"] == record["paired"]
    body = json.loads(queue.decision("1111111111111111"))
    assert body["status"] == "approved" and body["nonce"] == "ab" * 16
    assert body["dispatcher_serial"] == record["dispatcher_serial"]
    assert ca.issued_by(body["cert"], body["ca"])
    assert queue.pending() == []
    with pytest.raises(StateError, match="already been decided"):
        pairing_decide.approve(queue, settings, "1111111111111111")


def test_operator_overrides(env):
    _, settings, queue = env
    queued(queue, "web-02", "2222222222222222", port="17443", lookup_by="ip")
    result = pairing_decide.approve(
        queue, settings, "2222222222222222", lookup_by="hostname", ip="192.0.2.7", agent_port=9443
    )
    assert (result.record["lookup_by"], result.record["ip"], result.record["port"]) == (
        "hostname",
        "192.0.2.7",
        9443,
    )


@pytest.mark.parametrize("applied", [0, 1])
def test_an_interrupted_approval_is_finished_by_the_next_reader(env, applied):
    """A crash after the commit point: the next look at the queue completes it."""
    _, settings, queue = env
    queued(queue, "web-03", "3333333333333333")
    record = {"hostname": "web-03", "ip": "10.0.0.5", "port": 7443}
    approved = wire.approved_body("CERT", "CA", "ab" * 16, "5", "d1")
    atomic_write(
        queue.path("3333333333333333", ".commit"),
        json.dumps({"approved": approved, "record": record}).encode(),
        0o640,
    )
    registry = Registry(settings.registry_dir)
    if applied:  # crashed between the registry write and the approval file
        with registry.lock():
            registry.put(record)
    assert queue.pending() == []
    assert registry.get("web-03") == record
    assert json.loads(queue.decision("3333333333333333")) == approved
    assert not queue.path("3333333333333333", ".commit").exists()


def test_deny_and_withdraw(env):
    _, _, queue = env
    queued(queue, "web-04", "4444444444444444")
    pairing_decide.deny(queue, "4444444444444444")
    assert json.loads(queue.decision("4444444444444444")) == wire.denied_body(wire.REASON_REJECTED)
    assert queue.withdraw("4444444444444444") is not None  # the decision wins over a timeout
    queue.delivered("4444444444444444")
    assert list(queue.directory.glob("4444*")) == []
    queued(queue, "web-05", "5555555555555555")
    assert queue.withdraw("5555555555555555") is None
    assert list(queue.directory.glob("5555*")) == []


@pytest.mark.parametrize(
    "reqid", ["../agents/x", "", "ABCDEF0123456789", "a" * 65, "nosuch0000000000"]
)
def test_unknown_or_hostile_ids(env, reqid):
    _, settings, queue = env
    with pytest.raises(StateError, match="no pending pairing request"):
        pairing_decide.approve(queue, settings, reqid)
    with pytest.raises(StateError):
        pairing_decide.deny(queue, reqid)


def test_a_weak_csr_is_never_signed(env):
    _, settings, queue = env
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = csr.build(rsa.generate_private_key(65537, 1024), "old-box")
    record = wire.queue_record(
        wire.parse_request(wire.request_body("old-box", weak, "")),
        "6666666666666666",
        "10.0.0.5",
        "2026-01-01T00:00:00Z",
        "",
        False,
    )
    assert queue.add(record, 10)
    issued_before = Path(settings.ca_dir, "ca.issued").read_text()
    with pytest.raises(csr.CsrRejected, match="weak key"):
        pairing_decide.approve(queue, settings, "6666666666666666")
    assert Registry(settings.registry_dir).names() == []
    assert Path(settings.ca_dir, "ca.issued").read_text() == issued_before
    assert [r["id"] for r in queue.pending()] == ["6666666666666666"]
