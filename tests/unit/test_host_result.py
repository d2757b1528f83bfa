"""Per-host results as one typed value: each operation's failure rule, the
typed reads, and the exact 0.12 JSON produced by to_wire()."""

from __future__ import annotations

import json

import pytest

from ctrlexec.core import results
from ctrlexec.core.results import (
    CAPABILITIES,
    FETCH,
    PING,
    RUN,
    SUBMIT,
    AgentReply,
    Failure,
    HostResult,
)
from tests.support.tables import each_case

FAILED_FOLLOWS_EACH_OPERATIONS_RULE_CASES = [
    (RUN, {"exit": 0}, False),
    (RUN, {"exit": 3}, True),
    (RUN, {"exit": "0"}, True),
    (RUN, {"exit": True}, True),
    (RUN, {"exit": False}, True),
    (RUN, {}, True),
    (PING, {"status": "ok"}, False),
    (PING, {"status": "error"}, True),
    (PING, {"status": ["ok"]}, True),
    (PING, {}, True),
    (CAPABILITIES, {"status": "ok"}, False),
    (CAPABILITIES, {"status": "forbidden"}, True),
    (SUBMIT, {"status": "accepted"}, False),
    (SUBMIT, {"status": "busy"}, True),
    (SUBMIT, {"exit": -1, "error": "x"}, True),
    (FETCH, {"status": "done", "exit": 1}, False),
    (FETCH, {"status": "running"}, False),
    (FETCH, {"status": "unknown"}, False),
    (FETCH, {"status": "error"}, True),
    (FETCH, {}, True),
]


def test_failed_follows_each_operations_rule():
    def check(op, wire, failed):
        assert HostResult(op, wire).failed is failed

    each_case(FAILED_FOLLOWS_EACH_OPERATIONS_RULE_CASES, check)


@pytest.mark.parametrize(
    "wire, error",
    [
        ({}, None),
        ({"error": None}, None),
        ({"error": ""}, None),
        ({"error": "refused"}, "refused"),
        ({"error": 5}, "5"),
    ],
)
def test_error_is_text_or_none(wire, error):
    assert HostResult(RUN, wire).error == error


@pytest.mark.parametrize(
    "wire, host, status, reqid, rtt, stdout",
    [
        ({"host": "vm", "status": "ok", "reqid": "ab", "rtt": "3ms", "stdout": "o"}, "vm", "ok",
         "ab", "3ms", "o"),
        ({"host": 7, "status": 1, "reqid": [], "rtt": None, "stdout": {}}, "", None, None, "",
         None),
        ({}, "", None, None, "", None),
    ],
)  # fmt: skip
def test_typed_properties_accept_only_their_type(wire, host, status, reqid, rtt, stdout):
    result = HostResult(PING, wire)
    assert (result.host, result.status, result.reqid, result.rtt, result.stdout) == (
        host,
        status,
        reqid,
        rtt,
        stdout,
    )


def test_wire_is_read_only_and_to_wire_is_a_copy():
    source = {"host": "vm", "exit": 0}
    result = HostResult(RUN, source)
    source["exit"] = 9  # the caller's dict is not shared
    assert result.exit_code == 0
    with pytest.raises(TypeError):
        result.wire["exit"] = 1  # type: ignore[index]
    copy = result.to_wire()
    copy["exit"] = 5
    assert result.to_wire() == {"host": "vm", "exit": 0}


def test_unknown_operation_is_refused():
    with pytest.raises(ValueError, match="unknown operation"):
        HostResult("rotate", {})


def test_from_wire_tolerates_what_a_run_record_may_hold():
    assert HostResult.from_wire(RUN, ["junk"]).to_wire() == {}
    assert HostResult.from_wire(RUN, {"exit": 0}).exit_code == 0


def test_text_and_has_render_raw_values():
    result = HostResult(PING, {"status": 5, "reported_hostname": None, "expiry": "x"})
    assert result.text("status") == "5" and result.text("version", "?") == "?"
    assert not result.has("reported_hostname") and result.has("expiry")


def ok(body: str, status: int = 200) -> AgentReply:
    return AgentReply(status, "OK", body.encode())


# The exact key order of every §7.7 shape the dispatcher builds itself.
WIRE_KEY_ORDER_IS_0_12S_CASES = [
    (
        lambda: results.run_result("vm", "s", "r", "1ms", None, Failure("tls", "a", 1), 5),
        ["host", "script", "exit", "error", "rtt", "reqid"],
    ),
    (
        lambda: results.run_result(
            "vm",
            "s",
            "r",
            "1ms",
            ok('{"script":"s","exit":0,"stdout":"","stderr":""}'),
            None,
            5,
        ),
        ["script", "exit", "stdout", "stderr", "rtt", "reqid", "host"],
    ),
    (
        lambda: results.ping_result("vm", "1ms", None, Failure("refused", "a", 1), 5),
        ["host", "status", "error", "rtt"],
    ),
    (
        lambda: results.async_submit_result("vm", "s", "r", "1ms", ok("{}", 409), None, 5),
        ["host", "script", "status", "error", "rtt", "reqid"],
    ),
    (
        lambda: results.capabilities_result("vm", "1ms", ok("{}", 403), None, 5),
        ["host", "status", "error", "rtt"],
    ),
    (
        lambda: results.fetch_result("vm", "r", "1ms", ok("{}", 404), None, 5),
        ["host", "status", "reqid", "rtt"],
    ),
    (
        lambda: results.fetch_result("vm", "r", "1ms", ok("{}", 500), None, 5),
        ["host", "status", "error", "reqid", "rtt"],
    ),
]


def test_wire_key_order_is_0_12s():
    def check(build, keys):
        result = build()
        assert list(result.to_wire()) == keys
        assert json.loads(json.dumps(result.to_wire())) == result.to_wire()

    each_case(WIRE_KEY_ORDER_IS_0_12S_CASES, check)


def test_results_of_each_op_carry_their_op():
    failure = Failure("refused", "a", 1)
    assert results.run_result("h", "s", "r", "", None, failure, 5).op == RUN
    assert results.ping_result("h", "", None, failure, 5).op == PING
    assert results.async_submit_result("h", "s", "r", "", None, failure, 5).op == SUBMIT
    assert results.capabilities_result("h", "", None, failure, 5).op == CAPABILITIES
    assert results.fetch_result("h", "r", "", None, failure, 5).op == FETCH
