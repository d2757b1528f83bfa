"""GET /running and POST /cancel: the wire (core/run_control.py)."""

from __future__ import annotations

import pytest

from ctrlexec.core import agent_wire, run_control
from tests.support.tables import each_case


@pytest.mark.parametrize(
    "method, path, name",
    [
        ("GET", "/running", agent_wire.RUNNING),
        ("POST", "/cancel", agent_wire.CANCEL),
        ("POST", "/running", agent_wire.UNKNOWN),
        ("GET", "/cancel", agent_wire.UNKNOWN),
        ("GET", "/running?x=1", agent_wire.UNKNOWN),
    ],
)
def test_routes_are_gated_additions(method, path, name):
    found = agent_wire.route(method, path)
    assert found.name == name
    assert found.gated is (name != agent_wire.UNKNOWN)


@pytest.mark.parametrize(
    "body, reqid",
    [
        (b'{"reqid":"00aa11bb22cc33dd"}', "00aa11bb22cc33dd"),
        (b'{"reqid":"api-x_1","extra":1}', "api-x_1"),
    ],
)
def test_parse_cancel(body, reqid):
    assert run_control.parse_cancel(body) == reqid


PARSE_CANCEL_REFUSES_CASES = [
    b"",
    b"[]",
    b"not json",
    b'{"reqid":""}',
    b'{"reqid":"a/b"}',
    b'{"reqid":5}',
    b"{}",
]


def test_parse_cancel_refuses():
    def check(body):
        with pytest.raises(run_control.CancelRejected) as refused:
            run_control.parse_cancel(body)
        assert refused.value.body["status"] == "error"

    each_case(PARSE_CANCEL_REFUSES_CASES, check, unpack=False)


def test_running_body_and_its_reading():
    entry = run_control.RunningEntry("r1", "backup", "sync", "2026-11-29T12:00:00Z", 3600.0)
    body = run_control.running_body([entry])
    assert body == {
        "status": "ok",
        "running": [
            {
                "reqid": "r1",
                "script": "backup",
                "mode": "sync",
                "started": "2026-11-29T12:00:00Z",
                "timeout": 3600,
            }
        ],
    }
    raw = agent_wire.json.dumps(body).encode()
    listed = run_control.read_running(200, raw)
    assert run_control.running_reqids(listed) == {"r1"}


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (404, b'{"error":"not found"}', run_control.UNSUPPORTED),
        (200, b'{"status":"ok","running":[]}', []),
        (200, b'{"status":"ok","running":[5,{"reqid":"a"}]}', [{"reqid": "a"}]),
    ],
)
def test_read_running(status, body, expected):
    assert run_control.read_running(status, body) == expected


@pytest.mark.parametrize(
    "status, body",
    [(200, b"garbage"), (403, b'{"error":"serial mismatch"}'), (200, b'{"status":"ok"}')],
)
def test_read_running_errors_are_text(status, body):
    assert isinstance(run_control.read_running(status, body), str)
    assert run_control.read_running(status, body) != run_control.UNSUPPORTED


@pytest.mark.parametrize(
    "status, body, outcome",
    [
        (
            200,
            b'{"status":"ok","reqid":"r","cancelled":[{"script":"s","mode":"sync"}]}',
            "cancelled",
        ),
        (404, b'{"status":"unknown","reqid":"r"}', "not-running"),
        (404, b'{"error":"not found"}', "cannot-cancel"),
        (403, b'{"error":"serial mismatch","status":"forbidden"}', "error"),
    ],
)
def test_read_cancel(status, body, outcome):
    assert run_control.read_cancel(status, body)[0] == outcome
