"""The operator commands around pairing, through the pyz: setup-ca,
setup-ctrl-exec, pairing-mode start/stop, the pairing rate limit, and the
registry commands (list-agents, edit-agent, unpair)."""

from __future__ import annotations

import json
import re
import stat

from tests.support import openssl, testpki
from tests.support.pairing import CLOSED, exchange, frame, probe, setup_dispatcher, start_listener

INVALID = "invalid request"


def test_setup_ca_refuses_to_overwrite_and_force_keeps_a_backup(ctl):
    first = ctl.run("ced", "setup-ca", "--json", check=True)
    fingerprint = json.loads(first.stdout)["fingerprint"]
    ca_crt = ctl.root / "etc/ctrl-exec/ca.crt"
    assert fingerprint == openssl.fingerprint(ca_crt)
    again = ctl.run("ced", "setup-ca")
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    forced = ctl.run("ced", "setup-ca", "--force", check=True)
    backups = sorted(p.name for p in ca_crt.parent.glob("ca.*.bak-*"))
    assert len(backups) == 2 and "must now be paired again" in forced.stdout
    assert openssl.fingerprint(ca_crt) != fingerprint


def test_setup_ca_force_reissues_the_dispatcher_certificate(ctl):
    setup_dispatcher(ctl)
    cert = ctl.root / "etc/ctrl-exec/dispatcher.crt"
    before = cert.read_text()
    forced = ctl.run("ced", "setup-ca", "--force", "--json", check=True)
    reissued = json.loads(forced.stdout)["dispatcher_reissued"]
    assert reissued and cert.read_text() != before
    assert openssl.verify(ctl.root / "etc/ctrl-exec/ca.crt", cert)
    text = ctl.run("ced", "setup-ca", "--force", check=True).stdout
    assert "was signed by the old CA: reissued by the new one" in text
    assert openssl.verify(ctl.root / "etc/ctrl-exec/ca.crt", cert)


def test_setup_ctrl_exec_asks_when_agents_are_registered(ctl):
    setup_dispatcher(ctl)
    cert = ctl.root / "etc/ctrl-exec/dispatcher.crt"
    key = ctl.root / "etc/ctrl-exec/dispatcher.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert openssl.verify(ctl.root / "etc/ctrl-exec/ca.crt", cert)
    assert "subject=CN = ctrl-exec-dispatcher" in openssl.run(
        "x509", "-in", str(cert), "-noout", "-subject"
    )
    # no registered agents: replaced without a question
    serial = openssl.serial_text(cert)
    ctl.run("ced", "setup-ctrl-exec", check=True, input="")
    assert openssl.serial_text(cert) != serial
    ca = testpki.SessionCA()
    testpki.register_agent(ctl.root, "web-01", 7443, ca.issue("web-01"), ca.issue("d"))
    serial = openssl.serial_text(cert)
    declined = ctl.run("ced", "setup-ctrl-exec", input="n\n", check=True)
    assert "Proceed? [y/N]" in declined.stdout and "Aborted" in declined.stdout
    assert openssl.serial_text(cert) == serial
    ctl.run("ced", "setup-ctrl-exec", input="y\n", check=True)
    assert openssl.serial_text(cert) != serial
    serial = openssl.serial_text(cert)
    ctl.run("ced", "setup-ctrl-exec", "--yes", check=True, input="")
    assert openssl.serial_text(cert) != serial


def test_setup_ctrl_exec_needs_a_ca(ctl):
    result = ctl.run("ced", "setup-ctrl-exec")
    assert result.returncode == 1 and "run 'ced setup-ca' first" in result.stderr


def test_pairing_mode_start_stop(ctl):
    missing = ctl.run("ced", "pairing-mode", "start", "--port", "0")
    assert missing.returncode == 1 and "setup-ctrl-exec" in missing.stderr
    setup_dispatcher(ctl)
    started = ctl.run(
        "ced", "pairing-mode", "start", "--port", "0", "--timeout", "60", "--json", check=True
    )
    info = json.loads(started.stdout)
    assert exchange(info["port"], frame(b"[]")) == INVALID
    again = ctl.run("ced", "pairing-mode", "start", "--port", "0")
    assert again.returncode == 1 and f"already running (PID {info['pid']})" in again.stderr
    bad = ctl.run("ced", "pairing-mode", "--timeout", "601")
    assert bad.returncode == 1 and "between 1 and 600" in bad.stderr
    stopped = ctl.run("ced", "pairing-mode", "stop", check=True)
    assert f"was PID {info['pid']}" in stopped.stdout
    assert exchange_refused(info["port"])
    assert (
        ctl.run("ced", "pairing-mode", "stop", check=True).stdout.strip()
        == "No pairing mode is running."
    )
    log = ctl.log_text()
    assert f"ACTION=pairing-mode-start PID={info['pid']} PORT={info['port']} TIMEOUT=60" in log
    assert f"ACTION=pairing-mode-stop PID={info['pid']}" in log


