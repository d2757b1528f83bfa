"""A paired agent turned hostile holds a certificate from the CA, and
`/renew-complete` needs no trusted identity (0.12: a dispatcher whose
rotated certificate is not trusted yet must reach it). Renewal keeps the
agent's key, so each certificate the victim ever had is for its key, from
its CA, with its CN. Sent back after a renewal, the superseded one would be
presented from then on, and the dispatcher, which now knows only the new
serial, would refuse the victim: it is off the fleet. The agent refuses any
certificate older than the one in use."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509

from ctrlexec.core.x509 import facts_from_pem
from tests.support.agentproc import DispatcherClient
from tests.support.fleet import running_fleet


def presented_serial(client: DispatcherClient, port: int) -> int:
    with client.connect(port) as conn:
        der = conn.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def superseded(session_ca, cert_pem: str) -> str:
    """A certificate the agent had before this one: its key, its CN, from
    its CA, issued two days ago and valid still."""
    from cryptography.hazmat.primitives import hashes, serialization

    current = x509.load_pem_x509_certificate(cert_pem.encode())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(session_ca.cert.subject)
        .public_key(current.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + dt.timedelta(days=20))
        .sign(session_ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def renewed(tmp_path, session_ca, pyz_for):
    with running_fleet(
        session_ca,
        pyz_for,
        tmp_path,
        ("agent-01",),
        {},
        settings={"script_dirs": []},
        ca_key=True,
        agent_days=30,  # under half of the renewal lifetime: the next ping renews
    ) as fleet:
        site = fleet.agent("agent-01").site
        old_pem = superseded(session_ca, site.layout.agent_cert.read_text())
        ced = fleet.dispatcher
        ced.run("ced", "ping", site.name, check=True)
        assert "ACTION=renew-complete" in ced.log_text()
        hostile = session_ca.issue("agent-99")  # another agent's certificate
        cert, key = tmp_path / "h.crt", tmp_path / "h.key"
        cert.write_bytes(hostile.cert_pem)
        key.write_bytes(hostile.key_pem)
        yield {
            "fleet": fleet,
            "site": site,
            "ced": ced,
            "old_pem": old_pem,
            "hostile": DispatcherClient(cert, key, site.layout.agent_ca),
            "client": fleet.client(),
        }


def _replay(renewed) -> dict:
    site = renewed["site"]
    body = {"cert": renewed["old_pem"], "reqid": "r"}
    reply = renewed["hostile"].request(site.port, "POST", "/renew-complete", body)
    assert reply.status == 200
    return reply.json()


def test_a_superseded_certificate_is_not_staged_again(renewed):
    site, client, ced = renewed["site"], renewed["client"], renewed["ced"]
    new = facts_from_pem(site.layout.cert_staging.read_text())
    assert presented_serial(client, site.port) == new.serial
    answer = _replay(renewed)
    assert answer["status"] == "error"
    assert answer["error"] == "renewed cert is older than the certificate in use"
    assert presented_serial(client, site.port) == new.serial
    ping = ced.run("ced", "--json", "ping", site.name)
    assert ping.returncode == 0, ping.stdout
    assert json.loads(ping.stdout)["results"][0]["status"] == "ok"


def test_nor_after_the_renewed_one_was_installed(renewed):
    site, client = renewed["site"], renewed["client"]
    agent = renewed["fleet"].agent("agent-01")
    installed = agent.ctl.run("agent", "promote-cert", "--json", check=True)
    assert json.loads(installed.stdout)["status"] == "installed"
    new = facts_from_pem(site.layout.agent_cert.read_text())
    assert _replay(renewed)["status"] == "error"
    assert not site.layout.cert_staging.exists()
    assert presented_serial(client, site.port) == new.serial
