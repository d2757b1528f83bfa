"""core.lifecycle: renewal timing, /rotate-serial validation, rotation.json."""

from __future__ import annotations

import json

import pytest

from ctrlexec.core import lifecycle
from ctrlexec.core.results import PING, HostResult
from ctrlexec.core.timefmt import iso_utc, openssl_notafter, parse_iso_utc
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


# (pending since, in days before NOW or None; this node's rotation, in days
# before NOW or None; overlap days; stale?)
PENDING_EXPIRED_CASES = [
    (40, None, 30, True),  # pending for longer than the overlap: stale, whoever rotated
    (10, None, 30, False),
    (None, None, 30, False),  # no stamp, no rotation of this node: nothing to judge by
    (40, 40, 30, True),  # this node's rotation made it pending, its overlap is over
    (None, 40, 30, True),  # no stamp: this node's overlap decides (0.12)
    (10, 40, 30, False),  # another node's later rotation: its own overlap runs
    (10, 10, 30, False),  # this node's overlap still runs
    (0, 0, 0, True),  # no overlap at all
]


def test_pending_expired():
    def check(since, rotated, overlap, stale):
        record = {"serial_status": "pending"}
        if since is not None:
            record["serial_broadcast"] = iso_utc(NOW - since * DAY)
        state = None
        if rotated is not None:
            state = lifecycle.new_rotation("b2", "b1", NOW - rotated * DAY, overlap)
        assert lifecycle.pending_expired(record, state, NOW, overlap) is stale

    each_case(PENDING_EXPIRED_CASES, check)


def test_an_unreadable_stamp_follows_this_nodes_overlap():
    state = lifecycle.new_rotation("b2", "b1", NOW - 40 * DAY, 30)
    record = {"serial_broadcast": "yesterday"}
    assert lifecycle.pending_expired(record, state, NOW, 30) is True
    assert lifecycle.pending_expired(record, None, NOW, 30) is False
