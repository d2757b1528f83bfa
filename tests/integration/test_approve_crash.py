"""`ced approve` killed with SIGKILL at many different moments leaves either
no registration (the request still pending, approvable again) or a complete
one (registry record and approval, agreeing with each other) - never half.

Kill times are bisected between "before anything happened" and "after it
finished", so they gather around the commit, the instant that matters."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from ctrlexec.core import pairing as wire
from tests.support import openssl
from tests.support.pairing import setup_dispatcher

ROUNDS = 10


def queue_request(root: Path, key: Path, index: int) -> str:
    """A request as the listener queues it (protocol.md §4.7)."""
    name = f"node-{index:02d}"
    reqid = f"{index:016x}"
    csr = openssl.csr(key, name)
    record = wire.queue_record(
        wire.parse_request(wire.request_body(name, csr, "ab" * 16, "ip", 17443, "127.0.0.1")),
        reqid,
        "127.0.0.1",
        "2026-01-01T00:00:00Z",
        "",
        False,
    )
    pairing = root / "var/lib/ctrl-exec/pairing"
    pairing.mkdir(parents=True, exist_ok=True)
    (pairing / f"{reqid}.json").write_text(json.dumps(record))
    return reqid


def state_of(ctl, reqid: str, name: str) -> str:
    """'none' or 'complete', after the next reader looked at the queue;
    anything else fails the test."""
    pending = {
        r["reqid"] for r in json.loads(ctl.run("ced", "list-requests", "--json", check=True).stdout)
    }
    agents = {
        r["hostname"]: r
        for r in json.loads(ctl.run("ced", "list-agents", "--json", check=True).stdout)
    }
    pairing = ctl.root / "var/lib/ctrl-exec/pairing"
    approved = pairing / f"{reqid}.approved"
    assert not (pairing / f"{reqid}.commit").exists()
    if name not in agents:
        assert reqid in pending and not approved.exists()
        return "none"
    assert reqid not in pending and approved.exists()
    body = json.loads(approved.read_text())
    cert = pairing / f"{reqid}.crt"
    cert.write_text(body["cert"])
    expiry = openssl.run("x509", "-in", str(cert), "-noout", "-enddate").strip().split("=", 1)[1]
    record = agents[name]
    assert (record["expiry"], record["reqid"], record["port"]) == (expiry, reqid, 17443)
    assert openssl.verify(ctl.root / "etc/ctrl-exec/ca.crt", cert)
    return "complete"


def test_kill_approve_at_any_moment(ctl, tmp_path):
    setup_dispatcher(ctl)
    key = openssl.ec_key(tmp_path / "agent.pem")

    reqid = queue_request(ctl.root, key, 99)
    started = time.monotonic()
    ctl.run("ced", "approve", reqid, check=True)
    duration = time.monotonic() - started
    assert state_of(ctl, reqid, "node-99") == "complete"

    # bisect on the kill time: the boundary between the two outcomes is the
    # commit, so most kills land around the moment that matters
    early, late = 0.2 * duration, 1.2 * duration
    outcomes, half_done, retry = [], 0, None
    for index in range(ROUNDS):
        reqid = queue_request(ctl.root, key, index)
        delay = (early + late) / 2
        proc = ctl.popen("ced", "approve", reqid)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        half_done += (ctl.root / f"var/lib/ctrl-exec/pairing/{reqid}.commit").exists()
        outcome = state_of(ctl, reqid, f"node-{index:02d}")
        outcomes.append((round(delay / duration, 3), outcome))
        if outcome == "none":
            early, retry = delay, (reqid, index)
            if early > 0.9 * late:  # slower than when measured: widen the bracket
                late *= 1.5
        else:
            late = delay
    # (half_done counts kills that left a commit for the next reader to finish)
    assert {"none", "complete"} <= {o for _, o in outcomes}, (outcomes, half_done)
    # nothing half-done blocks a second try
    ctl.run("ced", "approve", retry[0], check=True)
    assert state_of(ctl, retry[0], f"node-{retry[1]:02d}") == "complete"

    # every serial the CA used is recorded once, each on a whole line
    issued = (ctl.root / "etc/ctrl-exec/ca.issued").read_text()
    assert issued.endswith("\n")
    lines = issued.splitlines()
    assert len(lines) == len(set(lines))
    assert all(line and all(c in "0123456789abcdef" for c in line) for line in lines)