def exchange_refused(port: int) -> bool:
    try:
        probe(port)
    except ConnectionRefusedError:
        return True
    return False


def test_rate_limit_and_quiet_probes(ctl):
    setup_dispatcher(ctl, 'pairing_rate_limit_volume = "3/60/300"\n')
    listener = start_listener(ctl)
    try:
        probe(listener.port)  # 0.12's pre-flight: tolerated, not logged
        assert [exchange(listener.port, frame(b"[]")) for _ in range(2)] == [INVALID, INVALID]
        # the fourth connection within the window is closed unanswered, and
        # the address stays blocked
        assert [exchange(listener.port, frame(b"[]")) for _ in range(3)] == [CLOSED] * 3
        assert listener.proc.poll() is None
    finally:
        listener.stop()
    log = ctl.log_text()
    assert log.count("ACTION=rate-block PEER=127.0.0.1 REASON=volume") == 1
    assert log.count("ACTION=pair-reject") == 2


def test_registry_commands(ctl):
    ca = testpki.SessionCA()
    dispatcher = ca.issue("ctrl-exec-dispatcher")
    for name, port in (("web-01", 7443), ("db-01", 17443)):
        testpki.register_agent(ctl.root, name, port, ca.issue(name), dispatcher)
    registry = ctl.root / "var/lib/ctrl-exec/agents"
    record = json.loads((registry / "db-01.json").read_text())
    record["tags"] = {"env": "prod", "role": "db"}
    (registry / "db-01.json").write_text(json.dumps(record))

    listed = json.loads(ctl.run("ced", "list-agents", "--json", check=True).stdout)
    assert [r["hostname"] for r in listed] == ["db-01", "web-01"]
    tagged = json.loads(
        ctl.run("ced", "list-agents", "--json", "--tags", "env=prod,role=db", check=True).stdout
    )
    assert [r["hostname"] for r in tagged] == ["db-01"]
    assert (
        json.loads(ctl.run("ced", "list-agents", "--json", "--tags", "env=dev", check=True).stdout)
        == []
    )
    bad = ctl.run("ced", "list-agents", "--tags", "env")
    assert bad.returncode == 1 and "invalid --tags filter" in bad.stderr
    table = ctl.run("ced", "list-agents", check=True).stdout.splitlines()
    assert table[0].split() == [
        "HOSTNAME",
        "IP",
        "PORT",
        "LOOKUP",
        "PAIRED",
        "CERT",
        "EXPIRY",
        "DAYS",
        "LEFT",
    ]
    assert table[1] == "-" * 112
    assert re.match(
        r"db-01\s+127\.0\.0\.1\s+17443\s+ip\s+\S+\s+\w{3} [ \d]\d [\d:]{8} \d{4} GMT"
        r"\s+82[45]$",
        table[2],
    )

    edited = json.loads(
        ctl.run(
            "ced",
            "edit-agent",
            "web-01",
            "--rename",
            "web-02",
            "--ip",
            "10.0.0.2",
            "--agent-port",
            "9443",
            "--lookup-by",
            "hostname",
            "--json",
            check=True,
        ).stdout
    )
    assert (edited["hostname"], edited["ip"], edited["port"], edited["lookup_by"]) == (
        "web-02",
        "10.0.0.2",
        9443,
        "hostname",
    )
    assert sorted(p.name for p in registry.glob("*.json")) == ["db-01.json", "web-02.json"]
    for args, message in (
        (("web-02",), "nothing to change"),
        (("web-02", "--agent-port", "70000"), "--agent-port"),
        (("web-02", "--ip", "not-an-ip"), "--ip"),
        (("web-02", "--rename", "../x"), "not a valid agent name"),
        (("web-02", "--rename", "db-01"), "already registered"),
        (("nosuch", "--ip", "10.0.0.1"), "unknown agent"),
    ):
        result = ctl.run("ced", "edit-agent", *args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)

    unpaired = ctl.run("ced", "unpair", "db-01", check=True)
    assert unpaired.stdout.splitlines()[:2] == [
        "Unregistered 'db-01'.",
        f"WARNING: Agent certificate remains valid until: {record['expiry']}",
    ]
    assert "revocation" in unpaired.stdout
    assert ctl.run("ced", "unpair", "db-01").returncode == 1
    log = ctl.log_text()
    assert (
        "ACTION=edit-agent AGENT=web-02 IP=10.0.0.2 LOOKUP_BY=hostname PORT=9443 "
        "RENAMED_FROM=web-01" in log
    )
    assert f'ACTION=unpair AGENT=db-01 EXPIRY="{record["expiry"]}"' in log
