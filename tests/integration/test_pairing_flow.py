"""Pairing end to end through the pyz, unprivileged, with --root: a
dispatcher host and an agent host (two roots), as an orchestrator drives it:
pairing mode in the background, request-pairing --background, list-requests,
approve. Expected values come from openssl and bc, not from our code."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from tests.support import openssl
from tests.support.agentproc import wait_for
from tests.support.pairing import Reaped, agent_env, setup_dispatcher, start_listener

DISPATCHER_ID = "test-dispatcher"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def dispatcher(ctl):
    setup_dispatcher(ctl, f'dispatcher_id = "{DISPATCHER_ID}"\n')
    listener = start_listener(ctl)
    yield ctl, listener
    listener.stop()


def test_pair_an_agent(dispatcher, tmp_path):
    ced, listener = dispatcher
    agent = agent_env(ced, tmp_path / "agent-host")
    background = Reaped(
        agent,
        "agent",
        "request-pairing",
        "--dispatcher",
        "127.0.0.1",
        "--port",
        str(listener.port),
        "--background",
        "--hostname",
        "web-01",
        "--lookup-by",
        "ip",
        "--ca-fingerprint",
        listener.fingerprint,
    )
    result = background.first()
    assert result["rc"] == 0, result["stderr"]
    lines = result["stdout"].splitlines()
    code = re.fullmatch(r"Pairing code: (\d{6})", lines[0]).group(1)
    reqid = lines[-1]
    assert re.fullmatch(r"[0-9a-f]{16}", reqid)

    requests = json.loads(ced.run("ced", "list-requests", "--json", check=True).stdout)
    assert [(r["reqid"], r["code"], r["hostname"], r["ip"]) for r in requests] == [
        (reqid, code, "web-01", "127.0.0.1")
    ]
    table = ced.run("ced", "list-requests", check=True).stdout
    # reverse DNS of the source, with its forward confirmation
    assert re.search(
        rf"^{reqid}\s+web-01\s+127\.0\.0\.1\s+(\S+ \((ok|\?)\)|-)\s+{code}$", table, re.M
    )

    approved = ced.run("ced", "approve", reqid, "--agent-port", "17443", check=True)
    assert f"Approved 'web-01' ({reqid})" in approved.stdout

    assert background.descendants() == [0]  # the detached child stored everything
    etc, state = agent.root / "etc/ctrl-exec-agent", agent.root / "var/lib/ctrl-exec-agent"
    trusted = state / "ctrl-exec-dispatchers"
    assert {p.name: mode(p) for p in etc.iterdir()} == {
        "agent.crt": 0o640,
        "agent.key": 0o640,
        "ca.crt": 0o644,
    }
    assert mode(trusted) == 0o644

    # the agent holds a CA-signed certificate for its own key, and the real CA
    ca_crt = ced.root / "etc/ctrl-exec/ca.crt"
    assert (etc / "ca.crt").read_bytes() == ca_crt.read_bytes()
    assert openssl.verify(ca_crt, etc / "agent.crt")
    assert openssl.run("x509", "-in", str(etc / "agent.crt"), "-noout", "-pubkey") == openssl.run(
        "pkey", "-in", str(etc / "agent.key"), "-pubout"
    )
    assert (
        openssl.run("x509", "-in", str(etc / "agent.crt"), "-noout", "-subject").strip()
        == "subject=CN = web-01"
    )
    # RSA 2048 by default: what a 0.12 dispatcher accepts
    assert "Private-Key: (2048 bit" in openssl.run(
        "pkey", "-in", str(etc / "agent.key"), "-noout", "-text"
    )

    # trusted map: 0.12's header, then the dispatcher's serial in canonical
    # form (openssl's text through bc) and its id
    [serial_key] = openssl.canonical_serial_keys(
        [openssl.serial_text(ced.root / "etc/ctrl-exec/dispatcher.crt")]
    )
    assert trusted.read_text() == (
        "# ctrl-exec trusted dispatchers: <serial> <id>, one per line.\n"
        "# Managed by pairing - do not edit by hand.\n"
        f"{serial_key} {DISPATCHER_ID}\n"
    )

    # registry record
    record = json.loads((ced.root / "var/lib/ctrl-exec/agents/web-01.json").read_text())
    expiry = openssl.run("x509", "-in", str(etc / "agent.crt"), "-noout", "-enddate")
    assert set(record) >= {
        "hostname",
        "ip",
        "port",
        "lookup_by",
        "paired",
        "expiry",
        "tags",
        "dispatcher_serial",
        "serial_status",
        "serial_broadcast",
        "serial_confirmed",
        "reqid",
    }
    assert (record["hostname"], record["ip"], record["port"], record["lookup_by"]) == (
        "web-01",
        "127.0.0.1",
        17443,
        "ip",
    )
    assert record["expiry"] == expiry.strip().split("=", 1)[1]
    assert (record["dispatcher_serial"], record["serial_status"], record["reqid"]) == (
        serial_key,
        "current",
        reqid,
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["paired"])
    assert mode(ced.root / "var/lib/ctrl-exec/agents/web-01.json") == 0o644

    # the queue is empty once the agent has its answer
    wait_for(
        lambda: not list((ced.root / "var/lib/ctrl-exec/pairing").glob("[0-9a-f]*")),
        what="the queue to empty",
    )
    # the status commands need no native library: a fresh cache stays empty
    agent.cache = tmp_path / "fresh-native-cache"
    status = agent.run("agent", "pairing-status")
    assert status.returncode == 0 and status.stdout == (
        f"Paired. Certificate expires: {record['expiry']}\nCertificate subject: CN=web-01\n"
    )
    as_json = json.loads(agent.run("agent", "--json", "pairing-status").stdout)
    assert (as_json["paired"], as_json["subject"]) == (True, "CN=web-01")
    assert agent.run("agent", "paired").returncode == 0
    assert not agent.cache.exists() or not any(agent.cache.iterdir())

    log = ced.log_text()
    assert re.search(
        rf"ACTION=pair-request AGENT=web-01 IP=127\.0\.0\.1 REPORTED_IP=127\.0\.0\.1 "
        rf"REQID={reqid} STATUS=pending",
        log,
    )
    assert f"ACTION=pair-approve AGENT=web-01 REQID={reqid}" in log
    assert (
        f"ACTION=pair-complete DISPATCHER={DISPATCHER_ID} DISPATCHER_HOST=127.0.0.1 "
        "STATUS=approved" in agent.log_text()
    )


def test_a_wrong_pin_stores_nothing(dispatcher, tmp_path):
    ced, listener = dispatcher
    agent = agent_env(ced, tmp_path / "agent-host")
    wrong = ":".join(["00"] * 32)
    proc = agent.popen(
        "agent",
        "request-pairing",
        "--dispatcher",
        "127.0.0.1",
        "--port",
        str(listener.port),
        "--hostname",
        "web-02",
        "--ca-fingerprint",
        wrong,
    )
    code = re.search(r"Pairing code: (\d{6})", proc.stdout.readline()).group(1)
    [request] = wait_for(lambda: json.loads(ced.run("ced", "list-requests", "--json").stdout))
    assert request["code"] == code
    ced.run("ced", "approve", request["reqid"], check=True)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "does not match the pinned" in err
    assert not (agent.root / "etc/ctrl-exec-agent/agent.crt").exists()
    assert not (agent.root / "var/lib/ctrl-exec-agent/ctrl-exec-dispatchers").exists()
    assert agent.run("agent", "paired").returncode == 1
    status = agent.run("agent", "pairing-status")
    assert status.returncode == 1 and status.stdout.startswith(
        "Not paired. Reason: certificate not found"
    )
