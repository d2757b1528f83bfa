"""Agent certificate renewal end to end: `ced ping` renews an agent past
half-life over the live mTLS channel, the agent presents the new
certificate to new connections without a restart while a running request
finishes, and every failed renewal leaves the old certificate serving.

"Time" is the agent certificate's own dates: it is issued with 30 days
left, which is under half of the default 365-day renewal lifetime.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from cryptography import x509

from ctrlexec.core.x509 import facts_from_pem
from ctrlexec.dispatcher.registry import Registry
from tests.support import testpki
from tests.support.agentproc import BLOCK, DispatcherClient, wait_for
from tests.support.fleet import running_fleet


def presented_serial(client: DispatcherClient, port: int) -> int:
    """Serial of the certificate the agent presents on a new connection."""
    with client.connect(port) as conn:
        der = conn.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def renewal(tmp_path, session_ca, pyz_for):
    with running_fleet(
        session_ca,
        pyz_for,
        tmp_path,
        ("agent-01",),
        {"block": BLOCK},
        settings={"script_dirs": []},
        ca_key=True,
        agent_days=30,
    ) as fleet:
        agent = fleet.agent("agent-01")
        site = agent.site
        old = facts_from_pem(site.layout.agent_cert.read_text())
        yield {
            "site": site,
            "agent": agent,
            "ced": fleet.dispatcher,
            "droot": fleet.dispatcher.root,
            "old": old,
            "client": fleet.client(),
            "tmp": tmp_path,
        }


def test_ping_renews_and_agent_swaps_without_restart(renewal):
    site, agent, ced, client = renewal["site"], renewal["agent"], renewal["ced"], renewal["client"]
    old = renewal["old"]
    assert presented_serial(client, site.port) == old.serial
    gate = renewal["tmp"] / "gate"
    gate.mkdir()
    running: dict = {}
    # A request in flight across the renewal: it must finish normally.
    worker = threading.Thread(
        target=lambda: running.update(client.run(site.port, "block", [str(gate)]))
    )
    worker.start()
    wait_for(lambda: (gate / "started").exists(), what="the blocking script to start")

    result = ced.run("ced", "ping", "--json", site.name, check=True)
    assert json.loads(result.stdout)["results"][0]["status"] == "ok"
    assert "ACTION=renew-complete" in ced.log_text(), ced.log_text()

    staged = Path(site.layout.cert_staging)
    assert staged.exists()
    new = facts_from_pem(staged.read_text())
    assert new.serial != old.serial and new.subject_cn == old.subject_cn
    assert new.not_after - old.not_after > 300 * 86400
    # New connections get the new certificate; the agent was not restarted.
    assert presented_serial(client, site.port) == new.serial
    assert agent.alive()
    reply = client.request(site.port, "POST", "/ping", {"reqid": "after"}).json()
    assert reply["staged"] is True
    assert reply["expiry"] == facts_expiry(new)

    (gate / "go").touch()
    worker.join(30)
    assert running["exit"] == 0 and running["stdout"] == "released\n"

    registry = Registry(testpki.layout_for(renewal["droot"]).registry_dir).get(site.name)
    assert registry["cert_serial"] == format(new.serial, "x")
    assert registry["expiry"] == facts_expiry(new)
    assert len(registry["cert_fingerprint"]) == 95

    # staged: no second renewal
    ced.run("ced", "ping", site.name, check=True)
    assert ced.log_text().count("ACTION=renew-complete") == 1

    # promote-cert installs it; a restart keeps the new identity
    ctl = agent.ctl
    assert ctl.run("agent", "cert-staged").returncode == 0
    done = ctl.run("agent", "promote-cert", "--json", check=True)
    assert json.loads(done.stdout)["status"] == "installed"
    assert facts_from_pem(site.layout.agent_cert.read_text()).serial == new.serial
    assert not staged.exists()
    assert ctl.run("agent", "cert-staged").returncode == 1
    again = ctl.run("agent", "promote-cert")
    assert again.returncode == 0 and "nothing to promote" in again.stdout
    assert presented_serial(client, site.port) == new.serial
    agent.stop()
    agent.start()
    assert presented_serial(client, site.port) == new.serial


def facts_expiry(facts) -> str:
    from ctrlexec.core.timefmt import openssl_notafter

    return openssl_notafter(facts.not_after)


def _sign_for_agent(session_ca, csr_pem: str, cn: str | None = None, days: int = 365):
    """A certificate for the key in `csr_pem`, signed by `session_ca`."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    csr = x509.load_pem_x509_csr(csr_pem.encode())
    subject = csr.subject
    if cn is not None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5) if days > 0 else now - dt.timedelta(days=10)
    end = now + dt.timedelta(days=days) if days > 0 else now - dt.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(session_ca.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(session_ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_every_failed_renewal_leaves_the_old_certificate(renewal, session_ca):
    from tests.support.testpki import SessionCA

    site, client = renewal["site"], renewal["client"]
    old = renewal["old"]
    reply = client.request(site.port, "POST", "/renew", {"reqid": "r1"}).json()
    assert reply["status"] == "ok" and reply["reqid"] == "r1"
    csr_pem = reply["csr"]
    assert x509.load_pem_x509_csr(csr_pem.encode()).subject.rfc4514_string() == "CN=agent-01"

    other_ca = SessionCA("some other CA")
    stranger = session_ca.issue("agent-01")
    cases = {
        "cert required": {"reqid": "x"},
        "does not verify against the agent CA": {"cert": _sign_for_agent(other_ca, csr_pem)},
        "public key does not match the agent key": {"cert": stranger.cert_pem.decode()},
        "is not this agent's CN": {"cert": _sign_for_agent(session_ca, csr_pem, cn="web-99")},
        "not valid now": {"cert": _sign_for_agent(session_ca, csr_pem, days=0)},
        "not a PEM certificate": {"cert": "-----BEGIN CERTIFICATE-----\nAAAA\n"},
    }
    for expected, body in cases.items():
        answer = client.request(site.port, "POST", "/renew-complete", body)
        assert answer.status == 200
        assert answer.json()["status"] == "error" and expected in answer.json()["error"], (
            expected,
            answer.json(),
        )
        assert not Path(site.layout.cert_staging).exists()
        assert presented_serial(client, site.port) == old.serial
        assert client.request(site.port, "POST", "/ping", {}).json()["staged"] is False

    # The dispatcher refuses to sign for another CN than the registered one.
    registry = Registry(testpki.layout_for(renewal["droot"]).registry_dir)
    registry.update(site.name, lambda record: record.__setitem__("cert_cn", "someone-else"))
    renewal["ced"].run("ced", "ping", site.name, check=True)
    assert "signing refused" in renewal["ced"].log_text()
    assert presented_serial(client, site.port) == old.serial
    assert not Path(site.layout.cert_staging).exists()


def test_untrusted_client_reaches_renew_but_not_the_gated_routes(renewal, session_ca, tmp_path):
    site = renewal["site"]
    stranger = session_ca.issue("not-a-dispatcher")
    cert, key = tmp_path / "s.crt", tmp_path / "s.key"
    cert.write_bytes(stranger.cert_pem)
    key.write_bytes(stranger.key_pem)
    client = DispatcherClient(cert, key, site.layout.agent_ca)
    assert client.request(site.port, "POST", "/ping", {}).status == 403
    assert client.request(site.port, "POST", "/rotate-serial", {"serial": "ab"}).status == 403
    reply = client.request(site.port, "POST", "/renew", {"reqid": "u"})
    assert reply.status == 200 and reply.json()["status"] == "ok"


def test_maintain_renews(renewal):
    ced, site = renewal["ced"], renewal["site"]
    done = ced.run("ced", "maintain", "--json")
    summary = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary["renewed"] == ["agent-01"] and summary["pinged"] == 1
    assert summary["errors"] == {} and summary["rotated"] is None
    assert Path(site.layout.cert_staging).exists()
    again = json.loads(ced.run("ced", "maintain", "--json").stdout)
    assert again["renewed"] == [] and again["pinged"] == 1  # staged: not again


def test_the_serve_loop_renews(renewal):
    from tests.support.apiproc import ApiProcess

    ced, site = renewal["ced"], renewal["site"]
    server = ApiProcess(ced, cert_check_interval=3600).start()
    try:
        wait_for(
            lambda: "ACTION=renew-complete" in ced.log_text(),
            seconds=60,
            what="the maintenance loop of dispatcher serve to renew the agent",
        )
        wait_for(lambda: "ACTION=maintain AGENTS=1 PINGED=1" in ced.log_text(), seconds=30)
    finally:
        server.stop()
    assert Path(site.layout.cert_staging).exists()
