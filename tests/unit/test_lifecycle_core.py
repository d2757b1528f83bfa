"""core.lifecycle: renewal timing, /rotate-serial validation, rotation.json."""

from __future__ import annotations

import json

import pytest

from ctrlexec.core import lifecycle
from ctrlexec.core.results import PING, HostResult
from ctrlexec.core.timefmt import openssl_notafter, parse_iso_utc
from tests.support.tables import each_case

NOW = 1_800_000_000.0
DAY = 86_400


RENEWAL_DUE_CASES = [
    (200, None, False),  # default 365: renew under 182.5 days
    (183, None, False),
    (182, None, True),
    (30, None, True),
    (-1, None, True),  # already expired: still try
    (40, 90, True),
    (50, 90, False),
]


def test_renewal_due():
    def check(days_left, cert_days, due):
        expiry = openssl_notafter(NOW + days_left * DAY)
        assert lifecycle.renewal_due(expiry, NOW, cert_days) is due

    each_case(RENEWAL_DUE_CASES, check)


@pytest.mark.parametrize("expiry", [None, "", "unknown", 12, "2029-01-01"])
def test_renewal_never_due_without_a_readable_expiry(expiry):
    assert lifecycle.renewal_due(expiry, NOW, None) is False


def test_ping_wants_renewal_skips_staged_and_failed():
    expiry = openssl_notafter(NOW + 10 * DAY)

    def ping(**wire):
        return HostResult(PING, wire)

    assert lifecycle.ping_wants_renewal(ping(status="ok", expiry=expiry), NOW, None)
    assert not lifecycle.ping_wants_renewal(
        ping(status="ok", expiry=expiry, staged=True), NOW, None
    )
    assert not lifecycle.ping_wants_renewal(ping(status="error", expiry=expiry), NOW, None)


PARSE_ROTATE_REFUSALS_IN_012_ORDER_CASES = [
    (b"", "serial required"),
    (b"not json", "serial required"),
    (b"[]", "serial required"),
    (b'{"serial": ""}', "serial required"),
    (b'{"serial": 12}', "serial required"),
    (b'{"serial": "ab", "action": "drop"}', "invalid action 'drop'"),
    (b'{"serial": "ab", "action": 3}', "invalid action '3'"),
    (b'{"serial": "xyz"}', "invalid serial: hexadecimal, at most 40 digits"),
    (b'{"serial": "' + b"1" * 41 + b'"}', "invalid serial: hexadecimal, at most 40 digits"),
]


def test_parse_rotate_refusals_in_012_order():
    def check(body, error):
        with pytest.raises(lifecycle.RotateRejected) as caught:
            lifecycle.parse_rotate(body)
        assert caught.value.body == {"status": "error", "error": error}

    each_case(PARSE_ROTATE_REFUSALS_IN_012_ORDER_CASES, check)


@pytest.mark.parametrize(
    "sent, key, action",
    [
        ('{"serial": "0x0A"}', "a", "add"),
        ('{"serial": "DE:AD:BE:EF", "action": "remove"}', "deadbeef", "remove"),
        ('{"serial": "14", "action": ""}', "14", "add"),  # received K1: no decimal step
        ('{"serial": "serial=00ff", "action": null}', "ff", "add"),
    ],
)
def test_parse_rotate_keys_received_serials_once(sent, key, action):
    request = lifecycle.parse_rotate(sent.encode())
    assert (request.key, request.action) == (key, action)
    assert lifecycle.rotate_ok(request, "d1")["serial"] == json.loads(sent)["serial"]


def test_rotation_state_round_trip_and_retire():
    state = lifecycle.new_rotation("b2", "a1", NOW, 30)
    data = state.to_json()
    assert data["previous_serial"] == "a1" and data["overlap_days"] == 30
    assert parse_iso_utc(data["overlap_expires"]) - NOW == 30 * DAY
    again = lifecycle.RotationState.from_json(json.loads(json.dumps(data)))
    assert again == state
    assert not state.overlap_over(NOW + 29 * DAY) and state.overlap_over(NOW + 30 * DAY)
    retired = state.retired(NOW + 31 * DAY).to_json()
    assert "previous_serial" not in retired and retired["previous_retired"]


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"current_serial": "a", "rotated_at": "yesterday", "overlap_expires": "x"},
        {"current_serial": "a", "rotated_at": "2026-01-01T00:00:00Z"},
        {
            "current_serial": "a",
            "rotated_at": "2026-01-01T00:00:00Z",
            "overlap_expires": "2026-01-31T00:00:00Z",
            "overlap_days": "30",
        },
    ],
)
def test_rotation_state_rejects_malformed(data):
    with pytest.raises(ValueError):
        lifecycle.RotationState.from_json(data)


@pytest.mark.parametrize("left, threshold, due", [(91, 90, False), (90, 90, True), (3, 90, True)])
def test_rotation_due(left, threshold, due):
    assert lifecycle.rotation_due(NOW + left * DAY + 10, NOW, threshold) is due


def test_x509_reader_finds_the_subject_cn(session_ca):
    from ctrlexec.core.x509 import facts_from_pem

    issued = session_ca.issue("web-07.example")
    facts = facts_from_pem(issued.cert_pem.decode())
    assert facts.subject_cn == "web-07.example" and facts.serial == issued.serial
    assert facts_from_pem(session_ca.cert_pem.decode()).subject_cn == "ctrl-exec CA"
