"""self-check on an agent whose certificate cannot serve: each failing line
says why in words and what to do, not an OpenSSL reason code."""

from __future__ import annotations

import time

import pytest

from ctrlexec.agent import selfcheck
from tests.support.testpki import install_agent, install_dispatcher, layout_for


def _by_name(checks):
    return {check.name: check for check in checks}


def test_an_expired_certificate_says_so_and_how_to_recover(session_ca, tmp_path):
    dispatcher = install_dispatcher(session_ca, tmp_path)
    install_agent(session_ca, tmp_path, "web-01", dispatcher, days=30, backdate_days=40)
    found = _by_name(selfcheck.checks(layout_for(tmp_path), None, None, now=time.time()))
    certificate, chain = found["certificate"], found["certificate chain"]
    assert not certificate.ok and not chain.ok
    assert certificate.detail.startswith("expired on ")
    assert "request-pairing" in certificate.detail and "--replace" in certificate.detail
    assert chain.detail == "certificate has expired", chain.detail


def test_a_certificate_from_another_ca_names_the_mismatch(session_ca, tmp_path):
    from tests.support.testpki import SessionCA

    dispatcher = install_dispatcher(session_ca, tmp_path)
    install_agent(SessionCA("another CA"), tmp_path, "web-01", dispatcher)
    layout = layout_for(tmp_path)
    layout.agent_ca.write_bytes(session_ca.cert_pem)  # trusts one CA, holds another's cert
    chain = _by_name(selfcheck.checks(layout, None, None))["certificate chain"]
    assert not chain.ok
    assert chain.detail == "unable to get local issuer certificate", chain.detail


def test_a_good_certificate_passes(session_ca, tmp_path):
    dispatcher = install_dispatcher(session_ca, tmp_path)
    install_agent(session_ca, tmp_path, "web-01", dispatcher)
    found = _by_name(selfcheck.checks(layout_for(tmp_path), None, None))
    assert found["certificate"].ok and found["certificate chain"].ok


@pytest.mark.parametrize(
    ("mode", "ok"), [(0o600, True), (0o640, True), (0o644, False), (0o660, False)]
)
def test_a_private_key_other_users_can_read_or_change_fails(session_ca, tmp_path, mode, ok):
    dispatcher = install_dispatcher(session_ca, tmp_path)
    install_agent(session_ca, tmp_path, "web-01", dispatcher)
    layout = layout_for(tmp_path)
    layout.agent_key.chmod(mode)
    check = _by_name(selfcheck.checks(layout, None, None))["key permissions"]
    assert check.ok is ok, check
    if not ok:
        assert f"is mode {mode:04o}: other users can read or change" in check.detail
        assert f"chmod 0640 {layout.agent_key}" in check.detail
