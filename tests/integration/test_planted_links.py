"""Links planted in the state directories are refused, never followed
(store.open_state; docs/paths.md): a link to a key or to a file of the
attacker's choosing, and a dangling one, in each directory a service reads
from. The pairing test watches every byte the waiting client receives."""

from __future__ import annotations

import json
import secrets
import ssl
import time
from pathlib import Path

import pytest

from tests.support import agentproc, openssl, testpki
from tests.support.agentproc import wait_for
from tests.support.fleet import running_fleet
from tests.support.pairing import RawPairing, pair_body, setup_dispatcher, start_listener

REFUSED = "is a symbolic link: refused"


def _key_lines(pem: bytes) -> list[bytes]:
    """The base64 lines of a PEM key: none of them may leave the host."""
    return [line for line in pem.splitlines() if line and not line.startswith(b"-----")]


def _everything(tls: ssl.SSLSocket, seconds: float) -> bytes:
    """What the peer sends until it closes (or `seconds` pass)."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tls.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = tls.recv(65536)
        except TimeoutError:
            break
        except (ssl.SSLError, OSError):
            break
        if not data:
            break
        received += data
    return received


@pytest.mark.parametrize("target", ["ca-key", "dangling"])
def test_the_pairing_listener_never_sends_a_linked_file(ctl, tmp_path, target):
    setup_dispatcher(ctl)
    layout = testpki.layout_for(ctl.root)
    ca_key = layout.ca_key.read_bytes()
    listener = start_listener(ctl)
    try:
        client = RawPairing(listener.port)
        csr = openssl.csr(openssl.ec_key(tmp_path / "k.pem"), "victim")
        client.send(pair_body("victim", csr))
        reqid = client.response()["reqid"]
        link = layout.pairing_dir / f"{reqid}.approved"
        link.symlink_to(layout.ca_key if target == "ca-key" else tmp_path / "nowhere")
        received = client.buffer + _everything(client.tls, 15)
        client.close()
    finally:
        listener.stop()
    assert b"PRIVATE KEY" not in received
    assert not [line for line in _key_lines(ca_key) if line in received]
    log = ctl.log_text()
    assert "ACTION=pair-reject" in log and "REASON=state" in log and REFUSED in log, log


@pytest.fixture
def dispatcher_and_agent(session_ca, pyz_for, tmp_path):
    with running_fleet(session_ca, pyz_for, tmp_path, ("linked",)) as fleet:
        yield fleet.dispatcher, fleet.agents["linked"]


def _secret_record(path: Path, **fields) -> str:
    """A JSON file outside the state directories that a reader following
    links would take for a record; its marker must never be shown."""
    marker = "secret-" + secrets.token_hex(8)
    path.write_text(json.dumps({"secret": marker, **fields}))
    return marker


@pytest.mark.parametrize("target", ["elsewhere", "dangling"])
def test_a_linked_lock_file_is_refused_and_nothing_is_created(
    dispatcher_and_agent, tmp_path, target
):
    dispatcher, _ = dispatcher_and_agent
    locks = testpki.layout_for(dispatcher.root).locks_dir
    locks.mkdir(parents=True, exist_ok=True)
    aim = tmp_path / "created-through-the-link"
    if target == "elsewhere":
        _secret_record(aim)
    (locks / "linked--echo-args.lock").symlink_to(aim)
    result = dispatcher.run("ced", "run", "linked", "echo-args", "--", "x")
    assert result.returncode != 0
    assert REFUSED in result.stdout + result.stderr, (result.stdout, result.stderr)
    assert aim.exists() == (target == "elsewhere")
    # the other scripts of that agent are not affected
    assert dispatcher.run("ced", "run", "linked", "fail", "--", "0").returncode == 0


def test_a_linked_registry_record_or_run_record_is_refused(dispatcher_and_agent, tmp_path):
    dispatcher, _ = dispatcher_and_agent
    layout = testpki.layout_for(dispatcher.root)
    marker = _secret_record(
        tmp_path / "record.json", hostname="evil", ip="127.0.0.1", port=1, lookup_by="ip"
    )
    (layout.registry_dir / "evil.json").symlink_to(tmp_path / "record.json")
    ping = dispatcher.run("ced", "--json", "ping", "evil")
    assert ping.returncode != 0 and marker not in ping.stdout + ping.stderr
    assert REFUSED in ping.stdout + ping.stderr, (ping.stdout, ping.stderr)

    reqid = secrets.token_hex(8)
    layout.runs_dir.mkdir(parents=True, exist_ok=True)
    (layout.runs_dir / f"{reqid}.json").symlink_to(tmp_path / "record.json")
    status = dispatcher.run("ced", "--json", "status", reqid)
    assert status.returncode != 0 and marker not in status.stdout + status.stderr
    assert REFUSED in status.stdout + status.stderr, (status.stdout, status.stderr)


def test_the_agent_never_serves_a_linked_result(dispatcher_and_agent, tmp_path):
    dispatcher, (runner, agent) = dispatcher_and_agent
    reqid = secrets.token_hex(8)
    partition = agent.site.layout.async_runs_dir / "test-dispatcher"
    partition.mkdir(parents=True, exist_ok=True)
    marker = _secret_record(
        tmp_path / "result.json", owner="test-dispatcher", reqid=reqid, status="done"
    )
    (partition / f"{reqid}.json").symlink_to(tmp_path / "result.json")
    client = agentproc.DispatcherClient.for_dispatcher(dispatcher.root)
    response = client.request(agent.site.port, "GET", f"/result/{reqid}")
    assert response.status == 404 and marker.encode() not in response.body
    wait_for(lambda: REFUSED in runner.log_text(), what="the refusal in the agent's log")
    assert "ACTION=async-store-fail" in runner.log_text()


def test_the_agent_never_follows_a_linked_trusted_map(dispatcher_and_agent, session_ca, tmp_path):
    """A link in place of the map, to a map that also trusts an intruder's
    certificate (signed by the same CA): the intruder stays untrusted."""
    _, (runner, agent) = dispatcher_and_agent
    intruder = tmp_path / "intruder"
    issued = testpki.install_dispatcher(session_ca, intruder)
    trusted = agent.site.layout.trusted_dispatchers
    elsewhere = tmp_path / "map-elsewhere"
    elsewhere.write_bytes(trusted.read_bytes() + f"{issued.serial_key} intruder\n".encode())
    trusted.unlink()
    trusted.symlink_to(elsewhere)
    client = agentproc.DispatcherClient.for_dispatcher(intruder)
    response = client.request(agent.site.port, "POST", "/ping", {"reqid": "p1"})
    assert response.status == 403, response.body
    wait_for(lambda: REFUSED in runner.log_text(), what="the refusal in the agent's log")
